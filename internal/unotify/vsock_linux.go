//go:build linux

package unotify

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cloister/cloister/internal/hybrid"
	"github.com/cloister/cloister/internal/wellknown"
)

// Socket type bits (linux/net.h): the type is the low 4 bits, the flags
// SOCK_NONBLOCK and SOCK_CLOEXEC the only others allowed.
const (
	sockTypeMask = 0xf
	sockMax      = 11
)

// sysSocket emulates socket(AF_VSOCK, type, protocol) with the checks and
// errors of __sys_socket and vsock_create: a stream socket is a Unix
// stream socket made in the sandbox's network namespace and installed in
// the caller. SOCK_DGRAM fails with ENODEV (no datagram transport, as in
// a Nitro enclave), SOCK_SEQPACKET with ESOCKTNOSUPPORT.
func (s *Supervisor) sysSocket(c *Caller, n *Notification) answer {
	typ, proto := int32(n.Args[1]), int32(n.Args[2])
	flags := typ &^ sockTypeMask
	if flags&^(unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK) != 0 {
		return fail(unix.EINVAL)
	}
	typ &= sockTypeMask
	if typ >= sockMax {
		return fail(unix.EINVAL)
	}
	if proto != 0 && proto != AFVsock {
		return fail(unix.EPROTONOSUPPORT)
	}
	switch typ {
	case unix.SOCK_STREAM:
	case unix.SOCK_DGRAM:
		return fail(unix.ENODEV)
	default:
		return fail(unix.ESOCKTNOSUPPORT)
	}
	if !s.room() {
		s.refused.Add(1)
		return fail(unix.ENOBUFS)
	}
	fd, err := s.ns.UnixStream()
	if err != nil {
		return s.errAnswer("socket", err)
	}
	defer unix.Close(fd)
	if flags&unix.SOCK_NONBLOCK != 0 {
		// The socket is new: its open file is not shared yet.
		if err := unix.SetNonblock(fd, true); err != nil {
			return s.errAnswer("socket", err)
		}
	}
	sock, err := s.register(fd, false, nil)
	if err != nil {
		return s.errAnswer("socket", err)
	}
	return s.install(c, n, fd, sock, flags&unix.SOCK_CLOEXEC != 0)
}

// install gives fd to the caller as the call's result (ADDFD with SEND).
// sock is forgotten if that fails.
func (s *Supervisor) install(c *Caller, n *Notification, fd int, sock *vsock, cloexec bool) answer {
	_, err := s.l.AddFD(n.ID, fd, cloexec, true)
	if err == nil {
		return done
	}
	s.table.remove(sock)
	return s.errAnswer("install a descriptor", err)
}

// room reports whether one more emulated socket may exist, sweeping the
// sockets the sandbox has closed out of a full table first.
func (s *Supervisor) room() bool {
	if s.table.len() < s.cfg.MaxSockets {
		return true
	}
	s.gc()
	return s.table.len() < s.cfg.MaxSockets
}

// gc forgets the emulated sockets that no longer exist (closed by the
// sandbox), asking sock_diag; at most once per gcInterval.
func (s *Supervisor) gc() {
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	if time.Since(s.lastGC) < gcInterval {
		return
	}
	s.lastGC = time.Now()
	for _, v := range s.table.all() {
		if !s.alive(v) {
			s.table.remove(v)
		}
	}
}

// alive reports whether v's socket still exists; when that cannot be told
// it is presumed alive.
func (s *Supervisor) alive(v *vsock) bool {
	d := s.sandboxDiag
	if v.hostNS {
		d = s.hostDiag
	}
	ok, err := d.alive(v.ino, v.cookie)
	if err != nil {
		s.log.Warn("unotify: sock_diag", "err", err)
		return true
	}
	return ok
}

// cookie returns the socket cookie and inode of a socket descriptor, or
// ok false when fd is not a socket.
func cookie(fd int) (cookie, ino uint64, ok bool, err error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, 0, false, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return 0, 0, false, nil
	}
	ck, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
	if err != nil {
		return 0, 0, false, err
	}
	return ck, st.Ino, true, nil
}

// register records a socket the supervisor made or accepted; setup, if
// not nil, completes the entry before it becomes visible.
func (s *Supervisor) register(fd int, hostNS bool, setup func(*vsock)) (*vsock, error) {
	ck, ino, ok, err := cookie(fd)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, errors.New("not a socket")
	}
	v := newVsock(ck, ino, hostNS)
	if setup != nil {
		setup(v)
	}
	if !s.table.add(v) {
		return nil, errors.New("socket already emulated")
	}
	return v, nil
}

