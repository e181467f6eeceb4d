//go:build linux

package unotify

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Memory reads and writes a caller's memory; [*Caller] implements it (and
// nsmdev.Memory, which has the same methods).
type Memory interface {
	ReadAt(p []byte, addr uint64) error
	WriteAt(p []byte, addr uint64) error
}

// NSMFunc performs ioctl(fd of /dev/nsm, cmd, arg) for a caller whose
// memory is mem and returns 0 or the errno of the call (nsmdev.Ioctl with
// the enclave's security module).
type NSMFunc func(ctx context.Context, mem Memory, cmd uint32, arg uint64) syscall.Errno

// Limiter paces notifications (*ratelimit.Bucket implements it).
type Limiter interface {
	Wait(ctx context.Context) (time.Duration, error)
}

// Limits of one supervisor (one sandbox). They bound what a sandbox can
// make the supervisor's process hold, outside the sandbox's cgroup.
const (
	// DefaultMaxInFlight bounds the notifications handled at once (one
	// goroutine each); further ones wait in the kernel, their callers
	// blocked, until a handler ends.
	DefaultMaxInFlight = 256
	// DefaultMaxSockets bounds the emulated sockets alive at once
	// (sockets made by socket(AF_VSOCK) and connections accepted on
	// emulated listeners). Beyond it socket fails with ENOBUFS and accept
	// with EMFILE (the connection stays queued).
	DefaultMaxSockets = 1024
	// waitReserve handlers are kept for calls that do not wait: at most
	// MaxInFlight-waitReserve handlers wait for a connection at once, and
	// a blocking accept beyond that fails with ENOBUFS.
	waitReserve = 16
	// validPoll is how often a waiting handler checks that its caller
	// still waits (a signal interrupts the call).
	validPoll = 100 * time.Millisecond
	// markerTimeout bounds reading the marker of one connection to an
	// emulated listener (hybrid.DefaultMarkerTimeout).
	markerTimeout = 5 * time.Second
	// gcInterval is the shortest time between two sweeps of dead sockets
	// out of a full table.
	gcInterval = 100 * time.Millisecond
)

// Config configures a [Supervisor].
type Config struct {
	// CID is the enclave's vsock context id (≥ 4).
	CID uint32
	// ParentDir is the directory of the parent's listeners for the
	// enclave, vsock_<port> (the sandbox's /run/cloister/vsock/host, the
	// daemon's D/host). It is the daemon's: nothing in it is the
	// enclave's. New opens it once (O_PATH) and connects through that
	// descriptor.
	ParentDir string
	// GuestDir is the enclave's listener directory (its
	// /run/cloister/vsock/guest), by descriptor: emulated listeners are
	// bound there as vsock_<port>, where the monitor's host connections
	// (hybrid handoff) reach them.
	GuestDir *os.File
	// NetNS makes the emulated sockets in the sandbox's network namespace
	// and binds listeners with the caller's ids; nil: this process's
	// namespace (tests), on a thread of the supervisor's own.
	NetNS *NetNS
	// HostUID and IDs: ids 0…IDs-1 inside the sandbox are HostUID+id on
	// the host. A listener's socket file gets the caller's file-system
	// ids when they are in that range (else the sandbox's root). IDs 0
	// means that ids are not mapped (tests): files get the caller's ids.
	HostUID, IDs int
	// NSMDevice and VsockDevice are the sandbox's /dev/nsm and /dev/vsock
	// (any descriptor of them, O_PATH is enough): their ioctls are
	// emulated for descriptors of exactly these files (same device, inode
	// and mount), others run as they are. nil: not emulated.
	NSMDevice, VsockDevice *os.File
	// NSM performs the /dev/nsm ioctl; nil fails it with ENODEV.
	NSM NSMFunc
	// MaxInFlight and MaxSockets: 0 means DefaultMaxInFlight and
	// DefaultMaxSockets.
	MaxInFlight, MaxSockets int
	// Limiter, when not nil, paces the notifications received.
	Limiter Limiter
	// Logger receives refused and failed calls at debug level and
	// supervisor failures at warn level; nil discards.
	Logger *slog.Logger
}

