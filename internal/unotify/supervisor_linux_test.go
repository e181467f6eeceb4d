//go:build linux

package unotify

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/cloister/cloister/internal/hybrid"
	"github.com/cloister/cloister/internal/nsm/nsmdev"
	"github.com/cloister/cloister/internal/seccomp"
)

// The tests run the supervised filter in a child (this test binary,
// re-executed) whose listener comes to the test over a socket pair; the
// test runs the Supervisor. The child runs one scenario of plain system
// calls and prints a JSON map probe → outcome.
const (
	childScenarioEnv = "CLOISTER_UNOTIFY_CHILD"
	childArgEnv      = "CLOISTER_UNOTIFY_ARG"
	testCID          = 17
)

func TestMain(m *testing.M) {
	if os.Getenv(checkHostChildEnv) != "" {
		os.Exit(checkHostChild())
	}
	if sc := os.Getenv(childScenarioEnv); sc != "" {
		os.Exit(child(sc, os.Getenv(childArgEnv)))
	}
	os.Exit(m.Run())
}

// outcome names an error: "ok" or the errno's name.
func outcome(err error) string {
	if err == nil {
		return "ok"
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		if n := unix.ErrnoName(e); n != "" {
			return n
		}
		return fmt.Sprintf("errno%d", int(e))
	}
	return err.Error()
}

func child(scenario, arg string) int {
	runtime.LockOSThread()
	if err := seccomp.SetNoNewPrivs(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	prog, err := seccomp.SupervisedProgram()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	lfd, err := seccomp.InstallListener(prog)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if err := unix.Sendmsg(3, []byte{'L'}, unix.UnixRights(lfd), nil, 0); err != nil {
		fmt.Fprintln(os.Stderr, "send listener:", err)
		return 2
	}
	unix.Close(lfd)
	unix.Close(3)
	f, ok := scenarios[scenario]
	if !ok {
		fmt.Fprintln(os.Stderr, "unknown scenario", scenario)
		return 2
	}
	out := map[string]string{}
	f(out, arg)
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		return 2
	}
	return 0
}

// vsockSocket is socket(AF_VSOCK, SOCK_STREAM|flags, 0).
func vsockSocket(flags int) (int, error) {
	return unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|flags, 0)
}

// rawSockaddr calls a socket syscall with an address of exactly the
// given bytes.
func rawAddrCall(nr uintptr, fd int, b []byte) error {
	var p unsafe.Pointer
	if len(b) > 0 {
		p = unsafe.Pointer(&b[0])
	}
	_, _, e := unix.Syscall(nr, uintptr(fd), uintptr(p), uintptr(len(b)))
	if e != 0 {
		return e
	}
	return nil
}

func vmAddr(cid, port uint32) []byte { return NewSockaddrVM(cid, port).Bytes() }

// inProcNetUnix reports whether the socket fd is listed in /proc/net/unix
// (of the caller's network namespace): an AF_UNIX socket.
func inProcNetUnix(fd int) string {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return outcome(err)
	}
	b, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		return outcome(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 7 && f[6] == strconv.FormatUint(st.Ino, 10) {
			return "yes"
		}
	}
	return "no"
}

func sockname(get func(int) (unix.Sockaddr, error), fd int) string {
	sa, err := get(fd)
	if err != nil {
		return outcome(err)
	}
	switch a := sa.(type) {
	case *unix.SockaddrVM:
		port := strconv.FormatUint(uint64(a.Port), 10)
		if a.Port > 1023 && a.Port != PortAny && a.Port < 5000 || a.Port > 7000 && a.Port != PortAny {
			port = "ephemeral"
		}
		return fmt.Sprintf("vm(%d,%s)", a.CID, port)
	case *unix.SockaddrUnix:
		return "unix(" + a.Name + ")"
	}
	return fmt.Sprintf("%T", sa)
}

