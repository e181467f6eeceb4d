// Command vsockprobe runs inside sandboxes for the AF_VSOCK, /dev/nsm and
// supervisor tests of parent/sandbox. It uses plain system calls
// (golang.org/x/sys/unix) and nothing of Cloister's, as an unmodified
// Nitro program would. Each invocation performs one probe or attack, chosen
// by its first argument, and prints "RESULT key=value" lines; "RESULT
// done=yes" ends every mode that finishes. It never dials vsock CID 2.
package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func result(key string, v any) { fmt.Printf("RESULT %s=%v\n", key, v) }

// errName is "ok" or the errno's name ("EPERM", …).
func errName(err error) string {
	if err == nil {
		return "ok"
	}
	if e, ok := err.(unix.Errno); ok {
		if n := unix.ErrnoName(e); n != "" {
			return n
		}
		return fmt.Sprintf("errno%d", int(e))
	}
	return err.Error()
}

func atoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vsockprobe: bad number", s)
		os.Exit(2)
	}
	return n
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: vsockprobe MODE [ARGS]")
		os.Exit(2)
	}
	modes := map[string]func(args []string){
		"handoffbind":   handoffBind,
		"basics":        basics,
		"listen":        listen,
		"attack-nested": attackNested,
		"attack-nested-after": func(args []string) {
			// Wait for the test's go-ahead (a file it creates in the
			// parent's directory), then attack.
			result("waiting", "yes")
			for range 3000 {
				var st unix.Stat_t
				if unix.Stat(args[0], &st) == nil {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			attackNested(nil)
		},
		"attack-race":          attackRace,
		"attack-dup2":          attackDup2,
		"attack-fakefd":        attackFakeFD,
		"attack-fork":          attackFork,
		"flood-sockets":        floodSockets,
		"flood-notify":         floodNotify,
		"attack-stuck-connect": attackStuckConnect,
		"attack-ifconf":        attackIfconf,
		"attack-compat":        attackCompat,
		"sweep-accepted":       sweepAccepted,
		"flood-waiting":        floodWaiting,
		"attack-bind-links":    attackBindLinks,
		"bind-signal-storm":    bindSignalStorm,
		"compat-int80-child":   compatInt80Child,
		"bench-connect":        benchConnect,
		"bench-rtt":            benchRoundTrip,
		"bench-nsm":            benchNSM,
		"exit":                 func([]string) {},
	}
	f, ok := modes[os.Args[1]]
	if !ok {
		fmt.Fprintln(os.Stderr, "vsockprobe: unknown mode", os.Args[1])
		os.Exit(2)
	}
	f(os.Args[2:])
	result("done", "yes")
}

// handoffBind listens where the sandbox's hybrid listeners live
// (/run/cloister/vsock/guest/vsock_<port>), accepts one connection the
// way the SDK does (marker 'F' with the host client's socket), and binds
// that socket to the abstract Unix name args[1]. The socket belongs to
// the host client, so a bind that succeeds claims the name in the host's
// network namespace. It then reads from the socket until the host closes
// it.
func handoffBind(args []string) {
	port, name := args[0], args[1]
	l, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		result("listen", errName(err))
		return
	}
	path := "/run/cloister/vsock/guest/vsock_" + port
	if err := unix.Bind(l, &unix.SockaddrUnix{Name: path}); err != nil {
		result("listen", errName(err))
		return
	}
	if err := unix.Listen(l, 8); err != nil {
		result("listen", errName(err))
		return
	}
	result("listening", "yes")
	c, _, err := unix.Accept4(l, unix.SOCK_CLOEXEC)
	if err != nil {
		result("accept", errName(err))
		return
	}
	b := make([]byte, 1)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := unix.Recvmsg(c, b, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil || n != 1 || b[0] != 'F' {
		result("marker", fmt.Sprintf("%q %v", b[:n], errName(err)))
		return
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		result("marker", "no descriptor")
		return
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		result("marker", "no descriptor")
		return
	}
	unix.Close(c)
	s := fds[0]
	result("bind", errName(unix.Bind(s, &unix.SockaddrUnix{Name: "@" + name})))
	buf := make([]byte, 64)
	for {
		if n, err := unix.Read(s, buf); n <= 0 || err != nil {
			break
		}
	}
}

// vsock is socket(AF_VSOCK, SOCK_STREAM|flags, 0).
func vsock(flags int) (int, error) { return unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|flags, 0) }

