// Command cloister is the Cloister command-line tool: it builds and inspects
// enclave images, runs the parent daemon and talks to it, verifies
// attestation documents, and serves the key service and the verifier.
//
// Subcommands keep nitro-cli's names, flags and JSON output where nitro-cli
// has an equivalent. Each subcommand lives in its own file in this directory
// and registers itself with [register]; the work is done by the library
// packages, never here.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/cloister/cloister/parent/sandbox"
)

// exitError carries a process exit status through cobra.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// withExit makes err end the process with the given status.
func withExit(code int, err error) error { return &exitError{code: code, err: err} }

var subcommands []func() *cobra.Command

// register adds a subcommand constructor; called from init functions in this package.
func register(f func() *cobra.Command) { subcommands = append(subcommands, f) }

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "cloister",
		Short: "Build, run and attest Nitro-Enclaves-style isolated compute",
		Long: `cloister builds enclave images (EIF) with nitro-cli's exact measurements, runs
them on a Nitro host, in a QEMU microVM or in a process sandbox, verifies
attestation documents, and serves an attestation-gated key service.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	setVersion(root)
	for _, f := range subcommands {
		root.AddCommand(f())
	}
	registerCompletions(root)
	return root
}

func main() {
	// The sandbox launcher re-executes this binary to set up each sandbox
	// from inside its new namespaces; that child never reaches cobra.
	if sandbox.IsChild() {
		sandbox.ChildMain()
	}
	err := newRootCmd().Execute()
	if err == nil {
		return
	}
	fmt.Fprintln(os.Stderr, "cloister:", err)
	var ee *exitError
	if errors.As(err, &ee) {
		os.Exit(ee.code)
	}
	// Usage errors from cobra (unknown flag, missing argument) and
	// everything else not classified.
	os.Exit(2)
}
