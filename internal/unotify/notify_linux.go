//go:build linux

package unotify

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Kernel structures of linux/seccomp.h, as the kernel lays them out on
// every 64-bit ABI.
type (
	seccompData struct {
		Nr   int32
		Arch uint32
		IP   uint64
		Args [6]uint64
	}
	seccompNotif struct {
		ID    uint64
		Pid   uint32
		Flags uint32
		Data  seccompData
	}
	seccompNotifResp struct {
		ID    uint64
		Val   int64
		Error int32
		Flags uint32
	}
	seccompNotifAddfd struct {
		ID         uint64
		Flags      uint32
		Srcfd      uint32
		Newfd      uint32
		NewfdFlags uint32
	}
	seccompNotifSizes struct {
		Notif     uint16
		NotifResp uint16
		Data      uint16
	}
)

// Notification is one system call a filter handed to the supervisor.
type Notification struct {
	// ID names the notification in every answer; it is valid until the
	// call is answered or the caller is interrupted or dies.
	ID uint64
	// Pid is the calling thread's id in the supervisor's PID namespace.
	Pid uint32
	// Nr, Arch and Args are the call as the filter saw it (seccomp_data).
	Nr   int32
	Arch uint32
	Args [6]uint64
}

// Listener receives and answers the notifications of one filter (the
// descriptor seccomp.InstallListener returned). Its methods are safe for
// concurrent use; Receive must be called from one goroutine at a time.
type Listener struct {
	fd       int
	respSize int
	closed   atomic.Bool
	// wake interrupts a blocked Receive (an eventfd polled with fd).
	wake int

	// recvMu is held by Receive for its whole call, so Close closes the
	// descriptors only once no Receive uses them.
	recvMu  sync.Mutex
	recvBuf []byte

	tidMu   sync.Mutex
	recvTID int // the thread blocked in NOTIF_RECV, or 0

	// fdMu is held (read) around every answer and check, and (write) by
	// Close while it closes fd, so no ioctl ever reaches a reused number.
	fdMu sync.RWMutex
}

// ioctl runs one listener ioctl unless the listener is closed.
func (l *Listener) ioctl(req uint, arg unsafe.Pointer) (uintptr, unix.Errno, error) {
	l.fdMu.RLock()
	defer l.fdMu.RUnlock()
	if l.closed.Load() {
		return 0, 0, ErrClosed
	}
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(l.fd), uintptr(req), uintptr(arg))
	return r, e, nil
}

// NewListener takes ownership of fd, a seccomp user-notification
// listener. It asks the kernel for the sizes of its notification
// structures (SECCOMP_GET_NOTIF_SIZES), so that a newer kernel's larger
// structures are received whole.
func NewListener(fd int) (*Listener, error) {
	var sizes seccompNotifSizes
	if _, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_GET_NOTIF_SIZES, 0, uintptr(unsafe.Pointer(&sizes))); e != 0 {
		return nil, fmt.Errorf("%w: seccomp(GET_NOTIF_SIZES): %w", ErrListener, e)
	}
	if int(sizes.Notif) < int(unsafe.Sizeof(seccompNotif{})) || int(sizes.NotifResp) < int(unsafe.Sizeof(seccompNotifResp{})) || sizes.Notif > 4096 || sizes.NotifResp > 4096 {
		return nil, fmt.Errorf("%w: the kernel's notification sizes %+v are not usable", ErrListener, sizes)
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("%w: eventfd: %w", ErrListener, err)
	}
	return &Listener{fd: fd, wake: wake, recvBuf: make([]byte, sizes.Notif), respSize: int(sizes.NotifResp)}, nil
}

// Receive waits for the next notification. It returns [ErrClosed] once
// Close was called, and [ErrNoTasks] once no task uses the filter any more
// (every process of the sandbox is gone). A notification withdrawn while
// it was being received (its caller was interrupted) is skipped.
func (l *Listener) Receive() (*Notification, error) {
	// The thread is kept for the call, so Close can interrupt a receive
	// that waits in the kernel (see Close).
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	l.recvMu.Lock()
	defer l.recvMu.Unlock()
	for {
		if l.closed.Load() {
			return nil, ErrClosed
		}
		fds := []unix.PollFd{{Fd: int32(l.fd), Events: unix.POLLIN}, {Fd: int32(l.wake), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, -1); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return nil, fmt.Errorf("%w: poll: %w", ErrListener, err)
		}
		if fds[1].Revents != 0 || l.closed.Load() {
			return nil, ErrClosed
		}
		if fds[0].Revents&unix.POLLIN == 0 {
			if fds[0].Revents&(unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0 {
				return nil, ErrNoTasks
			}
			continue
		}
		clear(l.recvBuf)
		l.tidMu.Lock()
		l.recvTID = unix.Gettid()
		l.tidMu.Unlock()
		// A notification seen by poll may be withdrawn before this
		// receives it; RECV then waits for the next one (Close
		// interrupts it with a signal).
		_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(l.fd), unix.SECCOMP_IOCTL_NOTIF_RECV, uintptr(unsafe.Pointer(&l.recvBuf[0])))
		l.tidMu.Lock()
		l.recvTID = 0
		l.tidMu.Unlock()
		switch e {
		case 0:
			n := *(*seccompNotif)(unsafe.Pointer(&l.recvBuf[0]))
			return &Notification{ID: n.ID, Pid: n.Pid, Nr: n.Data.Nr, Arch: n.Data.Arch, Args: n.Data.Args}, nil
		case unix.EINTR, unix.ENOENT:
			// Interrupted (Close, or a signal), or the notification was
			// withdrawn between poll and receive.
			continue
		}
		if l.closed.Load() {
			return nil, ErrClosed
		}
		return nil, fmt.Errorf("%w: NOTIF_RECV: %w", ErrListener, e)
	}
}