func errnoErr(e syscall.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

// isUnixSocket reports whether fd's inode is in /proc/net/unix: an
// AF_UNIX socket of the sandbox's network namespace.
func isUnixSocket(fd int) string {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return errName(err)
	}
	b, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		return errName(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 7 && f[6] == strconv.FormatUint(st.Ino, 10) {
			return "yes"
		}
	}
	return "no"
}

func vmName(sa unix.Sockaddr, err error) string {
	if err != nil {
		return errName(err)
	}
	if vm, ok := sa.(*unix.SockaddrVM); ok {
		port := strconv.FormatUint(uint64(vm.Port), 10)
		if vm.Port > 1023 && vm.Port != 0xffffffff && (vm.Port < 5000 || vm.Port > 6000) {
			port = "ephemeral"
		}
		return fmt.Sprintf("vm(%d,%s)", vm.CID, port)
	}
	return fmt.Sprintf("%T", sa)
}

// basics probes what a Nitro program finds: AF_VSOCK sockets that are
// Unix sockets underneath, /dev/nsm and /dev/vsock, the parent on CID 3,
// and everything else still refused. args: the parent's echo port.
func basics(args []string) {
	port := uint32(atoi(args[0]))
	fd, err := vsock(unix.SOCK_CLOEXEC)
	result("socket", errName(err))
	if err != nil {
		return
	}
	result("unix_underneath", isUnixSocket(fd))
	d, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	result("so_domain", fmt.Sprintf("%d %s", d, errName(err)))
	result("getsockname", vmName(unix.Getsockname(fd)))
	result("connect", errName(unix.Connect(fd, &unix.SockaddrVM{CID: 3, Port: port})))
	result("getpeername", vmName(unix.Getpeername(fd)))
	msg := []byte("hello parent")
	_, err = unix.Write(fd, msg)
	buf := make([]byte, 64)
	n, _ := unix.Read(fd, buf)
	result("echo", fmt.Sprintf("%s/%s", buf[:n], errName(err)))
	unix.Close(fd)
	fd, _ = vsock(0)
	result("connect_nobody", errName(unix.Connect(fd, &unix.SockaddrVM{CID: 3, Port: port + 1})))
	unix.Close(fd)
	fd, _ = vsock(0)
	result("connect_cid7", errName(unix.Connect(fd, &unix.SockaddrVM{CID: 7, Port: port})))
	unix.Close(fd)
	for _, dev := range []string{"nsm", "vsock"} {
		var st unix.Stat_t
		err := unix.Stat("/dev/"+dev, &st)
		result("dev_"+dev, fmt.Sprintf("%o/%s", st.Mode&0o7777, errName(err)))
	}
	v, err := unix.Open("/dev/vsock", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err == nil {
		cid, err := unix.IoctlGetUint32(v, unix.IOCTL_VM_SOCKETS_GET_LOCAL_CID)
		result("local_cid", fmt.Sprintf("%d %s", cid, errName(err)))
		unix.Close(v)
	}
	for name, domain := range map[string]int{"inet": unix.AF_INET, "inet6": unix.AF_INET6, "netlink": unix.AF_NETLINK} {
		typ := unix.SOCK_STREAM
		if domain == unix.AF_NETLINK {
			typ = unix.SOCK_RAW
		}
		fd, err := unix.Socket(domain, typ, 0)
		if err == nil {
			unix.Close(fd)
		}
		result("socket_"+name, errName(err))
	}
	_, err = unix.Socketpair(unix.AF_VSOCK, unix.SOCK_STREAM, 0)
	result("socketpair_vsock", errName(err))
	_, _, e := unix.RawSyscall(unix.SYS_IO_URING_SETUP, 1, 0, 0)
	result("io_uring_setup", errName(errnoErr(e)))
	result("seccomp", statusField("Seccomp"))
}

func statusField(name string) string {
	b, _ := os.ReadFile("/proc/self/status")
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && k == name {
			return strings.TrimSpace(v)
		}
	}
	return "absent"
}

// listen accepts count connections from the parent on port (plain
// AF_VSOCK calls), echoing each upper-cased. args: port, count.
func listen(args []string) {
	port := uint32(atoi(args[0]))
	count := atoi(args[1])
	l, err := vsock(unix.SOCK_CLOEXEC)
	if err != nil {
		result("socket", errName(err))
		return
	}
	result("bind", errName(unix.Bind(l, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port})))
	result("listen", errName(unix.Listen(l, 16)))
	result("listening", vmName(unix.Getsockname(l)))
	for i := range count {
		c, sa, err := unix.Accept4(l, unix.SOCK_CLOEXEC)
		if err != nil {
			result(fmt.Sprintf("accept%d", i), errName(err))
			return
		}
		result(fmt.Sprintf("accept%d_from", i), vmName(sa, nil))
		buf := make([]byte, 256)
		n, _ := unix.Read(c, buf)
		_, _ = unix.Write(c, []byte(strings.ToUpper(string(buf[:n]))))
		unix.Close(c)
	}
}

