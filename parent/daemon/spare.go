package daemon

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/cloister/cloister/parent/backend"
	"golang.org/x/sys/unix"
)

// A spare monitor is started ahead of time and waits for its job on
// standard input, so that launching an enclave does not pay for starting a
// process (tens of milliseconds for this binary). Standard input is one end
// of a Unix socket pair: the job is one message holding the enclave
// directory and, as SCM_RIGHTS, the sealed image. The daemon keeps one
// spare; it exits by itself when the daemon goes away (end of stream).

// spareArg is the monitor's command-line flag for spare mode.
const spareArg = "--spare"

type spare struct {
	mu   sync.Mutex
	cmd  *exec.Cmd
	sock *os.File // the daemon's end of the spare's standard input
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
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		d.log.Warn("spare monitor", "err", err)
		return
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "spare"), os.NewFile(uintptr(fds[1]), "spare")
	cmd := exec.Command(d.opts.MonitorBinary, monitorArg, spareArg, d.enclavesDir())
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Stdin = theirs
	err = cmd.Start()
	theirs.Close()
	if err != nil {
		ours.Close()
		d.log.Warn("spare monitor", "err", err)
		return
	}
	go func() { _ = cmd.Wait() }()
	d.spare.cmd, d.spare.sock = cmd, ours
	d.opts.Events.MonitorStarted(true)
}

// takeSpare hands dir and the image to the waiting spare monitor and returns
// its process, or nil when there is none (the caller then starts a monitor
// itself). The caller starts the next spare once its launch is over, so the
// two do not compete for the CPU.
func (d *Daemon) takeSpare(dir backend.Dir, img *os.File) *os.Process {
	d.spare.mu.Lock()
	cmd, sock := d.spare.cmd, d.spare.sock
	d.spare.cmd, d.spare.sock = nil, nil
	d.spare.mu.Unlock()
	if cmd == nil {
		return nil
	}
	err := unix.Sendmsg(int(sock.Fd()), []byte(dir.Path()), unix.UnixRights(int(img.Fd())), nil, 0)
	sock.Close()
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
	if d.spare.sock != nil {
		d.spare.sock.Close() // end of stream: the spare exits
	}
	d.spare.cmd, d.spare.sock = nil, nil
}

func (d *Daemon) enclavesDir() string { return filepath.Join(d.cfg.StateDir, "enclaves") }

// AwaitMonitorJob is the first step of a spare monitor (`cloister-monitor
// __monitor --spare ROOT`): it receives its job from in (the socket the daemon gave it
// as standard input), checks that the directory is directly under root,
// makes it the working directory and sends standard output and error to its
// monitor log. It returns the directory and the image; the caller then runs
// RunMonitor.
func AwaitMonitorJob(root string, in *os.File) (string, *os.File, error) {
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := unix.Recvmsg(int(in.Fd()), buf, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		return "", nil, fmt.Errorf("monitor: read the job: %w", err)
	}
	if n == 0 {
		return "", nil, fmt.Errorf("monitor: no enclave assigned (the daemon went away)")
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return "", nil, fmt.Errorf("monitor: the job carries no image")
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return "", nil, fmt.Errorf("monitor: the job must carry exactly one image descriptor")
	}
	img := os.NewFile(uintptr(fds[0]), "eif")
	dir := string(buf[:n])
	fail := func(err error) (string, *os.File, error) { img.Close(); return "", nil, err }
	if filepath.Dir(dir) != filepath.Clean(root) {
		return fail(fmt.Errorf("monitor: %q is not an enclave directory under %s", dir, root))
	}
	if err := os.Chdir(dir); err != nil {
		return fail(fmt.Errorf("monitor: %w", err))
	}
	log, err := os.OpenFile(backend.Dir(dir).MonitorLog(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fail(fmt.Errorf("monitor: open log: %w", err))
	}
	defer log.Close()
	for _, fd := range []int{1, 2} {
		if err := unix.Dup3(int(log.Fd()), fd, 0); err != nil {
			return fail(fmt.Errorf("monitor: redirect output to the log: %w", err))
		}
	}
	return dir, img, nil
}

// SpareArg reports whether args (after "__monitor") ask for spare mode, and
// the enclaves root it was given.
func SpareArg(args []string) (root string, ok bool) {
	if len(args) == 2 && args[0] == spareArg {
		return args[1], true
	}
	return "", false
}