// lookup duplicates the caller's descriptor fd and finds its emulated
// socket. When fd is not an emulated socket (or not a descriptor), the
// answer is to let the call run: the kernel then gives its own result,
// which cannot differ from what it would give without the supervisor.
// The returned descriptor is the supervisor's own reference to the
// caller's open file; whatever the caller does with fd meanwhile, the
// handler acts on that file.
func (s *Supervisor) lookup(c *Caller, fd uint64) (int, *vsock, answer, bool) {
	dup, err := c.GetFD(int32(fd))
	if err != nil {
		if errors.Is(err, ErrGone) {
			return -1, nil, s.gone(), false
		}
		return -1, nil, cont, false
	}
	ck, _, isSock, err := cookie(dup)
	if err != nil || !isSock {
		unix.Close(dup)
		return -1, nil, cont, false
	}
	v := s.table.get(ck)
	if v == nil {
		unix.Close(dup)
		return -1, nil, cont, false
	}
	return dup, v, answer{}, true
}

// sysOnSocket handles the socket calls the filter notifies for every
// descriptor: emulated for the supervisor's sockets, run as they are for
// any other.
func (s *Supervisor) sysOnSocket(ctx context.Context, c *Caller, n *Notification) answer {
	// accept4 checks its flags before anything else.
	if n.Nr == unix.SYS_ACCEPT4 && int32(n.Args[3])&^(unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK) != 0 {
		return fail(unix.EINVAL)
	}
	// getsockopt and setsockopt are notified only at level AF_VSOCK and
	// for SO_DOMAIN; anything else (a later filter) runs.
	if n.Nr == unix.SYS_GETSOCKOPT || n.Nr == unix.SYS_SETSOCKOPT {
		level, opt := int32(n.Args[1]), int32(n.Args[2])
		if level != AFVsock && (n.Nr == unix.SYS_SETSOCKOPT || level != unix.SOL_SOCKET || opt != unix.SO_DOMAIN) {
			return cont
		}
	}
	fd, v, a, ok := s.lookup(c, n.Args[0])
	if !ok {
		return a
	}
	if n.Nr != unix.SYS_BIND && n.Nr != unix.SYS_CONNECT {
		v.mu.Lock()
		v.otherCall()
		v.mu.Unlock()
	}
	switch n.Nr {
	case unix.SYS_CONNECT:
		// A blocking connect waits while the parent's backlog is full.
		return later(func() answer {
			defer unix.Close(fd)
			return s.sysConnect(ctx, c, n, fd, v)
		})
	case unix.SYS_ACCEPT, unix.SYS_ACCEPT4:
		flags := int32(0)
		if n.Nr == unix.SYS_ACCEPT4 {
			flags = int32(n.Args[3])
		}
		return later(func() answer {
			defer unix.Close(fd)
			return s.sysAccept(ctx, c, n, fd, v, flags)
		})
	}
	defer unix.Close(fd)
	switch n.Nr {
	case unix.SYS_BIND:
		return s.sysBind(c, n, fd, v)
	case unix.SYS_LISTEN:
		return s.sysListen(c, n, fd, v)
	case unix.SYS_GETSOCKNAME, unix.SYS_GETPEERNAME:
		return s.sysGetname(c, n, v)
	case unix.SYS_SHUTDOWN:
		return s.sysShutdown(n, fd, v)
	case unix.SYS_GETSOCKOPT:
		return s.sysGetsockopt(c, n, v)
	case unix.SYS_SETSOCKOPT:
		return s.sysSetsockopt(c, n, v)
	}
	return fail(unix.ENOSYS)
}

// readSockaddr copies an address argument as move_addr_to_kernel does:
// a length outside 0…128 is EINVAL, unreadable memory EFAULT.
func readSockaddr(c *Caller, addr, length uint64) ([]byte, error) {
	l := int32(length)
	if l < 0 || l > MaxSockaddr {
		return nil, unix.EINVAL
	}
	b := make([]byte, l)
	if err := c.ReadAt(b, addr); err != nil {
		return nil, err
	}
	return b, nil
}

// writeSockaddr returns an address as move_addr_to_user does: it reads
// the caller's length (EFAULT), refuses a negative one (EINVAL), copies
// at most that many bytes of sa and stores the full length.
func writeSockaddr(c *Caller, sa []byte, addr, lenAddr uint64) error {
	var lb [4]byte
	if err := c.ReadAt(lb[:], lenAddr); err != nil {
		return err
	}
	l := int32(binary.NativeEndian.Uint32(lb[:]))
	if l < 0 {
		return unix.EINVAL
	}
	if int(l) > len(sa) {
		l = int32(len(sa))
	}
	if l > 0 {
		if err := c.WriteAt(sa[:l], addr); err != nil {
			return err
		}
	}
	binary.NativeEndian.PutUint32(lb[:], uint32(len(sa)))
	return c.WriteAt(lb[:], lenAddr)
}