// Filter constants for attackNested.
const (
	seccompSetModeFilter = 1
	newListener          = 0x8
	retUserNotif         = 0x7fc00000
)

// attackNested stacks the program's own seccomp filter that sends
// socket(2) to a supervisor of its own, which lets socket(AF_VSOCK) run:
// the newest filter wins among equal actions, so without a guard the
// sandbox's supervisor never sees the call and the kernel makes a real
// vsock socket (not connected anywhere; closed at once). Then a filter
// without a listener, which only blocks the program itself.
func attackNested([]string) {
	onlySocket := []unix.SockFilter{
		{Code: 0x20, K: 0}, // ld nr
		{Code: 0x15, Jt: 0, Jf: 1, K: unix.SYS_SOCKET}, // jeq socket
		{Code: 0x06, K: retUserNotif},                  // ret USER_NOTIF
		{Code: 0x06, K: 0x7fff0000},                    // ret ALLOW
	}
	fprog := unix.SockFprog{Len: uint16(len(onlySocket)), Filter: &onlySocket[0]}
	runtime.LockOSThread()
	lfd, _, e := unix.Syscall(unix.SYS_SECCOMP, seccompSetModeFilter, newListener, uintptr(unsafe.Pointer(&fprog)))
	result("own_listener", errName(errnoErr(e)))
	if e == 0 {
		// Our own supervisor: answer every notification with CONTINUE.
		go func() {
			for {
				var notif [80]byte
				if _, _, e := unix.Syscall(unix.SYS_IOCTL, lfd, 0xc0502100 /* NOTIF_RECV */, uintptr(unsafe.Pointer(&notif[0]))); e != 0 {
					return
				}
				var resp [24]byte
				copy(resp[:8], notif[:8])
				binary.LittleEndian.PutUint32(resp[20:], 1) // SECCOMP_USER_NOTIF_FLAG_CONTINUE
				_, _, _ = unix.Syscall(unix.SYS_IOCTL, lfd, 0xc0182101 /* NOTIF_SEND */, uintptr(unsafe.Pointer(&resp[0])))
			}
		}()
		fd, err := vsock(unix.SOCK_CLOEXEC)
		if err != nil {
			result("socket_through_own_listener", errName(err))
			return
		}
		d, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
		result("socket_through_own_listener", fmt.Sprintf("ok, unix underneath: %s (type %d)", isUnixSocket(fd), d))
		unix.Close(fd)
		return
	}
	// Without a listener, the program's filter wins and its calls fail.
	_, _, e = unix.Syscall(unix.SYS_SECCOMP, seccompSetModeFilter, 0, uintptr(unsafe.Pointer(&fprog)))
	result("own_filter", errName(errnoErr(e)))
	_, err := vsock(0)
	result("socket_after_own_filter", errName(err))
}

// attackRace connects emulated sockets while another thread rewrites the
// address under the call: the AF_VSOCK address of the parent's port, an
// abstract Unix address in the sandbox (where the probe listens) and
// other CIDs. Whatever the supervisor read, no socket may end up
// connected to the Unix address. args: the parent's port, rounds.
func attackRace(args []string) {
	port := uint32(atoi(args[0]))
	rounds := atoi(args[1])
	// A Unix listener in the sandbox that a CONTINUEd connect would reach.
	trap, _ := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK, 0)
	trapName := "@cloister-race-trap"
	result("trap", errName(unix.Bind(trap, &unix.SockaddrUnix{Name: trapName})))
	_ = unix.Listen(trap, 1024)
	buf := make([]byte, 128)
	vm := make([]byte, 16)
	binary.LittleEndian.PutUint16(vm[0:], unix.AF_VSOCK)
	binary.LittleEndian.PutUint32(vm[4:], port)
	binary.LittleEndian.PutUint32(vm[8:], 3)
	un := make([]byte, 2+len(trapName))
	binary.LittleEndian.PutUint16(un[0:], unix.AF_UNIX)
	copy(un[3:], trapName[1:])
	other := append([]byte(nil), vm...)
	binary.LittleEndian.PutUint32(other[8:], 5)
	var stop atomic.Bool
	go func() {
		runtime.LockOSThread()
		for i := 0; !stop.Load(); i++ {
			switch i % 3 {
			case 0:
				copy(buf, vm)
			case 1:
				clear(buf[:16])
				copy(buf, un)
			case 2:
				copy(buf, other)
			}
		}
	}()
	counts := map[string]int{}
	for range rounds {
		fd, err := vsock(0)
		if err != nil {
			counts["socket "+errName(err)]++
			continue
		}
		_, _, e := unix.Syscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&buf[0])), 110)
		counts[errName(errnoErr(e))]++
		unix.Close(fd)
	}
	stop.Store(true)
	trapped := 0
	for {
		c, _, err := unix.Accept(trap)
		if err != nil {
			break
		}
		trapped++
		unix.Close(c)
	}
	result("outcomes", fmt.Sprint(counts))
	result("trapped", trapped)
}