var scenarios = map[string]func(out map[string]string, arg string){
	"errors": func(out map[string]string, _ string) {
		fd, err := vsockSocket(unix.SOCK_CLOEXEC)
		if err != nil {
			out["socket"] = outcome(err)
			return
		}
		out["is unix socket"] = inProcNetUnix(fd)
		d, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
		out["SO_DOMAIN"] = strconv.Itoa(d) + outcomeIf(err)
		out["getsockname unbound"] = sockname(unix.Getsockname, fd)
		out["getpeername unbound"] = sockname(unix.Getpeername, fd)
		out["shutdown unconnected"] = outcome(unix.Shutdown(fd, unix.SHUT_RDWR))
		out["listen unbound"] = outcome(unix.Listen(fd, 1))
		_, _, err = unix.Accept(fd)
		out["accept not listening"] = outcome(err)
		out["bind unix family"] = outcome(rawAddrCall(unix.SYS_BIND, fd, []byte{1, 0, '/', 't', 0}))
		out["bind short"] = outcome(rawAddrCall(unix.SYS_BIND, fd, vmAddr(CIDAny, 5000)[:15]))
		bad := vmAddr(CIDAny, 5000)
		bad[12] = 2
		out["bind bad flags"] = outcome(rawAddrCall(unix.SYS_BIND, fd, bad))
		out["bind cid 3"] = outcome(rawAddrCall(unix.SYS_BIND, fd, vmAddr(3, 5000)))
		out["bind too long"] = outcome(rawAddrCall(unix.SYS_BIND, fd, make([]byte, 129)))
		_, _, e := unix.Syscall(unix.SYS_BIND, uintptr(fd), 16, 16)
		out["bind fault"] = outcome(errnoErr(e))
		out["connect nobody"] = outcome(rawAddrCall(unix.SYS_CONNECT, fd, vmAddr(3, 6999)))
		out["getsockname after failed connect"] = sockname(unix.Getsockname, fd)
		out["connect cid 5"] = outcome(rawAddrCall(unix.SYS_CONNECT, fd, vmAddr(5, 5000)))
		out["connect cid 1"] = outcome(rawAddrCall(unix.SYS_CONNECT, fd, vmAddr(1, 5000)))
		out["bind after autobind"] = outcome(rawAddrCall(unix.SYS_BIND, fd, vmAddr(CIDAny, 5001)))
		unix.Close(fd)
		_, err = unix.Socket(unix.AF_VSOCK, unix.SOCK_DGRAM, 0)
		out["socket dgram"] = outcome(err)
		_, err = unix.Socket(unix.AF_VSOCK, unix.SOCK_SEQPACKET, 0)
		out["socket seqpacket"] = outcome(err)
		_, err = unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM, 6)
		out["socket protocol 6"] = outcome(err)
		_, err = unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|0x100, 0)
		out["socket bad flags"] = outcome(err)
		_, err = unix.Socketpair(unix.AF_VSOCK, unix.SOCK_STREAM, 0)
		out["socketpair"] = outcome(err)
		_, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		out["socket inet"] = outcome(err)

		// bind twice; options.
		fd, _ = vsockSocket(0)
		out["bind any"] = outcome(rawAddrCall(unix.SYS_BIND, fd, vmAddr(CIDAny, 5002)))
		out["bind again"] = outcome(rawAddrCall(unix.SYS_BIND, fd, vmAddr(CIDAny, 5003)))
		out["getsockname bound"] = sockname(unix.Getsockname, fd)
		fd2, _ := vsockSocket(0)
		out["bind in use"] = outcome(rawAddrCall(unix.SYS_BIND, fd2, vmAddr(testCID, 5002)))
		out["bind own cid"] = outcome(rawAddrCall(unix.SYS_BIND, fd2, vmAddr(testCID, 5004)))
		out["getsockname own cid"] = sockname(unix.Getsockname, fd2)
		fd3, _ := vsockSocket(0)
		out["bind port any"] = outcome(rawAddrCall(unix.SYS_BIND, fd3, vmAddr(CIDAny, PortAny)))
		out["getsockname port any"] = sockname(unix.Getsockname, fd3)
		v, err := unix.GetsockoptUint64(fd, unix.AF_VSOCK, unix.SO_VM_SOCKETS_BUFFER_SIZE)
		out["buffer size"] = strconv.FormatUint(v, 10) + outcomeIf(err)
		out["set max size"] = outcome(unix.SetsockoptUint64(fd, unix.AF_VSOCK, unix.SO_VM_SOCKETS_BUFFER_MAX_SIZE, 1000))
		v, _ = unix.GetsockoptUint64(fd, unix.AF_VSOCK, unix.SO_VM_SOCKETS_BUFFER_SIZE)
		out["buffer size after max"] = strconv.FormatUint(v, 10)
		out["set size short"] = outcome(unix.SetsockoptInt(fd, unix.AF_VSOCK, unix.SO_VM_SOCKETS_BUFFER_SIZE, 5))
		out["set unknown"] = outcome(unix.SetsockoptUint64(fd, unix.AF_VSOCK, 99, 1))
		tv := unix.Timeval{Sec: 5, Usec: 500}
		out["set connect timeout"] = outcome(unix.SetsockoptTimeval(fd, unix.AF_VSOCK, unix.SO_VM_SOCKETS_CONNECT_TIMEOUT, &tv))
		got, err := unix.GetsockoptTimeval(fd, unix.AF_VSOCK, unix.SO_VM_SOCKETS_CONNECT_TIMEOUT)
		out["connect timeout"] = fmt.Sprintf("%d.%06d", got.Sec, got.Usec) + outcomeIf(err)
		tv = unix.Timeval{Sec: -1}
		out["set connect timeout negative"] = outcome(unix.SetsockoptTimeval(fd, unix.AF_VSOCK, unix.SO_VM_SOCKETS_CONNECT_TIMEOUT, &tv))
		_, err = unix.GetsockoptInt(fd, unix.AF_VSOCK, unix.SO_VM_SOCKETS_BUFFER_SIZE)
		out["get size into int"] = outcome(err)
		// An option of another level on an emulated socket runs as it is.
		_, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
		out["SO_TYPE"] = outcome(err)
		// The descriptor argument is an int: high bits are ignored, by
		// the kernel and by the supervisor.
		sa := []byte{1, 0, 0, 'c', 'l', 'o', 'i', 's', 't', 'e', 'r'}
		_, _, e = unix.Syscall(unix.SYS_CONNECT, uintptr(fd2)|1<<32, uintptr(unsafe.Pointer(&sa[0])), uintptr(len(sa)))
		out["connect high fd bits unix address"] = outcome(errnoErr(e))
		out["connect bad fd"] = outcome(rawAddrCall(unix.SYS_CONNECT, 9999, vmAddr(3, 5000)))
		out["connect not socket"] = outcome(rawAddrCall(unix.SYS_CONNECT, 1, vmAddr(3, 5000)))
		_, _, e = unix.Syscall6(unix.SYS_ACCEPT4, uintptr(fd), 0, 0, 0x4000, 0, 0)
		out["accept4 bad flags"] = outcome(errnoErr(e))
	},
	"plainunix": func(out map[string]string, dir string) {
		// Unix sockets the sandbox makes itself keep working, through
		// the notified calls (continued).
		path := filepath.Join(dir, "plain.sock")
		l, _ := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		out["bind"] = outcome(unix.Bind(l, &unix.SockaddrUnix{Name: path}))
		out["listen"] = outcome(unix.Listen(l, 4))
		c, _ := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		out["connect"] = outcome(unix.Connect(c, &unix.SockaddrUnix{Name: path}))
		a, _, err := unix.Accept(l)
		out["accept"] = outcome(err)
		out["getsockname"] = sockname(unix.Getsockname, l)
		out["getpeername"] = sockname(unix.Getpeername, c)
		d, err := unix.GetsockoptInt(c, unix.SOL_SOCKET, unix.SO_DOMAIN)
		out["SO_DOMAIN"] = strconv.Itoa(d) + outcomeIf(err)
		_, err = unix.GetsockoptUint64(c, unix.AF_VSOCK, unix.SO_VM_SOCKETS_BUFFER_SIZE)
		out["AF_VSOCK option"] = outcome(err)
		out["shutdown"] = outcome(unix.Shutdown(a, unix.SHUT_WR))
		out["ioctl nsm elsewhere"] = outcome(ioctlRaw(c, IoctlNSMRaw))
	},
	"dial": func(out map[string]string, port string) {
		p, _ := strconv.Atoi(port)
		fd, _ := vsockSocket(unix.SOCK_CLOEXEC)
		out["connect"] = outcome(unix.Connect(fd, &unix.SockaddrVM{CID: 3, Port: uint32(p)}))
		out["connect again"] = outcome(unix.Connect(fd, &unix.SockaddrVM{CID: 3, Port: uint32(p)}))
		out["getsockname"] = sockname(unix.Getsockname, fd)
		out["getpeername"] = sockname(unix.Getpeername, fd)
		msg := []byte("hello over emulated vsock")
		_, err := unix.Write(fd, msg)
		out["write"] = outcome(err)
		buf := make([]byte, 64)
		n, err := unix.Read(fd, buf)
		out["echo"] = string(buf[:n]) + outcomeIf(err)
		err = unix.Sendto(fd, []byte("x"), 0, &unix.SockaddrVM{CID: 3, Port: uint32(p)})
		out["sendto with address"] = outcome(err)
		out["shutdown"] = outcome(unix.Shutdown(fd, unix.SHUT_WR))
		out["getpeername after shutdown"] = sockname(unix.Getpeername, fd)
		out["listen connected"] = outcome(unix.Listen(fd, 1))
		// Non-blocking connect completes at once.
		nb, _ := vsockSocket(unix.SOCK_NONBLOCK)
		out["connect nonblocking"] = outcome(unix.Connect(nb, &unix.SockaddrVM{CID: 3, Port: uint32(p)}))
		fl, _ := unix.FcntlInt(uintptr(nb), unix.F_GETFL, 0)
		out["nonblocking kept"] = strconv.FormatBool(fl&unix.O_NONBLOCK != 0)
		// A forked child (here: a dup, as after fork) uses the socket.
		d, _ := unix.Dup(nb)
		out["getpeername dup"] = sockname(unix.Getpeername, d)
	},
	"listen": func(out map[string]string, port string) {
		p, _ := strconv.Atoi(port)
		l, _ := vsockSocket(unix.SOCK_CLOEXEC)
		out["bind"] = outcome(unix.Bind(l, &unix.SockaddrVM{CID: CIDAny, Port: uint32(p)}))
		out["listen"] = outcome(unix.Listen(l, 8))
		out["getsockname"] = sockname(unix.Getsockname, l)
		for i, flags := range []int{0, unix.SOCK_NONBLOCK | unix.SOCK_CLOEXEC} {
			c, sa, err := unix.Accept4(l, flags)
			k := fmt.Sprintf("accept%d", i)
			out[k] = outcome(err)
			if err != nil {
				continue
			}
			if vm, ok := sa.(*unix.SockaddrVM); ok {
				out[k+" from"] = fmt.Sprintf("vm(%d,%d)", vm.CID, vm.Port)
			}
			out[k+" getpeername"] = sockname(unix.Getpeername, c)
			out[k+" getsockname"] = sockname(unix.Getsockname, c)
			fl, _ := unix.FcntlInt(uintptr(c), unix.F_GETFL, 0)
			fd, _ := unix.FcntlInt(uintptr(c), unix.F_GETFD, 0)
			out[k+" flags"] = fmt.Sprintf("nonblock=%t cloexec=%t", fl&unix.O_NONBLOCK != 0, fd&unix.FD_CLOEXEC != 0)
			if flags&unix.SOCK_NONBLOCK != 0 {
				unix.SetNonblock(c, false)
			}
			buf := make([]byte, 64)
			n, err := unix.Read(c, buf)
			out[k+" read"] = string(buf[:n]) + outcomeIf(err)
			_, _ = unix.Write(c, bytes.ToUpper(buf[:n]))
			unix.Close(c)
		}
		// Non-blocking accept with nothing pending.
		unix.SetNonblock(l, true)
		_, _, err := unix.Accept(l)
		out["accept empty nonblocking"] = outcome(err)
	},
	"devices": func(out map[string]string, paths string) {
		vsockDev, other, _ := strings.Cut(paths, ":")
		f, err := unix.Open(vsockDev, unix.O_RDONLY, 0)
		if err != nil {
			out["open"] = outcome(err)
			return
		}
		cid, err := unix.IoctlGetUint32(f, unix.IOCTL_VM_SOCKETS_GET_LOCAL_CID)
		out["cid"] = strconv.FormatUint(uint64(cid), 10) + outcomeIf(err)
		_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(f), IoctlVsockLocalCID, 8)
		out["cid fault"] = outcome(errnoErr(e))
		out["nsm ioctl on vsock device"] = outcome(ioctlRaw(f, IoctlNSMRaw))
		g, _ := unix.Open(other, unix.O_RDONLY, 0)
		_, err = unix.IoctlGetUint32(g, unix.IOCTL_VM_SOCKETS_GET_LOCAL_CID)
		out["cid on another file"] = outcome(err)
	},
	"nsm": func(out map[string]string, dev string) {
		f, err := unix.Open(dev, unix.O_RDWR, 0)
		if err != nil {
			out["open"] = outcome(err)
			return
		}
		// Buffers in a mapping whose pages the scenario protects.
		page := unix.Getpagesize()
		mem, err := unix.Mmap(-1, 0, 4*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			out["mmap"] = outcome(err)
			return
		}
		base := uint64(uintptr(unsafe.Pointer(&mem[0])))
		req, resp, raw := mem[0:page], mem[page:2*page], mem[2*page:3*page]
		copy(req, "ping")
		call := func(cmd uintptr, reqAddr, reqLen, respAddr, respLen uint64) (uint64, error) {
			binary.LittleEndian.PutUint64(raw[0:], reqAddr)
			binary.LittleEndian.PutUint64(raw[8:], reqLen)
			binary.LittleEndian.PutUint64(raw[16:], respAddr)
			binary.LittleEndian.PutUint64(raw[24:], respLen)
			_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(f), cmd, uintptr(base)+uintptr(2*page))
			return binary.LittleEndian.Uint64(raw[24:]), errnoErr(e)
		}
		n, err := call(IoctlNSMRaw, base, 4, base+uint64(page), 100)
		out["raw"] = outcome(err)
		out["response"] = string(resp[:n])
		n, err = call(IoctlNSMRaw, base, 4, base+uint64(page), 3)
		out["truncated"] = fmt.Sprintf("%s %q", outcome(err), resp[:n])
		_, err = call(IoctlNSMRaw, base, 4097, base+uint64(page), 100)
		out["request too long"] = outcome(err)
		_, err = call(unix.TCGETS, base, 4, base+uint64(page), 100)
		out["TCGETS"] = outcome(err)
		_, err = call(0x5451 /* FIOCLEX */, base, 4, base+uint64(page), 100)
		out["FIOCLEX"] = outcome(err)
		_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(f), IoctlNSMRaw, 0)
		out["arg null"] = outcome(errnoErr(e))
		_ = unix.Mprotect(mem[3*page:], unix.PROT_NONE)
		_, err = call(IoctlNSMRaw, base+uint64(3*page), 4, base+uint64(page), 100)
		out["request unreadable"] = outcome(err)
		_, err = call(IoctlNSMRaw, base+uint64(page)-2, 4, base+uint64(page), 100)
		out["request straddles pages"] = outcome(err)
		_ = unix.Mprotect(resp, unix.PROT_READ)
		_, err = call(IoctlNSMRaw, base, 4, base+uint64(page), 100)
		out["response read-only"] = outcome(err)
	},
	"cap": func(out map[string]string, _ string) {
		var fds []int
		var err error
		for range 100 {
			var fd int
			if fd, err = vsockSocket(0); err != nil {
				break
			}
			fds = append(fds, fd)
		}
		out["sockets before refusal"] = strconv.Itoa(len(fds))
		out["refusal"] = outcome(err)
		for _, fd := range fds[:4] {
			unix.Close(fd)
		}
		// The table is swept at most every 100 ms.
		time.Sleep(150 * time.Millisecond)
		n := 0
		for range 10 {
			if _, err := vsockSocket(0); err != nil {
				break
			}
			n++
		}
		out["after closing four"] = strconv.Itoa(n)
	},
	"interrupt": func(out map[string]string, port string) {
		// A blocking accept interrupted by signals (Go's handlers restart
		// calls, so each signal makes a new notification and withdraws
		// the old one) still gets the connection that comes afterwards.
		p, _ := strconv.Atoi(port)
		l, _ := vsockSocket(0)
		_ = unix.Bind(l, &unix.SockaddrVM{CID: CIDAny, Port: uint32(p)})
		_ = unix.Listen(l, 8)
		sigs := make(chan os.Signal, 16)
		signal.Notify(sigs, unix.SIGALRM)
		tid := unix.Gettid()
		go func() {
			for range 5 {
				time.Sleep(150 * time.Millisecond)
				_ = unix.Tgkill(unix.Getpid(), tid, unix.SIGALRM)
			}
		}()
		c, _, err := unix.Accept(l)
		out["accept"] = outcome(err)
		buf := make([]byte, 16)
		n, _ := unix.Read(c, buf)
		out["read"] = string(buf[:n])
		out["signals"] = strconv.Itoa(len(sigs))
	},
}