// sysBind emulates bind on an emulated socket (vsock_bind): any address
// error is EINVAL, a bound socket EINVAL, a CID other than the enclave's
// or VMADDR_CID_ANY EADDRNOTAVAIL, a port in use EADDRINUSE,
// VMADDR_PORT_ANY picks a free port above 1023. The socket is bound as
// vsock_<port> in the enclave's listener directory, where the parent's
// connections reach it. Ports up to 1023 need no privilege (unlike
// Linux, whose check is CAP_NET_BIND_SERVICE).
func (s *Supervisor) sysBind(c *Caller, n *Notification, fd int, v *vsock) answer {
	raw, err := readSockaddr(c, n.Args[1], n.Args[2])
	if err != nil {
		return s.errAnswer("bind", err)
	}
	sa, err := ParseSockaddrVM(raw)
	if err != nil {
		return fail(unix.EINVAL)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.replays(n.Pid, n.Nr, raw, true) {
		// Answered as the first time, and remembered again: this answer
		// too may be lost to a signal.
		return v.succeeded(n.Pid, n.Nr, raw)
	}
	if v.state != stateUnbound || v.bound {
		return fail(unix.EINVAL)
	}
	if sa.CID != CIDAny && sa.CID != s.cfg.CID {
		return fail(unix.EADDRNOTAVAIL)
	}
	port := sa.Port
	if port == PortAny {
		p, ok := s.table.ephemeral(v)
		if !ok {
			return fail(unix.EADDRNOTAVAIL)
		}
		port = p
	} else if !s.reservePort(port, v) {
		return fail(unix.EADDRINUSE)
	}
	if err := s.bindListener(c, fd, port); err != nil {
		s.table.release(port, v)
		return s.errAnswer("bind", err)
	}
	v.bound, v.hasFile, v.state = true, true, stateBound
	v.local = NewSockaddrVM(sa.CID, port)
	return v.succeeded(n.Pid, n.Nr, raw)
}

// reservePort reserves port for v; a holder that no longer exists (the
// sandbox closed it) loses it.
func (s *Supervisor) reservePort(port uint32, v *vsock) bool {
	if s.table.reserve(port, v) {
		return true
	}
	if o := s.table.portOwner(port); o != nil && !s.alive(o) {
		s.table.remove(o)
		return s.table.reserve(port, v)
	}
	return false
}

// guestPath is the path through which this process reaches name in the
// enclave's listener directory (its descriptor in /proc/self/fd).
func (s *Supervisor) guestPath(name string) string {
	return "/proc/self/fd/" + strconv.Itoa(int(s.cfg.GuestDir.Fd())) + "/" + name
}

// bindListener binds fd to vsock_<port> in the enclave's listener
// directory, with the caller's file-system ids (so the file is the
// program's, as if it had bound it). A socket file left by a listener
// that was closed (nobody accepts on it) is replaced; anything else there
// is EADDRINUSE.
func (s *Supervisor) bindListener(c *Caller, fd int, port uint32) error {
	uid, gid := s.callerIDs(c)
	name := wellknown.VsockSocketName(port)
	path := s.guestPath(name)
	err := s.ns.AsIDs(uid, gid, func() error { return unix.Bind(fd, &unix.SockaddrUnix{Name: path}) })
	if !errors.Is(err, unix.EADDRINUSE) {
		return err
	}
	if !s.staleListener(name) {
		return unix.EADDRINUSE
	}
	if err := s.ns.AsIDs(uid, gid, func() error { return unix.Unlinkat(int(s.cfg.GuestDir.Fd()), name, 0) }); err != nil && !errors.Is(err, unix.ENOENT) {
		return unix.EADDRINUSE
	}
	return s.ns.AsIDs(uid, gid, func() error { return unix.Bind(fd, &unix.SockaddrUnix{Name: path}) })
}

// staleListener reports whether name in the listener directory is a
// socket nobody listens on, reached without following links.
func (s *Supervisor) staleListener(name string) bool {
	pfd, err := unix.Openat(int(s.cfg.GuestDir.Fd()), name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(pfd)
	var st unix.Stat_t
	if unix.Fstat(pfd, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return false
	}
	// The probe is a socket of the sandbox's namespace, so a live
	// listener that accepts it gets nothing of the host's.
	probe, err := s.ns.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return false
	}
	defer unix.Close(probe)
	err = unix.Connect(probe, &unix.SockaddrUnix{Name: "/proc/self/fd/" + strconv.Itoa(pfd)})
	return errors.Is(err, unix.ECONNREFUSED)
}

// callerIDs returns the file-system uid and gid of the caller when they
// are the sandbox's, else the sandbox's root.
func (s *Supervisor) callerIDs(c *Caller) (int, int) {
	uid, gid, err := fsIDs(int(c.n.Pid))
	if s.cfg.IDs == 0 {
		if err != nil {
			return os.Getuid(), os.Getgid()
		}
		return uid, gid
	}
	in := func(id int) bool { return id >= s.cfg.HostUID && id < s.cfg.HostUID+s.cfg.IDs }
	if err != nil || !c.Valid() || !in(uid) || !in(gid) {
		return s.cfg.HostUID, s.cfg.HostUID
	}
	return uid, gid
}

// fsIDs reads the file-system uid and gid of a thread.
func fsIDs(tid int) (int, int, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(tid) + "/status")
	if err != nil {
		return 0, 0, err
	}
	field := func(name string) (int, error) {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, name); ok {
				if f := strings.Fields(v); len(f) == 4 {
					return strconv.Atoi(f[3])
				}
			}
		}
		return 0, fmt.Errorf("no %s in status", name)
	}
	uid, err := field("Uid:")
	if err != nil {
		return 0, 0, err
	}
	gid, err := field("Gid:")
	return uid, gid, err
}