// fileID identifies an open file: device, inode and mount.
type fileID struct {
	dev, ino uint64
	mnt      uint64
}

func identify(fd int) (fileID, error) {
	var st unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_STATX_DONT_SYNC, unix.STATX_INO|unix.STATX_MNT_ID, &st); err != nil {
		return fileID{}, err
	}
	if st.Mask&unix.STATX_MNT_ID == 0 {
		return fileID{}, errors.New("no mount id (statx STATX_MNT_ID needs Linux 5.8)")
	}
	return fileID{dev: unix.Mkdev(st.Dev_major, st.Dev_minor), ino: st.Ino, mnt: st.Mnt_id}, nil
}

// Supervisor answers the notified calls of one sandbox (see the package
// documentation for what it emulates).
type Supervisor struct {
	cfg Config
	l   *Listener
	log *slog.Logger

	sem       chan struct{}
	wg        sync.WaitGroup
	parentDir int    // O_PATH descriptor of cfg.ParentDir
	ns        *NetNS // cfg.NetNS, or the supervisor's own
	ownNS     bool
	table     *table
	waiter    *waiter
	// diags ask the sandbox's and this process's namespaces whether a
	// socket still exists.
	sandboxDiag, hostDiag *diag
	// ifSock is a socket of the sandbox's network namespace on which
	// the network device ioctls are answered (see netdevIoctl).
	ifSock         int
	nsmID, vsockID *fileID
	maxWaiting     int64
	gcMu           sync.Mutex
	lastGC         time.Time

	notifications, continued, interrupted, nsmCalls atomic.Uint64
	inFlight, maxInFlight, waiting, refused         atomic.Int64
}