// attackDup2 races dup2 against bind: one thread binds descriptor N (an
// AF_UNIX socket of the sandbox) to abstract names, another swaps an
// emulated socket and a plain one into N. A bind that runs on whatever N
// is at that moment can only name a socket of the sandbox's own network
// namespace. args: rounds.
func attackDup2(args []string) {
	rounds := atoi(args[0])
	target := 100
	plain, _ := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	var stop atomic.Bool
	go func() {
		runtime.LockOSThread()
		for i := 0; !stop.Load(); i++ {
			if i%2 == 0 {
				if e, err := vsock(0); err == nil {
					_ = unix.Dup2(e, target)
					unix.Close(e)
				}
			} else {
				_ = unix.Dup2(plain, target)
			}
		}
	}()
	counts := map[string]int{}
	for i := range rounds {
		name := fmt.Sprintf("@cloister-dup2-%d", i)
		counts[errName(unix.Bind(target, &unix.SockaddrUnix{Name: name}))]++
	}
	stop.Store(true)
	result("outcomes", fmt.Sprint(counts))
	result("rounds", rounds)
}

// attackFakeFD passes descriptors that are not what they seem: negative,
// closed, huge, with high bits set, not sockets, and a closed emulated
// socket's number.
func attackFakeFD([]string) {
	addr := make([]byte, 16)
	binary.LittleEndian.PutUint16(addr, unix.AF_VSOCK)
	binary.LittleEndian.PutUint32(addr[8:], 3)
	call := func(nr uintptr, fd uintptr) string {
		_, _, e := unix.Syscall(nr, fd, uintptr(unsafe.Pointer(&addr[0])), 16)
		return errName(errnoErr(e))
	}
	e, _ := vsock(0)
	unix.Close(e)
	for name, fd := range map[string]uintptr{
		"negative": ^uintptr(0), "closed_emulated": uintptr(e), "huge": 1 << 20, "stdin": 0,
		"high_bits_on_stdin": 1 << 32,
	} {
		result("connect_"+name, call(unix.SYS_CONNECT, fd))
		result("bind_"+name, call(unix.SYS_BIND, fd))
		_, _, en := unix.Syscall(unix.SYS_IOCTL, fd, 0xc0200a00, 0)
		result("ioctl_"+name, errName(errnoErr(en)))
	}
}

// attackFork forks (and execs) while a thread waits in an emulated
// accept; the parent's connection must still arrive. args: port.
func attackFork(args []string) {
	port := uint32(atoi(args[0]))
	l, _ := vsock(0)
	_ = unix.Bind(l, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port})
	_ = unix.Listen(l, 8)
	got := make(chan string, 1)
	go func() {
		runtime.LockOSThread()
		c, sa, err := unix.Accept(l)
		if err != nil {
			got <- errName(err)
			return
		}
		buf := make([]byte, 16)
		n, _ := unix.Read(c, buf)
		got <- vmName(sa, nil) + " " + string(buf[:n])
	}()
	self, _ := os.Executable()
	forks := 0
	for range 20 {
		pid, err := syscall.ForkExec(self, []string{"vsockprobe", "exit"}, &syscall.ProcAttr{})
		if err != nil {
			result("fork", errName(err))
			break
		}
		var ws syscall.WaitStatus
		_, _ = syscall.Wait4(pid, &ws, 0, nil)
		forks++
	}
	result("forks", forks)
	result("listening", "yes")
	select {
	case r := <-got:
		result("accepted", r)
	case <-time.After(50 * time.Second):
		result("accepted", "timeout")
	}
}