// isParent reports whether cid reaches the parent: VMADDR_CID_PARENT (3),
// where Nitro enclaves reach their parent, and VMADDR_CID_HOST (2), its
// alias in Cloister's microVM world.
func isParent(cid uint32) bool { return cid == CIDParent || cid == CIDHost }

// sysConnect emulates connect on an emulated socket (vsock_connect): an
// address error or a listening socket is EINVAL, a connected one EISCONN,
// one whose connect still waits EALREADY; an unbound socket is bound to an
// ephemeral port first. Only the parent (CID 3, or 2) can be reached: the
// socket is connected to the parent's listener for the port (hybrid
// vsock, D/host/vsock_<port>). Nobody listening there, or any other CID,
// is ECONNRESET, as the reset a Nitro enclave (virtio-vsock) gets. A Unix
// connect completes at once unless the parent's backlog is full: a
// non-blocking connect then fails with EAGAIN, a blocking one waits (see
// connectParent) at most the socket's connect timeout
// (SO_VM_SOCKETS_CONNECT_TIMEOUT) and fails with ETIMEDOUT, as
// vsock_connect does.
func (s *Supervisor) sysConnect(ctx context.Context, c *Caller, n *Notification, fd int, v *vsock) answer {
	raw, err := readSockaddr(c, n.Args[1], n.Args[2])
	if err != nil {
		return s.errAnswer("connect", err)
	}
	v.mu.Lock()
	if v.replays(n.Pid, n.Nr, raw, false) {
		defer v.mu.Unlock()
		return v.succeeded(n.Pid, n.Nr, raw)
	}
	switch v.state {
	case stateConnected:
		v.mu.Unlock()
		return fail(unix.EISCONN)
	case stateConnecting:
		v.mu.Unlock()
		return fail(unix.EALREADY)
	case stateDisconnect, stateListening:
		v.mu.Unlock()
		return fail(unix.EINVAL)
	}
	sa, err := ParseSockaddrVM(raw)
	if err != nil {
		v.mu.Unlock()
		return fail(unix.EINVAL)
	}
	if !v.bound {
		p, ok := s.table.ephemeral(v)
		if !ok {
			v.mu.Unlock()
			return fail(unix.EADDRNOTAVAIL)
		}
		v.bound, v.state = true, stateBound
		v.local = NewSockaddrVM(CIDAny, p)
	}
	if !isParent(sa.CID) {
		v.mu.Unlock()
		return fail(unix.ECONNRESET)
	}
	// The socket's lock is not held while the connect waits, so that
	// the sandbox's other calls on it (answered on the receiving
	// goroutine) never wait for it.
	prev := v.state
	timeout := time.Duration(min(v.connectTimeoutMS, math.MaxInt64/int64(time.Millisecond))) * time.Millisecond
	v.state = stateConnecting
	v.mu.Unlock()
	err = s.connectParent(ctx, c, fd, sa.Port, timeout)
	v.mu.Lock()
	defer v.mu.Unlock()
	if err == nil {
		v.state, v.remote = stateConnected, sa
		return v.succeeded(n.Pid, n.Nr, raw)
	}
	v.state = prev
	switch {
	case errors.Is(err, ErrGone):
		return s.gone()
	case errors.Is(err, context.Canceled):
		return done // the supervisor stops; closing its listener ends the call
	}
	var e unix.Errno
	if errors.As(err, &e) && (e == unix.EAGAIN || e == unix.ETIMEDOUT || e == unix.ENOBUFS) {
		return fail(e)
	}
	s.log.Debug("unotify: connect to the parent refused", "port", sa.Port, "err", err)
	return fail(unix.ECONNRESET)
}