// send answers id with resp.
func (l *Listener) send(resp seccompNotifResp) error {
	buf := make([]byte, l.respSize)
	*(*seccompNotifResp)(unsafe.Pointer(&buf[0])) = resp
	_, e, err := l.ioctl(unix.SECCOMP_IOCTL_NOTIF_SEND, unsafe.Pointer(&buf[0]))
	if err != nil {
		return err
	}
	if e != 0 {
		if e == unix.ENOENT {
			return ErrGone
		}
		return fmt.Errorf("%w: NOTIF_SEND: %w", ErrListener, e)
	}
	return nil
}

// Return answers id: the call returns val.
func (l *Listener) Return(id uint64, val int64) error {
	return l.send(seccompNotifResp{ID: id, Val: val})
}

// Fail answers id: the call fails with errno (which must not be 0).
func (l *Listener) Fail(id uint64, errno syscall.Errno) error {
	if errno == 0 {
		return fmt.Errorf("%w: an error answer without an errno", ErrListener)
	}
	return l.send(seccompNotifResp{ID: id, Error: -int32(errno)})
}

// Continue answers id by letting the call run in the kernel as if the
// filter had allowed it (SECCOMP_USER_NOTIF_FLAG_CONTINUE). The kernel
// reads the call's arguments again, after this decision: use it only for
// calls whose outcome does not depend on what was inspected (see the
// package documentation).
func (l *Listener) Continue(id uint64) error {
	return l.send(seccompNotifResp{ID: id, Flags: unix.SECCOMP_USER_NOTIF_FLAG_CONTINUE})
}

// AddFD installs a duplicate of fd in the caller's descriptor table (close-
// on-exec when cloexec) and returns its number there. With send, the call
// is answered with that number in the same step (SECCOMP_ADDFD_FLAG_SEND):
// either the caller gets the descriptor as its return value, or the
// descriptor is not installed at all.
func (l *Listener) AddFD(id uint64, fd int, cloexec, send bool) (int, error) {
	a := seccompNotifAddfd{ID: id, Srcfd: uint32(fd)}
	if cloexec {
		a.NewfdFlags = unix.O_CLOEXEC
	}
	if send {
		a.Flags = unix.SECCOMP_ADDFD_FLAG_SEND
	}
	r, e, err := l.ioctl(unix.SECCOMP_IOCTL_NOTIF_ADDFD, unsafe.Pointer(&a))
	if err != nil {
		return -1, err
	}
	if e != 0 {
		if e == unix.ENOENT {
			return -1, ErrGone
		}
		// EMFILE and friends are the caller's limits: report them as
		// the errno the caller should see.
		return -1, e
	}
	return int(r), nil
}

// Valid reports whether notification id still waits for its answer
// (SECCOMP_IOCTL_NOTIF_ID_VALID): false once the caller was interrupted or
// died, so that a pid read before cannot have been reused by another
// process while id is valid.
func (l *Listener) Valid(id uint64) bool {
	_, e, err := l.ioctl(unix.SECCOMP_IOCTL_NOTIF_ID_VALID, unsafe.Pointer(&id))
	return err == nil && e == 0
}

// Close stops Receive and closes the listener. Calls the filter still
// notifies then fail with ENOSYS; calls waiting for an answer fail as if
// interrupted.
func (l *Listener) Close() error {
	if l.closed.Swap(true) {
		return nil
	}
	one := [8]byte{1}
	_, _ = unix.Write(l.wake, one[:])
	// A receive blocked in the kernel (its notification withdrawn after
	// poll) is not woken by the eventfd: interrupt it (SIGURG, which the
	// Go runtime ignores) until Receive has returned.
	done := make(chan struct{})
	go func() {
		l.recvMu.Lock()
		close(done)
		l.recvMu.Unlock()
	}()
	for {
		select {
		case <-done:
			l.fdMu.Lock()
			defer l.fdMu.Unlock()
			unix.Close(l.wake)
			return unix.Close(l.fd)
		case <-time.After(time.Millisecond):
		}
		l.tidMu.Lock()
		if tid := l.recvTID; tid != 0 {
			_ = unix.Tgkill(unix.Getpid(), tid, unix.SIGURG)
		}
		l.tidMu.Unlock()
	}
}