// floodSockets makes emulated sockets until refused.
func floodSockets([]string) {
	n := 0
	var err error
	for n < 100000 {
		if _, err = vsock(0); err != nil {
			break
		}
		n++
	}
	result("sockets", n)
	result("refusal", errName(err))
	// Closed sockets make room again.
	for fd := 3; fd < 3+n+16; fd++ {
		var st unix.Stat_t
		if unix.Fstat(fd, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFSOCK {
			unix.Close(fd)
		}
	}
	time.Sleep(200 * time.Millisecond)
	fd, err := vsock(0)
	result("after_close", errName(err))
	if err == nil {
		unix.Close(fd)
	}
}

// floodNotify runs threads that call getsockname on a plain Unix socket
// (a notified call, answered with CONTINUE) as fast as they can, and
// meanwhile connects to the parent's echo port. args: threads, seconds,
// port.
func floodNotify(args []string) {
	threads, seconds, port := atoi(args[0]), atoi(args[1]), uint32(atoi(args[2]))
	fd, _ := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	var total atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(time.Duration(seconds) * time.Second)
	var firstErr atomic.Value
	for range threads {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			for time.Now().Before(deadline) {
				if _, err := unix.Getsockname(fd); err != nil && !errors.Is(err, unix.EINTR) {
					firstErr.CompareAndSwap(nil, errName(err))
				}
				total.Add(1)
			}
		}()
	}
	result("flooding", "yes")
	time.Sleep(time.Duration(seconds) * time.Second / 2)
	if c, err := vsock(0); err != nil {
		result("connect_during_flood", errName(err))
	} else {
		err := unix.Connect(c, &unix.SockaddrVM{CID: 3, Port: port})
		buf := make([]byte, 16)
		if err == nil {
			_, err = unix.Write(c, []byte("hello"))
		}
		n, _ := unix.Read(c, buf)
		result("connect_during_flood", errName(err)+" "+string(buf[:n]))
	}
	wg.Wait()
	result("calls", total.Load())
	if e := firstErr.Load(); e != nil {
		result("error", e)
	}
}

// dialParent connects to the parent's port the way mode says: "vsock"
// (AF_VSOCK to CID 3, emulated in the sandbox) or "unix" (the SDK's path
// in the sandbox: a Unix socket to /run/cloister/vsock/host/vsock_<port>).
func dialParent(mode string, port uint32) (int, error) {
	if mode == "vsock" {
		fd, err := vsock(unix.SOCK_CLOEXEC)
		if err != nil {
			return -1, err
		}
		if err := unix.Connect(fd, &unix.SockaddrVM{CID: 3, Port: port}); err != nil {
			unix.Close(fd)
			return -1, err
		}
		return fd, nil
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: fmt.Sprintf("/run/cloister/vsock/host/vsock_%d", port)}); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// readFull reads exactly len(b) bytes.
func readFull(fd int, b []byte) error {
	for n := 0; n < len(b); {
		m, err := unix.Read(fd, b[n:])
		if err != nil {
			return err
		}
		if m == 0 {
			return errors.New("EOF")
		}
		n += m
	}
	return nil
}

func writeFull(fd int, b []byte) error {
	for n := 0; n < len(b); {
		m, err := unix.Write(fd, b[n:])
		if err != nil {
			return err
		}
		n += m
	}
	return nil
}

// benchConnect times n connections to the parent's echo port, each
// carrying one byte there and back. args: mode, port, n.
func benchConnect(args []string) {
	mode, port, n := args[0], uint32(atoi(args[1])), atoi(args[2])
	b := []byte{'x'}
	start := time.Now()
	for range n {
		fd, err := dialParent(mode, port)
		if err == nil {
			err = writeFull(fd, b)
		}
		if err == nil {
			err = readFull(fd, b)
		}
		if err != nil {
			result("error", errName(err))
			return
		}
		unix.Close(fd)
	}
	result("ns_per_op", time.Since(start).Nanoseconds()/int64(n))
}

// benchRoundTrip times n 64-byte round trips on one connection to the
// parent's echo port. args: mode, port, n.
func benchRoundTrip(args []string) {
	mode, port, n := args[0], uint32(atoi(args[1])), atoi(args[2])
	fd, err := dialParent(mode, port)
	if err != nil {
		result("error", errName(err))
		return
	}
	b := make([]byte, 64)
	start := time.Now()
	for range n {
		if err := writeFull(fd, b); err != nil {
			result("error", errName(err))
			return
		}
		if err := readFull(fd, b); err != nil {
			result("error", errName(err))
			return
		}
	}
	result("ns_per_op", time.Since(start).Nanoseconds()/int64(n))
}