// connectParent connects fd to the parent's listener for port. A
// blocking Unix connect to a listener whose queue is full sleeps in the
// kernel until the parent accepts, for as long as that takes, and
// nothing the sandbox does (a signal, its death) would end it: every such
// connect would keep one of this process's OS threads and its handler,
// and the supervisor could never stop. So a blocking connect waits in
// steps of validPoll (SO_SNDTIMEO bounds unix_stream_connect's wait; the
// socket's own value is put back afterwards), checks between steps that
// its caller still waits and that the supervisor runs, and gives up with
// ETIMEDOUT after timeout. At most MaxInFlight-waitReserve calls wait at
// once (with blocking accepts); beyond that a connect that would wait
// fails with ENOBUFS.
func (s *Supervisor) connectParent(ctx context.Context, c *Caller, fd int, port uint32, timeout time.Duration) error {
	// Through the directory's descriptor: the path stays short whatever
	// the daemon's state directory is.
	sa := &unix.SockaddrUnix{Name: "/proc/self/fd/" + strconv.Itoa(s.parentDir) + "/" + wellknown.VsockSocketName(port)}
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return err
	}
	blocking := fl&unix.O_NONBLOCK == 0
	var deadline time.Time
	if blocking {
		old, err := unix.GetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO)
		if err != nil {
			return err
		}
		step := unix.NsecToTimeval(validPoll.Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &step); err != nil {
			return err
		}
		defer func() { _ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, old) }()
		deadline = time.Now().Add(timeout)
	}
	waiting := false
	defer func() {
		if waiting {
			s.waiting.Add(-1)
		}
	}()
	// A Unix connect records the connecting thread's credentials as the
	// peer's (SO_PEERCRED): the parent's listener must see the sandbox's
	// ids, as for a connect the enclave makes itself, never root's.
	uid, gid := s.callerIDs(c)
	restore, err := effectiveIDs(uid, gid)
	if err != nil {
		return err
	}
	defer restore()
	for {
		err := unix.Connect(fd, sa)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case !errors.Is(err, unix.EAGAIN) || !blocking:
			return err
		}
		if !waiting {
			if s.waiting.Add(1) > s.maxWaiting {
				s.waiting.Add(-1)
				s.refused.Add(1)
				return unix.ENOBUFS
			}
			waiting = true
		}
		switch {
		case !c.Valid():
			return ErrGone
		case ctx.Err() != nil:
			return ctx.Err()
		case !time.Now().Before(deadline):
			return unix.ETIMEDOUT
		}
	}
}

// sysListen emulates listen (vsock_listen): an unbound or connected
// socket is EINVAL.
func (s *Supervisor) sysListen(c *Caller, n *Notification, fd int, v *vsock) answer {
	v.mu.Lock()
	defer v.mu.Unlock()
	if !v.bound || (v.state != stateBound && v.state != stateListening) {
		return fail(unix.EINVAL)
	}
	if !v.hasFile {
		// Bound by a connect that failed: the port has no listener
		// socket file yet.
		if err := s.bindListener(c, fd, v.local.Port); err != nil {
			return s.errAnswer("listen", err)
		}
		v.hasFile = true
	}
	backlog := int32(n.Args[1])
	if err := unix.Listen(fd, int(backlog)); err != nil {
		return s.errAnswer("listen", err)
	}
	v.state = stateListening
	return ret(0)
}

// sysGetname emulates getsockname and getpeername (vsock_getname): the
// local address (VMADDR_CID_ANY and VMADDR_PORT_ANY until bound), or the
// peer's as given to connect (ENOTCONN unless connected).
func (s *Supervisor) sysGetname(c *Caller, n *Notification, v *vsock) answer {
	v.mu.Lock()
	sa := v.local
	if n.Nr == unix.SYS_GETPEERNAME {
		if v.state != stateConnected {
			v.mu.Unlock()
			return fail(unix.ENOTCONN)
		}
		sa = v.remote
	}
	v.mu.Unlock()
	if err := writeSockaddr(c, sa.Bytes(), n.Args[1], n.Args[2]); err != nil {
		return s.errAnswer("getsockname", err)
	}
	return ret(0)
}

