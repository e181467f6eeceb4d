package daemon

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// A spare monitor is started ahead of time and waits for its enclave
// directory on standard input, so that launching an enclave does not pay
// for starting a process (tens of milliseconds for this binary). The daemon
// keeps one spare; it exits by itself when the daemon goes away (its
// standard input reaches EOF).

// spareArg is the monitor's command-line flag for spare mode.
const spareArg = "--spare"

type spare struct {
	mu  sync.Mutex
	cmd *exec.Cmd
	in  io.WriteCloser
}

// spawnSpare starts a spare monitor unless one is waiting.
func (d *Daemon) spawnSpare() {
	d.spare.mu.Lock()
	defer d.spare.mu.Unlock()
	select {
	case <-d.closed:
		return
	default:
	}
	if d.spare.cmd != nil {
		return
	}
	cmd := exec.Command("/proc/self/exe", "__monitor", spareArg, d.enclavesDir())
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	in, err := cmd.StdinPipe()
	if err != nil {
		d.log.Warn("spare monitor", "err", err)
		return
	}
	if err := cmd.Start(); err != nil {
		d.log.Warn("spare monitor", "err", err)
		return
	}
	go func() { _ = cmd.Wait() }()
	d.spare.cmd, d.spare.in = cmd, in
}

// takeSpare hands dir to the waiting spare monitor and returns its process,
// or nil when there is none (the caller then starts a monitor itself). The
// caller starts the next spare once its launch is over, so the two do not
// compete for the CPU.
func (d *Daemon) takeSpare(dir string) *os.Process {
	d.spare.mu.Lock()
	cmd, in := d.spare.cmd, d.spare.in
	d.spare.cmd, d.spare.in = nil, nil
	d.spare.mu.Unlock()
	if cmd == nil {
		return nil
	}
	_, err := io.WriteString(in, dir+"\n")
	in.Close()
	if err != nil || !processAlive(cmd.Process.Pid) {
		_ = cmd.Process.Kill()
		return nil
	}
	return cmd.Process
}

// stopSpare ends the waiting spare monitor.
func (d *Daemon) stopSpare() {
	d.spare.mu.Lock()
	defer d.spare.mu.Unlock()
	if d.spare.in != nil {
		d.spare.in.Close() // EOF: the spare exits
	}
	d.spare.cmd, d.spare.in = nil, nil
}

func (d *Daemon) enclavesDir() string { return filepath.Join(d.cfg.StateDir, "enclaves") }

// AwaitMonitorJob is the first step of a spare monitor (`cloister __monitor
// --spare ROOT`): it reads the enclave directory from in, checks that it is
// a directory directly under root, makes it the working directory and
// sends standard output and error to its monitor log. It returns the
// directory; the caller then runs RunMonitor.
func AwaitMonitorJob(root string, in io.Reader) (string, error) {
	line, err := bufio.NewReader(io.LimitReader(in, 4096)).ReadString('\n')
	if err != nil {
		if errors.Is(err, io.EOF) {
			return "", fmt.Errorf("monitor: no enclave assigned (the daemon went away)")
		}
		return "", fmt.Errorf("monitor: read the enclave directory: %w", err)
	}
	dir := strings.TrimSuffix(line, "\n")
	if filepath.Dir(dir) != filepath.Clean(root) {
		return "", fmt.Errorf("monitor: %q is not an enclave directory under %s", dir, root)
	}
	if err := os.Chdir(dir); err != nil {
		return "", fmt.Errorf("monitor: %w", err)
	}
	log, err := os.OpenFile(filepath.Join(dir, monitorLog), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return "", fmt.Errorf("monitor: open log: %w", err)
	}
	defer log.Close()
	for _, fd := range []int{1, 2} {
		if err := unix.Dup3(int(log.Fd()), fd, 0); err != nil {
			return "", fmt.Errorf("monitor: redirect output to the log: %w", err)
		}
	}
	return dir, nil
}

// SpareArg reports whether args (after "__monitor") ask for spare mode, and
// the enclaves root it was given.
func SpareArg(args []string) (root string, ok bool) {
	if len(args) == 2 && args[0] == spareArg {
		return args[1], true
	}
	return "", false
}