func outcomeIf(err error) string {
	if err == nil {
		return ""
	}
	return " (" + outcome(err) + ")"
}

func errnoErr(e syscall.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

func ioctlRaw(fd int, cmd uintptr) error {
	var raw [32]byte
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), cmd, uintptr(unsafe.Pointer(&raw[0])))
	return errnoErr(e)
}

// env is one supervised child and its supervisor.
type env struct {
	parentDir, guestDir string
	nsm                 NSMFunc
	sup                 *Supervisor
	out                 map[string]string
	done                chan struct{}
}

type envOpts struct {
	maxSockets             int
	vsockDevice, nsmDevice string
}

// newEnv makes the directories of a supervised child.
func newEnv(t testing.TB) *env {
	return &env{parentDir: t.TempDir(), guestDir: t.TempDir(), done: make(chan struct{})}
}

// start starts scenario in a supervised child and returns once its
// supervisor runs; wait collects the child's outcomes.
func start(t testing.TB, o envOpts, scenario, arg string) *env {
	t.Helper()
	return newEnv(t).start(t, o, scenario, arg)
}

func (e *env) start(t testing.TB, o envOpts, scenario, arg string) *env {
	t.Helper()
	if err := os.Chmod(e.guestDir, 0o1777); err != nil {
		t.Fatal(err)
	}
	gd, err := os.Open(e.guestDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gd.Close() })
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	mine, theirs := os.NewFile(uintptr(pair[0]), "mine"), os.NewFile(uintptr(pair[1]), "theirs")
	defer mine.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childScenarioEnv+"="+scenario, childArgEnv+"="+arg)
	cmd.ExtraFiles = []*os.File{theirs}
	var stdout bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	theirs.Close()
	buf := make([]byte, 1)
	oob := make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := unix.Recvmsg(int(mine.Fd()), buf, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		_ = cmd.Process.Kill()
		t.Fatalf("receive the listener: %v", err)
	}
	msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
	if len(msgs) != 1 {
		_ = cmd.Process.Kill()
		t.Fatal("no listener from the child")
	}
	fds, _ := unix.ParseUnixRights(&msgs[0])
	l, err := NewListener(fds[0])
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{CID: testCID, ParentDir: e.parentDir, GuestDir: gd, MaxSockets: o.maxSockets, NSM: e.nsm}
	for _, d := range []struct {
		path string
		f    **os.File
	}{{o.vsockDevice, &cfg.VsockDevice}, {o.nsmDevice, &cfg.NSMDevice}} {
		if d.path == "" {
			continue
		}
		f, err := os.OpenFile(d.path, unix.O_PATH, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		*d.f = f
	}
	e.sup, err = New(l, cfg)
	if err != nil {
		t.Fatal(err)
	}
	runDone := make(chan error, 1)
	go func() { runDone <- e.sup.Run(context.Background()) }()
	go func() {
		defer close(e.done)
		werr := cmd.Wait()
		if err := <-runDone; err != nil {
			t.Errorf("Run: %v", err)
		}
		l.Close()
		if werr != nil {
			t.Errorf("child: %v", werr)
			return
		}
		if err := json.Unmarshal(stdout.Bytes(), &e.out); err != nil {
			t.Errorf("child output %q: %v", stdout.Bytes(), err)
		}
	}()
	t.Cleanup(func() {
		select {
		case <-e.done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-e.done
		}
	})
	return e
}