// sysShutdown emulates shutdown (vsock_shutdown): how outside 0…2 is
// EINVAL, a socket that is not connected ENOTCONN.
func (s *Supervisor) sysShutdown(n *Notification, fd int, v *vsock) answer {
	how := int32(n.Args[1])
	if how < unix.SHUT_RD || how > unix.SHUT_RDWR {
		return fail(unix.EINVAL)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.state != stateConnected && v.state != stateDisconnect {
		return fail(unix.ENOTCONN)
	}
	if err := unix.Shutdown(fd, int(how)); err != nil && !errors.Is(err, unix.ENOTCONN) {
		return s.errAnswer("shutdown", err)
	}
	v.state = stateDisconnect
	return ret(0)
}

// AF_VSOCK socket options (linux/vm_sockets.h).
const (
	soVMBufferSize        = 0
	soVMBufferMinSize     = 1
	soVMBufferMaxSize     = 2
	soVMConnectTimeoutOld = 6
	soVMConnectTimeoutNew = 8
	// virtioMaxBufSize is VIRTIO_VSOCK_MAX_BUF_SIZE, the bound the
	// transport puts on a connected socket's buffer size.
	virtioMaxBufSize = 0xFFFFFFFF
	// hz is the tick the emulated connect timeout is kept in (CONFIG_HZ
	// of the enclave kernel; Linux rounds the timeout to ticks).
	hz = 1000
)

// sysGetsockopt emulates getsockopt at level AF_VSOCK
// (vsock_connectible_getsockopt) and SO_DOMAIN, which is AF_VSOCK.
func (s *Supervisor) sysGetsockopt(c *Caller, n *Notification, v *vsock) answer {
	level, opt := int32(n.Args[1]), int32(n.Args[2])
	optval, optlen := n.Args[3], n.Args[4]
	var lb [4]byte
	if err := c.ReadAt(lb[:], optlen); err != nil {
		return s.errAnswer("getsockopt", err)
	}
	l := int32(binary.NativeEndian.Uint32(lb[:]))
	var val []byte
	if level == unix.SOL_SOCKET {
		// sock_getsockopt: a negative length is EINVAL, a short one
		// truncates.
		if l < 0 {
			return fail(unix.EINVAL)
		}
		val = binary.NativeEndian.AppendUint32(nil, AFVsock)
		if int(l) < len(val) {
			val = val[:l]
		}
	} else {
		v.mu.Lock()
		switch opt {
		case soVMBufferSize:
			val = binary.NativeEndian.AppendUint64(nil, v.bufSize)
		case soVMBufferMinSize:
			val = binary.NativeEndian.AppendUint64(nil, v.bufMin)
		case soVMBufferMaxSize:
			val = binary.NativeEndian.AppendUint64(nil, v.bufMax)
		case soVMConnectTimeoutOld, soVMConnectTimeoutNew:
			// struct __kernel_old_timeval and __kernel_sock_timeval
			// are both two 64-bit fields on 64-bit ABIs.
			ms := v.connectTimeoutMS
			val = binary.NativeEndian.AppendUint64(nil, uint64(ms/1000))
			val = binary.NativeEndian.AppendUint64(val, uint64(ms%1000*1000))
		default:
			v.mu.Unlock()
			return fail(unix.ENOPROTOOPT)
		}
		v.mu.Unlock()
		if int(l) < len(val) {
			return fail(unix.EINVAL)
		}
	}
	if err := c.WriteAt(val, optval); err != nil {
		return s.errAnswer("getsockopt", err)
	}
	binary.NativeEndian.PutUint32(lb[:], uint32(len(val)))
	if err := c.WriteAt(lb[:], optlen); err != nil {
		return s.errAnswer("getsockopt", err)
	}
	return ret(0)
}

// sysSetsockopt emulates setsockopt at level AF_VSOCK
// (vsock_connectible_setsockopt): buffer sizes (clamped to min and max),
// the connect timeout (kept, although a Unix connect never waits for it).
func (s *Supervisor) sysSetsockopt(c *Caller, n *Notification, v *vsock) answer {
	opt, optval, optlen := int32(n.Args[2]), n.Args[3], int32(n.Args[4])
	if optlen < 0 {
		return fail(unix.EINVAL)
	}
	read := func(size int) ([]byte, answer, bool) {
		if int(optlen) < size {
			return nil, fail(unix.EINVAL), false
		}
		b := make([]byte, size)
		if err := c.ReadAt(b, optval); err != nil {
			return nil, s.errAnswer("setsockopt", err), false
		}
		return b, answer{}, true
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	switch opt {
	case soVMBufferSize, soVMBufferMinSize, soVMBufferMaxSize:
		b, a, ok := read(8)
		if !ok {
			return a
		}
		val := binary.NativeEndian.Uint64(b)
		switch opt {
		case soVMBufferMaxSize:
			v.bufMax, val = val, v.bufSize
		case soVMBufferMinSize:
			v.bufMin, val = val, v.bufSize
		}
		val = min(val, v.bufMax)
		val = max(val, v.bufMin)
		if val != v.bufSize && v.state == stateConnected {
			val = min(val, virtioMaxBufSize)
		}
		v.bufSize = val
	case soVMConnectTimeoutOld, soVMConnectTimeoutNew:
		b, a, ok := read(16)
		if !ok {
			return a
		}
		sec, usec := int64(binary.NativeEndian.Uint64(b)), int64(binary.NativeEndian.Uint64(b[8:]))
		if sec < 0 || usec >= 1_000_000 || sec >= math.MaxInt64/hz-1 {
			return fail(unix.ERANGE)
		}
		ms := sec*1000 + (usec+999)/1000
		if ms == 0 {
			ms = defaultConnectTimeoutMS
		}
		v.connectTimeoutMS = ms
	default:
		return fail(unix.ENOPROTOOPT)
	}
	return ret(0)
}

// sysAccept emulates accept and accept4 on an emulated listener
// (vsock_accept): a socket that does not listen is EINVAL; otherwise the
// next connection from the parent is accepted, its hybrid marker read
// (a handed-off socket or the connection itself, see internal/hybrid),
// and the stream installed in the caller with the flags asked for, its
// address reported as (3, the listener's port) like the SDK's listeners
// (hybrid vsock carries no source port). A non-blocking listener with no
// connection is EAGAIN; a blocking one waits, until a connection comes or
// the caller is interrupted. Connections that send a bad marker are
// dropped.
func (s *Supervisor) sysAccept(ctx context.Context, c *Caller, n *Notification, fd int, v *vsock, flags int32) answer {
	v.mu.Lock()
	listening, port := v.state == stateListening, v.local.Port
	v.mu.Unlock()
	if !listening {
		return fail(unix.EINVAL)
	}
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return s.errAnswer("accept", err)
	}
	nonblock := fl&unix.O_NONBLOCK != 0
	for {
		if !s.room() {
			s.refused.Add(1)
			return fail(unix.EMFILE)
		}
		conn, err := s.acceptOne(fd, v)
		switch {
		case errors.Is(err, unix.EAGAIN) && nonblock:
			return fail(unix.EAGAIN)
		case errors.Is(err, unix.EAGAIN):
			if a, ok := s.waitReadable(ctx, c, fd); !ok {
				return a
			}
			continue
		case err != nil:
			return s.errAnswer("accept", err)
		}
		stream, err := readMarker(conn)
		if err != nil {
			s.log.Debug("unotify: dropped a connection with a bad marker", "port", port, "err", err)
			continue
		}
		return s.deliver(c, n, v, stream, port, flags)
	}
}

// acceptOne accepts a pending connection on the listener without ever
// blocking: EAGAIN when none is pending.
func (s *Supervisor) acceptOne(fd int, v *vsock) (int, error) {
	v.acceptMu.Lock()
	defer v.acceptMu.Unlock()
	p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	if n, err := unix.Poll(p, 0); err != nil || n == 0 || p[0].Revents&unix.POLLIN == 0 {
		return -1, unix.EAGAIN
	}
	for {
		nfd, _, err := unix.Accept4(fd, unix.SOCK_CLOEXEC)
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.ECONNABORTED) {
			continue
		}
		return nfd, err
	}
}

