// Command cloister-monitor is the lean executable the daemon runs its
// per-enclave monitors with (`cloister-monitor __monitor DIR` and spare
// monitors, `__monitor --spare ROOT`), which for the sandbox backend also
// re-executes itself as the sandbox launcher. It holds only the daemon's
// monitor and the backends: none of the key service, the verifier, the
// image builder, the AWS SDK, Prometheus, protobuf or cobra, so the
// process starts on a launch's path cost a few milliseconds instead of the
// cloister command's start-up.
//
// `cloister daemon` uses it when it is installed next to the cloister
// executable or in ../lib/cloister (the Debian package's
// /usr/lib/cloister) and reports the same build; otherwise it runs
// monitors as `cloister __monitor`. It is not meant to be run by hand.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/cloister/cloister/internal/buildinfo"
	"github.com/cloister/cloister/parent/backends"
	"github.com/cloister/cloister/parent/daemon"
	"github.com/cloister/cloister/parent/sandbox"
)

func main() {
	// The sandbox launcher re-executes this binary to set up each sandbox
	// from inside its new namespaces.
	if sandbox.IsChild() {
		sandbox.ChildMain()
	}
	args := os.Args[1:]
	switch {
	case len(args) == 1 && (args[0] == "--version" || args[0] == "version"):
		fmt.Println(daemon.MonitorBinaryName, "version", buildinfo.String())
		return
	case len(args) >= 1 && args[0] == "__monitor":
	default:
		fmt.Fprintf(os.Stderr, "usage: %s __monitor DIR | __monitor --spare ROOT | --version\n(started by cloister daemon; not meant to be run by hand)\n", daemon.MonitorBinaryName)
		os.Exit(2)
	}
	// Standard error is the enclave's monitor.log: the monitor logs at
	// info, the backends at warn, as JSON (as `cloister __monitor` does).
	logger := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	backendLog := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if err := daemon.MonitorMain(context.Background(), args[1:], backends.Factory(backendLog), logger); err != nil {
		fmt.Fprintln(os.Stderr, "cloister-monitor:", err)
		os.Exit(1)
	}
}