// NSM requests (CBOR): "GetRandom", and {"Attestation": {"user_data":
// null, "nonce": null, "public_key": null}}.
var (
	getRandom   = append([]byte{0x60 | 9}, "GetRandom"...)
	attestation = func() []byte {
		b := append([]byte{0xa1, 0x60 | 11}, "Attestation"...)
		b = append(b, 0xa3)
		for _, k := range []string{"user_data", "nonce", "public_key"} {
			b = append(b, 0x60|byte(len(k)))
			b = append(b, k...)
			b = append(b, 0xf6)
		}
		return b
	}()
)

// benchNSM times n requests (GetRandom, or Attestation with "attest"):
// "ioctl" through /dev/nsm, or "stream" as the SDK sends them in the
// sandbox (frames of a 4-byte big-endian length and the CBOR, over a Unix
// socket to the emulated module's port). args: mode, request, n.
func benchNSM(args []string) {
	mode, n := args[0], atoi(args[2])
	req := getRandom
	if args[1] == "attest" {
		req = attestation
	}
	resp := make([]byte, 0x3000)
	var once func() error
	if mode == "ioctl" {
		fd, err := unix.Open("/dev/nsm", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			result("error", errName(err))
			return
		}
		var raw [4]uint64
		once = func() error {
			raw[0], raw[1] = uint64(uintptr(unsafe.Pointer(&req[0]))), uint64(len(req))
			raw[2], raw[3] = uint64(uintptr(unsafe.Pointer(&resp[0]))), uint64(len(resp))
			_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), 0xc0200a00, uintptr(unsafe.Pointer(&raw[0])))
			runtime.KeepAlive(req)
			if e == 0 && resp[0] == 0xa1 && raw[3] > 8 && string(resp[2:7]) == "Error" {
				return fmt.Errorf("module error %q", resp[:raw[3]])
			}
			return errnoErr(e)
		}
	} else {
		fd, err := dialParent("unix", 0x4E534D)
		if err != nil {
			result("error", errName(err))
			return
		}
		frame := binary.BigEndian.AppendUint32(nil, uint32(len(req)))
		frame = append(frame, req...)
		once = func() error {
			if err := writeFull(fd, frame); err != nil {
				return err
			}
			var hdr [4]byte
			if err := readFull(fd, hdr[:]); err != nil {
				return err
			}
			l := binary.BigEndian.Uint32(hdr[:])
			if l > uint32(len(resp)) {
				return errors.New("response too long")
			}
			return readFull(fd, resp[:l])
		}
	}
	start := time.Now()
	for range n {
		if err := once(); err != nil {
			result("error", errName(err))
			return
		}
	}
	result("ns_per_op", time.Since(start).Nanoseconds()/int64(n))
}

// attackStuckConnect fills the queue of the parent's listener on port
// args[0], which does not accept (as the daemon's heartbeat listener once
// the heartbeat came), with plain Unix connections, then makes blocking
// AF_VSOCK connects to that port. args[1] connects keep Linux's default connect
// timeout (2 s) and end with its error; args[2] more set
// SO_VM_SOCKETS_CONNECT_TIMEOUT to an hour and stay blocked until the
// sandbox is killed. Each waiting connect holds a handler (and an OS
// thread, if the handler sleeps in the kernel) in the monitor.
func attackStuckConnect(args []string) {
	port, short, long := uint32(atoi(args[0])), atoi(args[1]), atoi(args[2])
	// Fill the listener's queue with plain Unix connections that are
	// closed at once (a connection queued for accept stays queued).
	filled := 0
	path := fmt.Sprintf("/run/cloister/vsock/host/vsock_%d", port)
	for ; filled < 100000; filled++ {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			result("fill", errName(err))
			return
		}
		err = unix.Connect(fd, &unix.SockaddrUnix{Name: path})
		unix.Close(fd)
		if errors.Is(err, unix.EAGAIN) {
			break
		}
		if err != nil {
			result("fill", errName(err))
			return
		}
	}
	result("queued", filled)
	var wg sync.WaitGroup
	var mu sync.Mutex
	outcomes := map[string]int{}
	for range short {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fd, err := vsock(0)
			if err == nil {
				err = unix.Connect(fd, &unix.SockaddrVM{CID: 3, Port: port})
			}
			mu.Lock()
			outcomes[errName(err)]++
			mu.Unlock()
		}()
	}
	for range long {
		go func() {
			fd, err := vsock(0)
			if err != nil {
				return
			}
			tv := unix.Timeval{Sec: 3600}
			_ = unix.SetsockoptTimeval(fd, unix.AF_VSOCK, unix.SO_VM_SOCKETS_CONNECT_TIMEOUT, &tv)
			err = unix.Connect(fd, &unix.SockaddrVM{CID: 3, Port: port})
			result("long_connect_ended", errName(err))
		}()
	}
	result("connecting", short+long)
	wg.Wait()
	result("short_connects", fmt.Sprint(outcomes))
	select {}
}