// waitReadable waits until the listener has a pending connection; ok is
// false (with the answer) when the caller went away or the supervisor
// stops meanwhile.
func (s *Supervisor) waitReadable(ctx context.Context, c *Caller, fd int) (answer, bool) {
	if s.waiting.Add(1) > s.maxWaiting {
		s.waiting.Add(-1)
		s.refused.Add(1)
		return fail(unix.ENOBUFS), false
	}
	defer s.waiting.Add(-1)
	ready, cancel, err := s.waiter.wait(fd)
	if err != nil {
		return s.errAnswer("accept: epoll", err), false
	}
	defer cancel()
	t := time.NewTicker(validPoll)
	defer t.Stop()
	for {
		select {
		case <-ready:
			return answer{}, true
		case <-ctx.Done():
			return done, false
		case <-t.C:
			if !c.Valid() {
				return s.gone(), false
			}
		}
	}
}

// readMarker reads the hybrid marker of a connection accepted on an
// emulated listener and returns the stream: the connection itself after
// 'R', or the socket passed with 'F' (the connection is then closed). It
// takes ownership of conn.
func readMarker(conn int) (int, error) {
	keep := false
	defer func() {
		if !keep {
			unix.Close(conn)
		}
	}()
	p := []unix.PollFd{{Fd: int32(conn), Events: unix.POLLIN}}
	deadline := time.Now().Add(markerTimeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return -1, errors.New("no marker")
		}
		n, err := unix.Poll(p, int(left.Milliseconds())+1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return -1, err
		}
		if n > 0 {
			break
		}
	}
	b := make([]byte, 1)
	oob := make([]byte, unix.CmsgSpace(4*4))
	nr, oobn, fl, _, err := unix.Recvmsg(conn, b, oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		return -1, err
	}
	var fds []int
	if oobn > 0 {
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err == nil {
			for _, m := range msgs {
				if r, err := unix.ParseUnixRights(&m); err == nil {
					fds = append(fds, r...)
				}
			}
		}
	}
	bad := func(why string) (int, error) {
		for _, f := range fds {
			unix.Close(f)
		}
		return -1, errors.New(why)
	}
	if nr != 1 || fl&unix.MSG_CTRUNC != 0 {
		return bad("no marker")
	}
	switch {
	case b[0] == hybrid.MarkerRelay && len(fds) == 0:
		keep = true
		return conn, nil
	case b[0] == hybrid.MarkerHandoff && len(fds) == 1:
		// The handed-off descriptor must be a connected stream socket.
		t, err := unix.GetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_TYPE)
		if err != nil || t != unix.SOCK_STREAM {
			return bad("handed-off descriptor is not a stream socket")
		}
		if _, err := unix.Getpeername(fds[0]); err != nil {
			return bad("handed-off socket is not connected")
		}
		return fds[0], nil
	}
	return bad(fmt.Sprintf("marker %q with %d descriptors", b[0], len(fds)))
}