func (e *env) wait(t testing.TB) map[string]string {
	t.Helper()
	select {
	case <-e.done:
	case <-time.After(60 * time.Second):
		t.Fatal("the child did not finish within a minute")
	}
	return e.out
}

// parentListener serves an upper-casing echo on the parent's port (as a
// host program would, on D/host/vsock_<port>).
func (e *env) parentListener(t *testing.T, port uint32) {
	t.Helper()
	l, err := hybrid.Listen(filepath.Join(e.parentDir, "vsock"), port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
}

func TestEmulatedErrors(t *testing.T) {
	e := start(t, envOpts{}, "errors", "")
	got := e.wait(t)
	want := map[string]string{
		"is unix socket":                    "yes",
		"SO_DOMAIN":                         "40",
		"getsockname unbound":               "vm(4294967295,4294967295)",
		"getpeername unbound":               "ENOTCONN",
		"shutdown unconnected":              "ENOTCONN",
		"listen unbound":                    "EINVAL",
		"accept not listening":              "EINVAL",
		"bind unix family":                  "EINVAL",
		"bind short":                        "EINVAL",
		"bind bad flags":                    "EINVAL",
		"bind cid 3":                        "EADDRNOTAVAIL",
		"bind too long":                     "EINVAL",
		"bind fault":                        "EFAULT",
		"connect nobody":                    "ECONNRESET",
		"getsockname after failed connect":  "vm(4294967295,ephemeral)",
		"connect cid 5":                     "ECONNRESET",
		"connect cid 1":                     "ECONNRESET",
		"bind after autobind":               "EINVAL",
		"socket dgram":                      "ENODEV",
		"socket seqpacket":                  "ESOCKTNOSUPPORT",
		"socket protocol 6":                 "EPROTONOSUPPORT",
		"socket bad flags":                  "EINVAL",
		"socketpair":                        "ENOTSUP",
		"socket inet":                       "EPERM",
		"bind any":                          "ok",
		"bind again":                        "EINVAL",
		"getsockname bound":                 "vm(4294967295,5002)",
		"bind in use":                       "EADDRINUSE",
		"bind own cid":                      "ok",
		"getsockname own cid":               fmt.Sprintf("vm(%d,5004)", testCID),
		"bind port any":                     "ok",
		"getsockname port any":              "vm(4294967295,ephemeral)",
		"buffer size":                       "262144",
		"set max size":                      "ok",
		"buffer size after max":             "1000",
		"set size short":                    "EINVAL",
		"set unknown":                       "ENOPROTOOPT",
		"set connect timeout":               "ok",
		"connect timeout":                   "5.001000",
		"set connect timeout negative":      "ERANGE",
		"get size into int":                 "EINVAL",
		"SO_TYPE":                           "ok",
		"connect high fd bits unix address": "EINVAL",
		"connect bad fd":                    "EBADF",
		"connect not socket":                "ENOTSOCK",
		"accept4 bad flags":                 "EINVAL",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("outcomes (-want +got):\n%s", diff)
	}
	// Bound listeners have their socket file in the listener directory.
	for _, name := range []string{"vsock_5002", "vsock_5004"} {
		if fi, err := os.Lstat(filepath.Join(e.guestDir, name)); err != nil || fi.Mode().Type() != os.ModeSocket {
			t.Errorf("%s: %v, %v", name, fi, err)
		}
	}
}

func TestPlainUnixSocketsContinue(t *testing.T) {
	dir := t.TempDir()
	e := start(t, envOpts{}, "plainunix", dir)
	got := e.wait(t)
	path := filepath.Join(dir, "plain.sock")
	want := map[string]string{
		"bind": "ok", "listen": "ok", "connect": "ok", "accept": "ok",
		"getsockname": "unix(" + path + ")", "getpeername": "unix(" + path + ")",
		"SO_DOMAIN": "1", "AF_VSOCK option": "ENOTSUP", "shutdown": "ok",
		"ioctl nsm elsewhere": "ENOTTY",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("outcomes (-want +got):\n%s", diff)
	}
	if st := e.sup.Stats(); st.Continued == 0 || st.Sockets != 0 {
		t.Errorf("stats %+v: want continued calls and no emulated socket", st)
	}
}

func TestDialParent(t *testing.T) {
	e := newEnv(t)
	e.parentListener(t, 5000)
	got := e.start(t, envOpts{}, "dial", "5000").wait(t)
	want := map[string]string{
		"connect": "ok", "connect again": "EISCONN",
		"getsockname": "vm(4294967295,ephemeral)", "getpeername": "vm(3,5000)",
		"write": "ok", "echo": "hello over emulated vsock",
		"sendto with address": "EISCONN", "shutdown": "ok",
		"getpeername after shutdown": "ENOTCONN", "listen connected": "EINVAL",
		"connect nonblocking": "ok", "nonblocking kept": "true", "getpeername dup": "vm(3,5000)",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("outcomes (-want +got):\n%s", diff)
	}
}

// TestAcceptFromParent connects to an emulated listener the way the
// monitor does: a relayed connection (marker 'R'), then a handed-off
// socket ('F'), after a connection with a bad marker, which is dropped.
func TestAcceptFromParent(t *testing.T) {
	e := start(t, envOpts{}, "listen", "6000")
	gd, err := os.Open(e.guestDir)
	if err != nil {
		t.Fatal(err)
	}
	defer gd.Close()
	conn := hybrid.UnixConnector{Root: gd}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var c net.Conn
	for {
		c, err = conn.ConnectGuest(ctx, 6000)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("ConnectGuest: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	bad, err := conn.Dial(ctx, 6000)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bad.Write([]byte("X")); err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	if _, err := c.Write([]byte("relayed")); err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(io.LimitReader(c, 7)); err != nil || string(b) != "RELAYED" {
		t.Errorf("relayed echo %q, %v", b, err)
	}
	c.Close()
	// Handoff: a client socket pair; the enclave gets one end.
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	clientF, enclaveF := os.NewFile(uintptr(pair[0]), "client"), os.NewFile(uintptr(pair[1]), "enclave")
	defer clientF.Close()
	nc, err := net.FileConn(enclaveF)
	enclaveF.Close()
	if err != nil {
		t.Fatal(err)
	}
	g, err := conn.Dial(ctx, 6000)
	if err != nil {
		t.Fatal(err)
	}
	if err := hybrid.SendHandoff(g, nc.(*net.UnixConn)); err != nil {
		t.Fatal(err)
	}
	g.Close()
	nc.Close()
	if _, err := clientF.Write([]byte("handoff")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 7)
	if _, err := io.ReadFull(clientF, b); err != nil || string(b) != "HANDOFF" {
		t.Errorf("handed-off echo %q, %v", b, err)
	}
	got := e.wait(t)
	want := map[string]string{
		"bind": "ok", "listen": "ok", "getsockname": "vm(4294967295,6000)",
		"accept0": "ok", "accept0 from": "vm(3,6000)", "accept0 getpeername": "vm(3,6000)",
		"accept0 getsockname": fmt.Sprintf("vm(%d,6000)", testCID), "accept0 flags": "nonblock=false cloexec=false",
		"accept0 read": "relayed",
		"accept1":      "ok", "accept1 from": "vm(3,6000)", "accept1 getpeername": "vm(3,6000)",
		"accept1 getsockname": fmt.Sprintf("vm(%d,6000)", testCID), "accept1 flags": "nonblock=true cloexec=true",
		"accept1 read":             "handoff",
		"accept empty nonblocking": "EAGAIN",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("outcomes (-want +got):\n%s", diff)
	}
}

func TestDevices(t *testing.T) {
	dir := t.TempDir()
	dev, other := filepath.Join(dir, "vsock"), filepath.Join(dir, "other")
	for _, p := range []string{dev, other} {
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	e := start(t, envOpts{vsockDevice: dev}, "devices", dev+":"+other)
	got := e.wait(t)
	want := map[string]string{
		"cid": strconv.Itoa(testCID), "cid fault": "EFAULT",
		"nsm ioctl on vsock device": "ENOTTY", "cid on another file": "ENOTTY",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("outcomes (-want +got):\n%s", diff)
	}
}

// TestNSMDevice runs /dev/nsm ioctls through nsmdev with a fake module
// that answers "resp:" and the request: the caller's memory is read and
// written with the kernel's permissions (EFAULT for a protected page).
func TestNSMDevice(t *testing.T) {
	dir := t.TempDir()
	dev := filepath.Join(dir, "nsm")
	if err := os.WriteFile(dev, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t)
	e.nsm = func(ctx context.Context, mem Memory, cmd uint32, arg uint64) syscall.Errno {
		return nsmdev.Ioctl(ctx, mem, cmd, arg, roundTripFunc(func(_ context.Context, req []byte) ([]byte, error) {
			return append([]byte("resp:"), req...), nil
		}))
	}
	got := e.start(t, envOpts{nsmDevice: dev}, "nsm", dev).wait(t)
	want := map[string]string{
		"raw": "ok", "response": "resp:ping", "truncated": `ok "res"`, "request too long": "EMSGSIZE",
		"TCGETS": "EINVAL", "FIOCLEX": "ok", "arg null": "EFAULT", "request unreadable": "EFAULT",
		"request straddles pages": "ok", "response read-only": "EFAULT",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("outcomes (-want +got):\n%s", diff)
	}
	if st := e.sup.Stats(); st.NSM != 8 {
		t.Errorf("NSM calls = %d, want 8 (every command but FIOCLEX)", st.NSM)
	}
}

type roundTripFunc func(ctx context.Context, req []byte) ([]byte, error)

func (f roundTripFunc) RoundTrip(ctx context.Context, req []byte) ([]byte, error) { return f(ctx, req) }

func TestSocketCap(t *testing.T) {
	e := start(t, envOpts{maxSockets: 12}, "cap", "")
	got := e.wait(t)
	want := map[string]string{"sockets before refusal": "12", "refusal": "ENOBUFS", "after closing four": "4"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("outcomes (-want +got):\n%s", diff)
	}
	if st := e.sup.Stats(); st.Refused < 2 {
		t.Errorf("refused = %d, want at least 2", st.Refused)
	}
}

func TestInterruptedAccept(t *testing.T) {
	e := start(t, envOpts{}, "interrupt", "6001")
	// Wait (bounded) until the five interrupted accepts were noticed.
	for i := 0; i < 600 && e.sup.Stats().Interrupted < 5; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	gd, err := os.Open(e.guestDir)
	if err != nil {
		t.Fatal(err)
	}
	defer gd.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := hybrid.UnixConnector{Root: gd}.ConnectGuest(ctx, 6001)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	got := e.wait(t)
	if diff := cmp.Diff(map[string]string{"accept": "ok", "read": "ping", "signals": "5"}, got); diff != "" {
		t.Errorf("outcomes (-want +got):\n%s", diff)
	}
	if st := e.sup.Stats(); st.Interrupted < 5 {
		t.Errorf("interrupted = %d, want at least 5", st.Interrupted)
	}
	if st := e.sup.Stats(); st.InFlight != 0 || st.Waiting != 0 {
		t.Errorf("after the child: %+v, want nothing in flight", st)
	}
}
