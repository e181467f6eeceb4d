//go:build linux

package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cloister/cloister/internal/cpio"
	"github.com/cloister/cloister/internal/hybrid"
	"github.com/cloister/cloister/internal/testenv"
)

// probeRamdisk returns a ramdisk holding /bin/vsockprobe, built once.
func probeRamdisk(t testing.TB) string {
	t.Helper()
	bin := binaries(t)
	p := filepath.Join(bin, "probe.cpio")
	if _, err := os.Stat(p); err == nil {
		return p
	}
	writeCpio(t, p+".tmp", []cpio.File{dir("rootfs"), dir("rootfs/bin"), diskFile(t, "rootfs/bin/vsockprobe", filepath.Join(bin, "vsockprobe"), 0o755)})
	if err := os.Rename(p+".tmp", p); err != nil {
		t.Fatal(err)
	}
	return p
}

// probe is a running vsockprobe sandbox.
type probe struct {
	p       *Process
	console *testenv.SyncBuffer
	dir     string // the vsock directory D
	id      string
	hostUID int
}

type probeOpts struct {
	memoryMiB, pidsMax int
	cid                uint32
}

// startProbe starts vsockprobe with args in a sandbox; the test's cleanup
// kills it if it still runs and checks that nothing is left on the host.
func startProbe(t *testing.T, o probeOpts, args ...string) *probe {
	t.Helper()
	testenv.RequireRoot(t)
	bootstrap, customer := images(t)
	cmdRamdisk := filepath.Join(t.TempDir(), "cmd.cpio")
	writeCpio(t, cmdRamdisk, []cpio.File{dataFile("cmd", strings.Join(append([]string{"/bin/vsockprobe"}, args...), "\n")+"\n")})
	if o.memoryMiB == 0 {
		o.memoryMiB = 128
	}
	if o.cid == 0 {
		o.cid = 17
	}
	d := vsockDir(t)
	pr := &probe{console: &testenv.SyncBuffer{}, dir: d, id: fmt.Sprintf("probe-%d", runCounter.Add(1))}
	spec := Spec{
		ID: pr.id, CID: o.cid, Ramdisks: []string{bootstrap, customer, probeRamdisk(t), cmdRamdisk},
		MemoryMiB: o.memoryMiB, PidsMax: o.pidsMax, VsockDir: d, Console: pr.console, CgroupParent: testCgroupParent,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p, err := Start(ctx, spec)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	pr.p, pr.hostUID = p, p.HostUID()
	t.Cleanup(func() {
		_ = p.Kill()
		if _, err := p.Wait(); err != nil {
			t.Errorf("Wait: %v", err)
		}
		t.Logf("console:\n%s", pr.console)
		checkNoLeftovers(t, pr.id, pr.hostUID, d)
	})
	return pr
}

// result waits (at most a minute) for "RESULT key=…" on the console and
// returns its value.
func (pr *probe) result(t *testing.T, key string) string {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		for _, line := range strings.Split(pr.console.String(), "\n") {
			if v, ok := strings.CutPrefix(line, "RESULT "+key+"="); ok {
				return v
			}
		}
		select {
		case <-pr.done():
			// One more look: the line may have come with the exit.
			for _, line := range strings.Split(pr.console.String(), "\n") {
				if v, ok := strings.CutPrefix(line, "RESULT "+key+"="); ok {
					return v
				}
			}
			t.Fatalf("the sandbox ended without RESULT %s; console:\n%s", key, pr.console)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no RESULT %s within a minute; console:\n%s", key, pr.console)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// done is closed once the sandbox's init has exited.
func (pr *probe) done() <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		var ws unix.WaitStatus
		// Wait for exit without reaping: Process.Wait reaps.
		for {
			var si unix.Siginfo
			err := unix.Waitid(unix.P_PID, pr.p.Pid(), &si, unix.WEXITED|unix.WNOWAIT, nil)
			if err == nil || !errors.Is(err, unix.EINTR) {
				break
			}
		}
		_ = ws
		close(ch)
	}()
	return ch
}

// hybridServer serves a hybrid CONNECT socket for the sandbox, as the
// monitor does (handoff of the client's socket to the enclave's listener),
// and returns its path.
func (pr *probe) hybridServer(t *testing.T) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "vsock.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := &hybrid.Server{Connector: hybrid.UnixConnector{Root: pr.p.GuestDir()}}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ctx, l) }()
	t.Cleanup(func() { cancel(); <-done })
	return sock
}

// TestSandboxHandoffSocketCannotClaimHostNames is an attack: an enclave
// listener that receives a socket by handoff (the SDK's listeners, and
// emulated AF_VSOCK accept) binds it to an abstract Unix name. The socket
// lives in the host's network namespace, so a bind that succeeded would
// claim the name there (host programs that later bind it get EADDRINUSE;
// a plain socket passed into a user and network namespace can do exactly
// that). The handed-off socket is the monitor's accepted end of the
// client's connection, which carries the CONNECT socket's name, so the
// bind fails with EINVAL; this test keeps it that way.
func TestSandboxHandoffSocketCannotClaimHostNames(t *testing.T) {
	name := fmt.Sprintf("cloister-test-squat-%d", os.Getpid())
	pr := startProbe(t, probeOpts{}, "handoffbind", "5005", name)
	if got := pr.result(t, "listening"); got != "yes" {
		t.Fatalf("listening = %q", got)
	}
	sock := pr.hybridServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := hybrid.Dial(ctx, sock, 5005, nil)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer c.Close()
	bind := pr.result(t, "bind")
	// Whether the name is taken in the host's namespace.
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	herr := unix.Bind(fd, &unix.SockaddrUnix{Name: "@" + name})
	if bind == "ok" || herr != nil {
		t.Errorf("the enclave's bind of the handed-off socket to @%s = %s; the host's own bind = %v: the enclave claimed a name in the host's namespace", name, bind, herr)
	}
	if bind != "EINVAL" {
		t.Errorf("bind = %s, want EINVAL (the socket already has a name)", bind)
	}
}
