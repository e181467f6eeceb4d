//go:build !linux

package seccomp

import (
	"fmt"
	"runtime"

	"golang.org/x/net/bpf"
)

// SetNoNewPrivs is only available on Linux; elsewhere it returns an error
// wrapping [ErrInstall].
func SetNoNewPrivs() error {
	return fmt.Errorf("%w: no_new_privs is Linux-only (GOOS=%s)", ErrInstall, runtime.GOOS)
}

// Install is only available on Linux; elsewhere it returns an error
// wrapping [ErrInstall].
func Install(prog []bpf.RawInstruction) error {
	return fmt.Errorf("%w: seccomp is Linux-only (GOOS=%s)", ErrInstall, runtime.GOOS)
}

// InstallListener is only available on Linux; elsewhere it returns an
// error wrapping [ErrInstall].
func InstallListener(prog []bpf.RawInstruction) (int, error) {
	return -1, fmt.Errorf("%w: seccomp is Linux-only (GOOS=%s)", ErrInstall, runtime.GOOS)
}