// attackIfconf accepts one connection on an AF_VSOCK listener on port
// args[0] (a host client's socket, handed off by the monitor, from the
// host's network namespace) and asks the kernel, through that socket,
// for the network interfaces (SIOCGIFCONF) and for the index of args[1]
// (SIOCGIFINDEX), a host interface. Then the same through a socket of
// its own. Network device ioctls on a socket act on its namespace.
func attackIfconf(args []string) {
	c, ok := acceptOne(uint32(atoi(args[0])))
	if !ok {
		return
	}
	own, _ := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	for _, s := range []struct {
		name string
		fd   int
	}{{"handed_off", c}, {"own", own}} {
		result(s.name+"_ifconf", ifconf(s.fd))
		var ifr [40]byte
		copy(ifr[:], args[1])
		_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(s.fd), unix.SIOCGIFINDEX, uintptr(unsafe.Pointer(&ifr[0])))
		if e != 0 {
			result(s.name+"_ifindex", errName(e))
		} else {
			result(s.name+"_ifindex", "found")
		}
	}
	// SIOCGSKNS runs as it is (it concerns the socket itself): the
	// handed-off socket's namespace is the host's, where the sandbox has
	// no CAP_NET_ADMIN.
	ns, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(c), 0x894c, 0)
	if e != 0 {
		result("handed_off_netns", errName(e))
	} else {
		result("handed_off_netns", "got descriptor "+strconv.Itoa(int(ns)))
	}
}

// ifconf lists the interfaces and IPv4 addresses SIOCGIFCONF returns on
// fd.
func ifconf(fd int) string {
	buf := make([]byte, 40*64)
	var ifc struct {
		Len int32
		_   int32
		Buf uintptr
	}
	ifc.Len, ifc.Buf = int32(len(buf)), uintptr(unsafe.Pointer(&buf[0]))
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCGIFCONF, uintptr(unsafe.Pointer(&ifc)))
	runtime.KeepAlive(buf)
	if e != 0 {
		return errName(e)
	}
	var names []string
	for off := 0; off+40 <= int(ifc.Len); off += 40 {
		a := buf[off+20 : off+24] // the sockaddr_in's address
		names = append(names, fmt.Sprintf("%s=%d.%d.%d.%d", strings.TrimRight(string(buf[off:off+16]), "\x00"), a[0], a[1], a[2], a[3]))
	}
	return "[" + strings.Join(names, " ") + "]"
}

// sweepAccepted accepts one connection from the parent on an AF_VSOCK
// listener on port args[0], then makes AF_VSOCK sockets until the
// supervisor refuses one (its table full: it sweeps out the sockets that
// no longer exist), one more after that, and asks the accepted socket
// for its peer and its domain: it is still an AF_VSOCK socket.
func sweepAccepted(args []string) {
	c, ok := acceptOne(uint32(atoi(args[0])))
	if !ok {
		return
	}
	n := 0
	for ; n < 100000; n++ {
		if _, err := vsock(unix.SOCK_CLOEXEC); err != nil {
			result("refusal", errName(err))
			break
		}
	}
	_, err := vsock(unix.SOCK_CLOEXEC)
	result("after_refusal", errName(err))
	result("accepted_peer", vmName(unix.Getpeername(c)))
	d, err := unix.GetsockoptInt(c, unix.SOL_SOCKET, unix.SO_DOMAIN)
	result("accepted_domain", fmt.Sprint(d, " ", errName(err)))
}

