//go:build linux

package seccomp

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

const (
	childEnv           = "CLOISTER_SECCOMP_TEST_CHILD"
	supervisedChildEnv = "CLOISTER_SECCOMP_TEST_SUPERVISED_CHILD"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(childEnv); dir != "" {
		os.Exit(filterChild(dir))
	}
	if os.Getenv(supervisedChildEnv) != "" {
		os.Exit(supervisedChild())
	}
	os.Exit(m.Run())
}

// result names the outcome of one probe: "ok" or the errno's name.
func result(err error) string {
	if err == nil {
		return "ok"
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return unix.ErrnoName(errno)
	}
	return err.Error()
}

func errnoOf(e syscall.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

// filterChild runs in a re-executed test binary: it installs the sandbox
// filter and probes system calls, printing a JSON map probe → outcome.
// Nothing here may connect anywhere: a socket that is (wrongly) created is
// closed at once.
func filterChild(dir string) int {
	runtime.LockOSThread()
	out := map[string]string{}

	// A thread that exists before the filter is installed: TSYNC must
	// cover it too.
	probe := make(chan struct{})
	other := make(chan string)
	go func() {
		runtime.LockOSThread()
		<-probe
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		if err == nil {
			unix.Close(fd)
		}
		other <- result(err)
	}()

	if err := SetNoNewPrivs(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	prog, err := SandboxProgram()
	if err == nil {
		err = Install(prog)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	close(probe)
	out["socket(AF_INET) on another thread"] = <-other

	for name, domain := range map[string]int{
		"AF_INET": unix.AF_INET, "AF_INET6": unix.AF_INET6, "AF_VSOCK": unix.AF_VSOCK,
		"AF_NETLINK": unix.AF_NETLINK, "AF_PACKET": unix.AF_PACKET, "AF_UNIX": unix.AF_UNIX,
	} {
		typ := unix.SOCK_STREAM
		if domain == unix.AF_NETLINK || domain == unix.AF_PACKET {
			typ = unix.SOCK_RAW
		}
		fd, err := unix.Socket(domain, typ|unix.SOCK_CLOEXEC, 0)
		if err == nil {
			unix.Close(fd)
		}
		out["socket("+name+")"] = result(err)
	}

	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err == nil {
		_, err = unix.Write(fds[0], []byte("ping"))
		buf := make([]byte, 4)
		if err == nil {
			var n int
			n, err = unix.Read(fds[1], buf)
			if err == nil && string(buf[:n]) != "ping" {
				err = fmt.Errorf("read %q", buf[:n])
			}
		}
		unix.Close(fds[0])
		unix.Close(fds[1])
	}
	out["socketpair(AF_UNIX)+io"] = result(err)
	_, err = unix.Socketpair(unix.AF_INET, unix.SOCK_STREAM, 0)
	out["socketpair(AF_INET)"] = result(err)

	// Ordinary file I/O.
	f := filepath.Join(dir, "file")
	err = os.WriteFile(f, []byte("data"), 0o600)
	if err == nil {
		var b []byte
		b, err = os.ReadFile(f)
		if err == nil && string(b) != "data" {
			err = fmt.Errorf("read back %q", b)
		}
	}
	out["file io"] = result(err)

	mnt := filepath.Join(dir, "mnt")
	_ = os.Mkdir(mnt, 0o755)
	out["mount"] = result(unix.Mount("tmpfs", mnt, "tmpfs", 0, ""))
	out["umount2"] = result(unix.Unmount(mnt, 0))
	out["unshare(CLONE_NEWUSER)"] = result(unix.Unshare(unix.CLONE_NEWUSER))
	out["unshare(CLONE_NEWNET)"] = result(unix.Unshare(unix.CLONE_NEWNET))
	_, _, e := unix.RawSyscall(unix.SYS_PTRACE, unix.PTRACE_TRACEME, 0, 0)
	out["ptrace(TRACEME)"] = result(errnoOf(e))
	// clone3 with a NULL, zero-size argument: EINVAL from the kernel,
	// ENOSYS from the filter. Never creates a process.
	_, _, e = unix.RawSyscall(unix.SYS_CLONE3, 0, 0, 0)
	out["clone3"] = result(errnoOf(e))
	_, _, e = unix.RawSyscall(unix.SYS_IO_URING_SETUP, 1, 0, 0)
	out["io_uring_setup"] = result(errnoOf(e))
	_, _, e = unix.RawSyscall(unix.SYS_BPF, 5 /* BPF_PROG_LOAD */, 0, 0)
	out["bpf"] = result(errnoOf(e))
	_, _, e = unix.RawSyscall(unix.SYS_PERSONALITY, 0x0040000 /* ADDR_NO_RANDOMIZE */, 0, 0)
	out["personality(ADDR_NO_RANDOMIZE)"] = result(errnoOf(e))
	_, _, e = unix.RawSyscall(unix.SYS_PERSONALITY, 0xffffffff, 0, 0)
	out["personality(query)"] = result(errnoOf(e))
	var c byte = 'x'
	_, _, e = unix.RawSyscall(unix.SYS_IOCTL, 0, unix.TIOCSTI, uintptr(unsafe.Pointer(&c)))
	out["ioctl(TIOCSTI)"] = result(errnoOf(e))
	out["mknod(char)"] = result(unix.Mknod(filepath.Join(dir, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	out["mknod(fifo)"] = result(unix.Mknod(filepath.Join(dir, "fifo"), unix.S_IFIFO|0o666, 0))

	// Starting a process still works, but not in a new namespace.
	env := []string{"PATH=/usr/bin:/bin"}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = env
	out["exec"] = result(cmd.Run())
	cmd = exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWUSER}
	out["exec in CLONE_NEWUSER"] = result(cmd.Run())

	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	for _, line := range strings.Split(string(status), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && (k == "Seccomp" || k == "NoNewPrivs") {
			out[k] = strings.TrimSpace(v)
		}
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		return 2
	}
	return 0
}

// TestInstallSandboxFilter runs the real filter in a child process (no
// root needed: no_new_privs allows unprivileged seccomp) and checks what
// is refused and what still works. When the tests run as root, mount,
// ptrace and unshare would succeed without the filter, so EPERM shows the
// filter at work.
func TestInstallSandboxFilter(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+t.TempDir())
	cmd.Stderr = os.Stderr
	b, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v", err)
	}
	var got map[string]string
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("child output %q: %v", b, err)
	}
	want := map[string]string{
		"socket(AF_INET) on another thread": "EPERM",
		"socket(AF_INET)":                   "EPERM",
		"socket(AF_INET6)":                  "EPERM",
		"socket(AF_VSOCK)":                  "EPERM",
		"socket(AF_NETLINK)":                "EPERM",
		"socket(AF_PACKET)":                 "EPERM",
		"socket(AF_UNIX)":                   "ok",
		"socketpair(AF_UNIX)+io":            "ok",
		"socketpair(AF_INET)":               "EPERM",
		"file io":                           "ok",
		"mount":                             "EPERM",
		"umount2":                           "EPERM",
		"unshare(CLONE_NEWUSER)":            "EPERM",
		"unshare(CLONE_NEWNET)":             "EPERM",
		"ptrace(TRACEME)":                   "EPERM",
		"clone3":                            "ENOSYS",
		"io_uring_setup":                    "ENOSYS",
		"bpf":                               "EPERM",
		"personality(ADDR_NO_RANDOMIZE)":    "EPERM",
		"personality(query)":                "ok",
		"ioctl(TIOCSTI)":                    "EPERM",
		"mknod(char)":                       "EPERM",
		"mknod(fifo)":                       "ok",
		"exec":                              "ok",
		"exec in CLONE_NEWUSER":             "EPERM",
		"Seccomp":                           "2",
		"NoNewPrivs":                        "1",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("outcomes under the sandbox filter (-want +got):\n%s", diff)
	}
}

func TestInstallRejectsEmpty(t *testing.T) {
	if err := Install(nil); !errors.Is(err, ErrInstall) {
		t.Fatalf("Install(nil) = %v, want ErrInstall", err)
	}
}

// supervisedChild installs the supervised filter, closes its listener (no
// supervisor: notified calls must fail, never run) and probes, printing a
// JSON map probe → outcome. Nothing here connects anywhere.
func supervisedChild() int {
	runtime.LockOSThread()
	if err := SetNoNewPrivs(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	prog, err := SupervisedProgram()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	lfd, err := InstallListener(prog)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	out := map[string]string{}
	if fl, err := unix.FcntlInt(uintptr(lfd), unix.F_GETFD, 0); err != nil || fl&unix.FD_CLOEXEC == 0 {
		out["listener close-on-exec"] = "no"
	}
	unix.Close(lfd)
	sock := func(domain, typ int) error {
		fd, err := unix.Socket(domain, typ, 0)
		if err == nil {
			unix.Close(fd)
		}
		return err
	}
	out["socket(AF_VSOCK)"] = result(sock(unix.AF_VSOCK, unix.SOCK_STREAM))
	out["socket(AF_INET)"] = result(sock(unix.AF_INET, unix.SOCK_STREAM))
	out["socket(AF_NETLINK)"] = result(sock(unix.AF_NETLINK, unix.SOCK_RAW))
	out["socket(AF_UNIX)"] = result(sock(unix.AF_UNIX, unix.SOCK_STREAM))
	_, err = unix.Socketpair(unix.AF_VSOCK, unix.SOCK_STREAM, 0)
	out["socketpair(AF_VSOCK)"] = result(err)
	_, err = unix.Socketpair(unix.AF_INET, unix.SOCK_STREAM, 0)
	out["socketpair(AF_INET)"] = result(err)
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	out["connect(unix)"] = result(unix.Connect(fd, &unix.SockaddrUnix{Name: "@cloister-seccomp-test-nobody"}))
	out["listen(unix)"] = result(unix.Listen(fd, 1))
	_, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	out["getsockopt(SO_TYPE)"] = result(err)
	_, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	out["getsockopt(SO_DOMAIN)"] = result(err)
	_, err = unix.GetsockoptUint64(fd, unix.AF_VSOCK, unix.SO_VM_SOCKETS_BUFFER_SIZE)
	out["getsockopt(AF_VSOCK)"] = result(err)
	unix.Close(fd)
	var raw [32]byte
	_, _, e := unix.Syscall(unix.SYS_IOCTL, 0, NSMIoctlRaw, uintptr(unsafe.Pointer(&raw[0])))
	out["ioctl(NSM_IOCTL_RAW)"] = result(errnoOf(e))
	var c byte = 'x'
	_, _, e = unix.RawSyscall(unix.SYS_IOCTL, 0, unix.TIOCSTI, uintptr(unsafe.Pointer(&c)))
	out["ioctl(TIOCSTI)"] = result(errnoOf(e))
	_, err = unix.IoctlGetTermios(0, unix.TCGETS)
	out["ioctl(TCGETS)"] = result(err)
	// An application's own filter with a listener could answer the
	// sandbox's notified calls first.
	allow := []bpf.RawInstruction{{Op: 0x06, K: uint32(ActNotify)}} // ret USER_NOTIF
	_, err = InstallListener(allow)
	var errno syscall.Errno
	if err != nil && !errors.As(err, &errno) {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	out["nested listener"] = result(errnoOf(errno))
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		return 2
	}
	return 0
}

// TestInstallSupervisedFilter runs the supervised filter in a child whose
// listener is closed at once: every notified call must then fail (ENOSYS),
// never run, and the rest behaves as under the sandbox filter.
func TestInstallSupervisedFilter(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), supervisedChildEnv+"=1")
	cmd.Stderr = os.Stderr
	b, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v", err)
	}
	var got map[string]string
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("child output %q: %v", b, err)
	}
	want := map[string]string{
		"socket(AF_VSOCK)":      "ENOSYS",
		"socket(AF_INET)":       "EPERM",
		"socket(AF_NETLINK)":    "EPERM",
		"socket(AF_UNIX)":       "ok",
		"socketpair(AF_VSOCK)":  "ENOTSUP", // EOPNOTSUPP
		"socketpair(AF_INET)":   "EPERM",
		"connect(unix)":         "ENOSYS",
		"listen(unix)":          "ENOSYS",
		"getsockopt(SO_TYPE)":   "ok",
		"getsockopt(SO_DOMAIN)": "ENOSYS",
		"getsockopt(AF_VSOCK)":  "ENOSYS",
		"ioctl(NSM_IOCTL_RAW)":  "ENOSYS",
		"ioctl(TIOCSTI)":        "EPERM",
		"ioctl(TCGETS)":         "ENOSYS",
		"nested listener":       "EPERM",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("outcomes under the supervised filter without a supervisor (-want +got):\n%s", diff)
	}
}
