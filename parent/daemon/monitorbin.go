package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/cloister/cloister/internal/installdir"
)

// MonitorBinaryName is the lean executable that runs monitors (and, for
// the sandbox backend, the sandbox launcher): cmd/cloister-monitor. It
// holds only the daemon's monitor and the backends, so it starts in a
// fraction of the time of the cloister command, which also carries the
// key service, the verifier, the image builder and their dependencies.
const MonitorBinaryName = "cloister-monitor"

// monitorArg is the first argument of every monitor command line, in the
// cloister command and in cloister-monitor alike ([isMonitorOf] relies on it).
const monitorArg = "__monitor"

// FindMonitorBinary returns the monitor executable to use alongside the
// running program: cloister-monitor next to it, else in ../lib/cloister
// relative to it (the Debian package's /usr/bin and /usr/lib/cloister),
// provided it reports the same build (`cloister-monitor --version` is
// "cloister-monitor version " + version; an empty version skips the
// check). It returns "" when there is none, or when it belongs to another
// build, with the reason; the caller then runs monitors with its own
// executable (/proc/self/exe __monitor).
func FindMonitorBinary(ctx context.Context, version string) (path, why string) {
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Sprintf("cannot locate this executable: %v", err)
	}
	var tried []string
	for _, p := range installdir.Candidates(exe, MonitorBinaryName) {
		fi, err := os.Stat(p)
		if err != nil || !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
			tried = append(tried, p)
			continue
		}
		if version == "" {
			return p, ""
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		out, err := exec.CommandContext(cctx, p, "--version").Output()
		cancel()
		if err != nil {
			return "", fmt.Sprintf("%s --version: %v", p, err)
		}
		if got := strings.TrimSpace(string(bytes.TrimPrefix(out, []byte(MonitorBinaryName+" version ")))); got != version {
			return "", fmt.Sprintf("%s is version %q, this daemon is %q", p, got, version)
		}
		return p, ""
	}
	return "", "no " + MonitorBinaryName + " at " + strings.Join(tried, " or ")
}

// MonitorMain is the body of a monitor process, `PROG __monitor DIR` (a
// monitor started for one enclave, its image on descriptor [ImageFD]) or
// `PROG __monitor --spare ROOT` (a spare, which waits for its job on
// standard input, see [AwaitMonitorJob]): args are the arguments after
// "__monitor". It returns when the enclave has ended.
func MonitorMain(ctx context.Context, args []string, newBackend BackendFactory, logger *slog.Logger) error {
	var dir string
	var img *os.File
	if root, ok := SpareArg(args); ok {
		var err error
		if dir, img, err = AwaitMonitorJob(root, os.Stdin); err != nil {
			return err
		}
	} else if len(args) == 1 && !strings.HasPrefix(args[0], "-") {
		dir, img = args[0], os.NewFile(ImageFD, "eif")
	} else {
		return errors.New("monitor: usage: __monitor DIR | __monitor --spare ROOT")
	}
	return RunMonitor(ctx, dir, img, newBackend, logger)
}