// deliver installs an accepted stream in the caller as the result of
// accept: the address is written first (a fault drops the connection, as
// Linux does), then the descriptor is installed and the call answered in
// one step. If the caller went away meanwhile, the connection is put back
// in the listener's queue.
func (s *Supervisor) deliver(c *Caller, n *Notification, listener *vsock, stream int, port uint32, flags int32) answer {
	defer unix.Close(stream)
	fl, err := unix.FcntlInt(uintptr(stream), unix.F_GETFL, 0)
	if err == nil {
		if flags&unix.SOCK_NONBLOCK != 0 {
			fl |= unix.O_NONBLOCK
		} else {
			fl &^= unix.O_NONBLOCK
		}
		_, err = unix.FcntlInt(uintptr(stream), unix.F_SETFL, fl)
	}
	if err != nil {
		return s.errAnswer("accept", err)
	}
	v, err := s.register(stream, true, func(v *vsock) {
		v.state = stateConnected
		v.local = NewSockaddrVM(s.cfg.CID, port)
		v.remote = NewSockaddrVM(CIDParent, port)
	})
	if err != nil {
		return s.errAnswer("accept", err)
	}
	if n.Args[1] != 0 {
		if err := writeSockaddr(c, v.remote.Bytes(), n.Args[1], n.Args[2]); err != nil {
			s.table.remove(v)
			return s.errAnswer("accept", err)
		}
	}
	_, err = s.l.AddFD(n.ID, stream, flags&unix.SOCK_CLOEXEC != 0, true)
	if err == nil {
		return done
	}
	s.table.remove(v)
	if errors.Is(err, ErrGone) || errors.As(err, new(unix.Errno)) {
		// The caller was interrupted (or cannot take a descriptor):
		// requeue the connection for the next accept.
		if rerr := s.requeue(port, stream); rerr != nil {
			s.log.Debug("unotify: could not requeue a connection", "port", port, "err", rerr)
		}
	}
	return s.errAnswer("accept", err)
}

// requeue hands stream back to the emulated listener for port, through
// its socket file, with the handoff marker.
func (s *Supervisor) requeue(port uint32, stream int) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	g, err := (hybrid.UnixConnector{Root: s.cfg.GuestDir}).Dial(ctx, port)
	if err != nil {
		return err
	}
	defer g.Close()
	if err := g.SetWriteDeadline(time.Now().Add(time.Second)); err != nil {
		return err
	}
	_, _, err = g.WriteMsgUnix([]byte{hybrid.MarkerHandoff}, unix.UnixRights(stream), nil)
	return err
}

// effectiveIDs locks the calling goroutine to its OS thread and sets that
// thread's effective uid and gid (and so its file-system ids) to uid and
// gid, for system calls that record or check the caller's credentials;
// restore puts the process's ids back and unlocks the thread. The other
// threads keep theirs (raw setresuid/setresgid act on one thread, unlike
// syscall.Setresuid). It does nothing when the ids are already those.
// Should restoring fail (it cannot while the real and saved ids are the
// process's), the thread is parked for good rather than returned to the
// runtime or ended: an ended thread of the monitor may be the one that
// started the sandbox, whose death signal would kill it.
func effectiveIDs(uid, gid int) (restore func(), err error) {
	euid, egid := os.Geteuid(), os.Getegid()
	if uid == euid && gid == egid {
		return func() {}, nil
	}
	runtime.LockOSThread()
	set := func(nr uintptr, id int) error {
		if _, _, e := unix.RawSyscall(nr, ^uintptr(0), uintptr(id), ^uintptr(0)); e != 0 {
			return e
		}
		return nil
	}
	park := func() {
		for {
			time.Sleep(time.Hour)
		}
	}
	if err := set(unix.SYS_SETRESGID, gid); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("unotify: set the thread's effective gid to %d: %w", gid, err)
	}
	if err := set(unix.SYS_SETRESUID, uid); err != nil {
		if set(unix.SYS_SETRESGID, egid) != nil {
			park()
		}
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("unotify: set the thread's effective uid to %d: %w", uid, err)
	}
	return func() {
		if set(unix.SYS_SETRESUID, euid) != nil || set(unix.SYS_SETRESGID, egid) != nil {
			park()
		}
		runtime.UnlockOSThread()
	}, nil
}
