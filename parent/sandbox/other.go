//go:build !linux

package sandbox

import (
	"context"
	"fmt"
	"os"
	"runtime"
)

const noFollow = 0

// idsPer is the size of a sandbox's id range.
const idsPer = 65536

// Process is a running sandbox; on this platform none can exist.
type Process struct{}

// Start is only available on Linux; elsewhere it returns an error wrapping [ErrUnsupported].
func Start(ctx context.Context, spec Spec) (*Process, error) {
	return nil, fmt.Errorf("%w (GOOS=%s)", ErrUnsupported, runtime.GOOS)
}

// ChildMain is only meaningful on Linux; elsewhere it exits with status 1.
func ChildMain() { os.Exit(1) }

// Pid returns 0.
func (p *Process) Pid() int { return 0 }

// Signal returns an error wrapping [ErrUnsupported].
func (p *Process) Signal(os.Signal) error { return ErrUnsupported }

// Kill returns an error wrapping [ErrUnsupported].
func (p *Process) Kill() error { return ErrUnsupported }

// Wait returns an error wrapping [ErrUnsupported].
func (p *Process) Wait() (ExitStatus, error) { return ExitStatus{}, ErrUnsupported }