// New returns a supervisor for the notifications of l. It does not own l.
func New(l *Listener, cfg Config) (*Supervisor, error) {
	if err := CheckHost(); err != nil {
		return nil, err
	}
	if cfg.CID < 4 || cfg.CID == CIDAny {
		return nil, fmt.Errorf("unotify: enclave CID %d is outside 4…4294967294", cfg.CID)
	}
	if cfg.ParentDir == "" || cfg.GuestDir == nil {
		return nil, errors.New("unotify: the parent's and the enclave's listener directories are required")
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	if cfg.MaxInFlight <= waitReserve {
		return nil, fmt.Errorf("unotify: MaxInFlight %d must be over %d", cfg.MaxInFlight, waitReserve)
	}
	if cfg.MaxSockets <= 0 {
		cfg.MaxSockets = DefaultMaxSockets
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var seed [4]byte
	_, _ = rand.Read(seed[:])
	s := &Supervisor{
		cfg: cfg, l: l, log: log,
		sem:        make(chan struct{}, cfg.MaxInFlight),
		table:      newTable(binary.LittleEndian.Uint32(seed[:])),
		maxWaiting: int64(cfg.MaxInFlight - waitReserve),
	}
	for _, d := range []struct {
		f  *os.File
		id **fileID
	}{{cfg.NSMDevice, &s.nsmID}, {cfg.VsockDevice, &s.vsockID}} {
		if d.f == nil {
			continue
		}
		id, err := identify(int(d.f.Fd()))
		if err != nil {
			return nil, fmt.Errorf("unotify: identify %s: %w", d.f.Name(), err)
		}
		*d.id = &id
	}
	var err error
	if s.parentDir, err = unix.Open(cfg.ParentDir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err != nil {
		return nil, fmt.Errorf("unotify: the parent's listener directory: %w", err)
	}
	if s.ns = cfg.NetNS; s.ns == nil {
		if s.ns, err = EnterNetNS(-1); err != nil {
			unix.Close(s.parentDir)
			return nil, err
		}
		s.ownNS = true
	}
	if s.waiter, err = newWaiter(); err != nil {
		s.closeNS()
		return nil, fmt.Errorf("unotify: epoll: %w", err)
	}
	if s.sandboxDiag, err = newDiag(s.ns.Socket); err != nil {
		s.waiter.close()
		s.closeNS()
		return nil, err
	}
	if s.hostDiag, err = newDiag(func(d, t, p int) (int, error) { return unix.Socket(d, t|unix.SOCK_CLOEXEC, p) }); err != nil {
		s.waiter.close()
		s.sandboxDiag.close()
		s.closeNS()
		return nil, err
	}
	if s.ifSock, err = s.ns.Socket(unix.AF_UNIX, unix.SOCK_DGRAM, 0); err != nil {
		s.waiter.close()
		s.sandboxDiag.close()
		s.hostDiag.close()
		s.closeNS()
		return nil, fmt.Errorf("unotify: a socket of the sandbox's network namespace: %w", err)
	}
	return s, nil
}

// closeNS ends the supervisor's own namespace thread, if it made one, and
// closes the parent directory's descriptor.
func (s *Supervisor) closeNS() {
	if s.ownNS && s.ns != nil {
		s.ns.Close()
	}
	unix.Close(s.parentDir)
}

// Run receives and answers notifications until no task uses the filter
// any more, the listener is closed or ctx ends; it then waits for the
// handlers in flight (closing the listener ends those that wait) and
// releases what the supervisor holds. It returns nil in those cases.
func (s *Supervisor) Run(ctx context.Context) error {
	defer s.release()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { _ = s.l.Close() })
	defer stop()
	for {
		select {
		case s.sem <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		if s.cfg.Limiter != nil {
			if _, err := s.cfg.Limiter.Wait(ctx); err != nil {
				<-s.sem
				return nil
			}
		}
		n, err := s.l.Receive()
		if err != nil {
			<-s.sem
			if errors.Is(err, ErrClosed) || errors.Is(err, ErrNoTasks) {
				return nil
			}
			return err
		}
		s.notifications.Add(1)
		in := s.inFlight.Add(1)
		for m := s.maxInFlight.Load(); in > m && !s.maxInFlight.CompareAndSwap(m, in); m = s.maxInFlight.Load() {
		}
		// Calls that cannot wait are answered here, on the receiving
		// goroutine; those that may (accept, connect, /dev/nsm) get a
		// goroutine of their own.
		c := NewCaller(s.l, n)
		a := s.dispatch(ctx, c, n)
		if a.kind != answerSlow {
			s.finish(n, a)
			c.Close()
			s.inFlight.Add(-1)
			<-s.sem
			continue
		}
		s.wg.Add(1)
		go func() {
			defer func() {
				c.Close()
				s.inFlight.Add(-1)
				<-s.sem
				s.wg.Done()
			}()
			s.finish(n, a.slow())
		}()
	}
}

func (s *Supervisor) release() {
	s.wg.Wait()
	s.waiter.close()
	s.sandboxDiag.close()
	s.hostDiag.close()
	unix.Close(s.ifSock)
	s.closeNS()
}

// Stats returns the supervisor's counters.
func (s *Supervisor) Stats() Stats {
	return Stats{
		Notifications: s.notifications.Load(), Continued: s.continued.Load(),
		InFlight: s.inFlight.Load(), MaxInFlight: s.maxInFlight.Load(), Waiting: s.waiting.Load(),
		Sockets: s.table.len(), Refused: s.refused.Load(), Interrupted: s.interrupted.Load(), NSM: s.nsmCalls.Load(),
	}
}

// answer is how a handler ends a call.
type answer struct {
	kind  answerKind
	val   int64
	errno syscall.Errno
	slow  func() answer // answerSlow: the rest of the work, which may wait
	// lost, if set, runs when the answer cannot be given because the
	// caller was interrupted meanwhile (by a signal: the call is made
	// again if it restarts).
	lost func()
}

type answerKind int

const (
	answerContinue answerKind = iota // let the call run as it is
	answerReturn                     // return val
	answerFail                       // fail with errno
	answerDone                       // already answered (ADDFD with SEND) or gone
	answerSlow                       // run slow in a goroutine of its own for the answer
)

// later defers work that may wait to a goroutine of its own.
func later(f func() answer) answer { return answer{kind: answerSlow, slow: f} }

var (
	cont = answer{kind: answerContinue}
	done = answer{kind: answerDone}
)

func ret(v int64) answer          { return answer{kind: answerReturn, val: v} }
func fail(e syscall.Errno) answer { return answer{kind: answerFail, errno: e} }

// finish sends a handler's answer.
func (s *Supervisor) finish(n *Notification, a answer) {
	var err error
	switch a.kind {
	case answerContinue:
		s.continued.Add(1)
		err = s.l.Continue(n.ID)
	case answerReturn:
		err = s.l.Return(n.ID, a.val)
	case answerFail:
		err = s.l.Fail(n.ID, a.errno)
	case answerDone:
		return
	}
	if errors.Is(err, ErrGone) {
		s.interrupted.Add(1)
		if a.lost != nil {
			a.lost()
		}
	} else if err != nil && !errors.Is(err, ErrClosed) {
		s.log.Warn("unotify: answering a call failed", "nr", n.Nr, "pid", n.Pid, "err", err)
	}
}

// dispatch chooses the handler. socket(AF_VSOCK) is never continued: the
// filter notifies only that domain, and letting it run would create a
// real vsock socket.
func (s *Supervisor) dispatch(ctx context.Context, c *Caller, n *Notification) answer {
	switch n.Nr {
	case unix.SYS_SOCKET:
		return s.sysSocket(c, n)
	case unix.SYS_IOCTL:
		return s.sysIoctl(ctx, c, n)
	case unix.SYS_CONNECT, unix.SYS_BIND, unix.SYS_LISTEN, unix.SYS_ACCEPT, unix.SYS_ACCEPT4,
		unix.SYS_GETSOCKNAME, unix.SYS_GETPEERNAME, unix.SYS_SHUTDOWN, unix.SYS_GETSOCKOPT, unix.SYS_SETSOCKOPT:
		return s.sysOnSocket(ctx, c, n)
	}
	// The filter notifies nothing else; refuse what it might in a later
	// version, rather than run it.
	s.log.Warn("unotify: unexpected notified call", "nr", n.Nr)
	return fail(unix.ENOSYS)
}

// gone is the answer for a caller that went away (nothing to answer).
func (s *Supervisor) gone() answer {
	s.interrupted.Add(1)
	return done
}

// errAnswer turns an error of the caller's memory or descriptors into
// the answer: ErrGone ends the call, an errno fails it, anything else is
// the supervisor's own failure (EIO, logged).
func (s *Supervisor) errAnswer(op string, err error) answer {
	if errors.Is(err, ErrGone) {
		return s.gone()
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		return fail(e)
	}
	s.log.Warn("unotify: "+op+" failed", "err", err)
	return fail(unix.EIO)
}

// CheckHost reports whether this process can supervise a sandbox: the
// supervisor identifies the caller's descriptors with pidfd_getfd (Linux
// 5.6), and a process whose own seccomp filter refuses it (a container's:
// systemd-nspawn 252's default filter does) would let every ioctl and
// socket call run on the real file underneath, so that /dev/nsm answers
// as /dev/null. It fails with a wrapped ErrHost saying what to allow.
func CheckHost() error {
	pidfd, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		return fmt.Errorf("%w: pidfd_open: %v (Linux 5.3 or later, and a seccomp filter that allows it, are needed)", ErrHost, err)
	}
	defer unix.Close(pidfd)
	fd, err := unix.PidfdGetfd(pidfd, pidfd, 0)
	if err != nil {
		return fmt.Errorf("%w: pidfd_getfd: %v (Linux 5.6 or later is needed; in a container, allow pidfd_getfd in its seccomp filter, e.g. systemd-nspawn --system-call-filter=pidfd_getfd)", ErrHost, err)
	}
	unix.Close(fd)
	return nil
}