// floodWaiting starts args[0] blocking accepts, each on an AF_VSOCK
// listener of its own that nobody connects to, and reports how they end
// (the supervisor refuses those beyond its bound of
// waiting calls with ENOBUFS) once args[1] of them did; then checks that a call that does not
// wait is still answered, and waits to be killed.
func floodWaiting(args []string) {
	n := atoi(args[0])
	var mu sync.Mutex
	outcomes := map[string]int{}
	for i := range n {
		go func() {
			l, err := vsock(unix.SOCK_CLOEXEC)
			if err == nil {
				err = unix.Bind(l, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: uint32(7000 + i)})
			}
			if err == nil {
				err = unix.Listen(l, 1)
			}
			if err == nil {
				_, _, err = unix.Accept4(l, unix.SOCK_CLOEXEC)
			}
			mu.Lock()
			outcomes[errName(err)]++
			mu.Unlock()
		}()
	}
	// Wait (at most 30 s) until args[1] of them ended, and a little more
	// so that any other that would end is seen too.
	ended := func() int {
		mu.Lock()
		defer mu.Unlock()
		t := 0
		for _, c := range outcomes {
			t += c
		}
		return t
	}
	for i := 0; i < 3000 && ended() < atoi(args[1]); i++ {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	mu.Lock()
	result("ended", fmt.Sprint(outcomes))
	mu.Unlock()
	fd, err := vsock(unix.SOCK_CLOEXEC)
	if err == nil {
		_, err = unix.Getsockname(fd)
	}
	result("getsockname_while_flooded", errName(err))
	result("done", "yes")
	select {}
}

// attackBindLinks races the supervisor's bind of emulated listeners on
// port args[0] (which creates vsock_<port> in the listener directory,
// with root's powers outside the sandbox, and replaces a stale socket
// file there) with a thread that keeps putting a symbolic link to the
// host path args[1] at that name, a stale socket, or nothing, args[2]
// times. Links point outside the sandbox: the supervisor resolves them
// in the host's file system, if it ever follows one.
func attackBindLinks(args []string) {
	port, target, rounds := args[0], args[1], atoi(args[2])
	name := "/run/cloister/vsock/guest/vsock_" + port
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			_ = unix.Unlink(name)
			switch i % 3 {
			case 0:
				_ = unix.Symlink(target, name)
			case 1:
				// A stale socket file: bound, never listening.
				if fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err == nil {
					_ = unix.Bind(fd, &unix.SockaddrUnix{Name: name})
					unix.Close(fd)
				}
			}
		}
	}()
	outcomes := map[string]int{}
	for range rounds {
		outcomes[bindOnce(uint32(atoi(port)))]++
	}
	close(stop)
	wg.Wait()
	_ = unix.Unlink(name)
	result("outcomes", fmt.Sprint(outcomes))
}

// bindSignalStorm binds rounds emulated sockets to port (closing each)
// while another thread sends the binding thread signals as fast as it
// can: Go installs its handlers with SA_RESTART, so a bind interrupted
// while the supervisor works on it is made again. Every bind must still
// succeed once: a redone bind would find its socket bound (EINVAL).
func bindSignalStorm(args []string) {
	port, rounds := uint32(atoi(args[0])), atoi(args[1])
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGUSR1)
	go func() {
		for range sigs {
		}
	}()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	pid, tid := unix.Getpid(), unix.Gettid()
	var stop atomic.Bool
	var sent atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for !stop.Load() {
			if unix.Tgkill(pid, tid, syscall.SIGUSR1) == nil {
				sent.Add(1)
			}
		}
	}()
	outcomes := map[string]int{}
	for range rounds {
		outcomes[bindOnce(port)]++
	}
	stop.Store(true)
	<-done
	result("signals", fmt.Sprint(sent.Load() > 0))
	result("outcomes", fmt.Sprint(outcomes))
}

// bindOnce binds a new emulated socket to port and closes it; it returns
// bind's outcome, or "socket <errno>" if there was no socket.
func bindOnce(port uint32) string {
	fd, err := vsock(unix.SOCK_CLOEXEC)
	if err != nil {
		return "socket " + errName(err)
	}
	defer unix.Close(fd)
	return errName(unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port}))
}

// acceptOne listens on an emulated socket at port (result "listening":
// "yes" or the error) and accepts one connection (result "accept" on
// failure); ok is false if either failed.
func acceptOne(port uint32) (int, bool) {
	l, err := vsock(unix.SOCK_CLOEXEC)
	if err == nil {
		err = unix.Bind(l, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port})
	}
	if err == nil {
		err = unix.Listen(l, 4)
	}
	if err != nil {
		result("listening", errName(err))
		return -1, false
	}
	result("listening", "yes")
	c, _, err := unix.Accept4(l, unix.SOCK_CLOEXEC)
	if err != nil {
		result("accept", errName(err))
		return -1, false
	}
	return c, true
}
