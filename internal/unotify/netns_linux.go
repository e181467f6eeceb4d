//go:build linux

package unotify

import (
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// NetNS makes sockets in another network namespace, a sandbox's: it
// keeps one OS thread of this process in that namespace (setns(2) on a
// pidfd of a process inside it) and creates sockets there on request. A
// socket belongs to the namespace it was created in for its whole life,
// whoever holds it later.
type NetNS struct {
	req  chan nsRequest
	done chan struct{}
	// pool holds Unix stream sockets made ahead of need (blocking,
	// close-on-exec): socket(AF_VSOCK) is answered without waiting for
	// the namespace's thread.
	pool chan int
	// broken is set when AsIDs could not restore the thread's ids.
	broken atomic.Bool
}

// poolSize is how many Unix stream sockets NetNS keeps ready.
const poolSize = 16

type nsRequest struct {
	domain, typ, proto int
	// do, when set, is run instead of making a socket (see AsIDs).
	do    func() error
	reply chan nsReply
}

type nsReply struct {
	fd  int
	err error
}

// EnterNetNS starts the thread in the network namespace of the process
// pidfd refers to (pidfd -1: stay in this process's namespace). The
// caller needs CAP_SYS_ADMIN over that namespace.
//
// The thread stays locked to the namespace until Close, which moves it
// back to this process's namespace before handing it back to the
// runtime. The thread is never ended (unless it cannot be moved back): a
// child started with Pdeathsig, such as the sandbox's launcher, is killed
// when the thread that started it ends, and that may be this one.
func EnterNetNS(pidfd int) (*NetNS, error) {
	n := &NetNS{req: make(chan nsRequest), done: make(chan struct{}), pool: make(chan int, poolSize)}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if pidfd >= 0 {
			orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				runtime.UnlockOSThread()
				started <- fmt.Errorf("unotify: this thread's network namespace: %w", err)
				return
			}
			defer func() {
				// Back to this process's namespace, then to the runtime;
				// a thread that cannot go back stays locked and ends.
				if unix.Setns(orig, unix.CLONE_NEWNET) == nil && !n.broken.Load() {
					runtime.UnlockOSThread()
				}
				unix.Close(orig)
			}()
			if err := unix.Setns(pidfd, unix.CLONE_NEWNET); err != nil {
				started <- fmt.Errorf("unotify: enter the sandbox's network namespace: %w", err)
				return
			}
		} else {
			defer func() {
				if !n.broken.Load() {
					runtime.UnlockOSThread()
				}
			}()
		}
		started <- nil
		next := -1
		defer func() {
			if next >= 0 {
				unix.Close(next)
			}
		}()
		for {
			pool := n.pool
			if next < 0 {
				if fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err == nil {
					next = fd
				}
			}
			if next < 0 {
				pool = nil // cannot make one now: serve requests only
			}
			select {
			case pool <- next:
				next = -1
			case r := <-n.req:
				if r.do != nil {
					r.reply <- nsReply{-1, r.do()}
					continue
				}
				fd, err := unix.Socket(r.domain, r.typ|unix.SOCK_CLOEXEC, r.proto)
				r.reply <- nsReply{fd, err}
			case <-n.done:
				return
			}
		}
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return n, nil
}

// Socket creates a socket (close-on-exec) in the namespace.
func (n *NetNS) Socket(domain, typ, proto int) (int, error) {
	reply := make(chan nsReply, 1)
	select {
	case n.req <- nsRequest{domain: domain, typ: typ, proto: proto, reply: reply}:
	case <-n.done:
		return -1, ErrClosed
	}
	r := <-reply
	return r.fd, r.err
}

// AsIDs runs f on the namespace's thread with file-system ids uid and
// gid, without this process's privileges over files (a non-zero
// file-system uid drops CAP_DAC_OVERRIDE and friends), then restores the
// thread's ids. If they cannot be restored, later calls fail (the thread
// goes on making sockets, which does not depend on them; ending it could
// kill a sandbox started from it, see EnterNetNS).
func (n *NetNS) AsIDs(uid, gid int, f func() error) error {
	if n.broken.Load() {
		return errors.New("unotify: the namespace thread's file-system ids could not be restored")
	}
	var restored bool
	do := func() error {
		prevUID, _ := unix.SetfsuidRetUid(-1)
		prevGID, _ := unix.SetfsgidRetGid(-1)
		defer func() {
			_, _ = unix.SetfsuidRetUid(prevUID)
			_, _ = unix.SetfsgidRetGid(prevGID)
			u, _ := unix.SetfsuidRetUid(-1)
			g, _ := unix.SetfsgidRetGid(-1)
			restored = u == prevUID && g == prevGID
		}()
		_, _ = unix.SetfsgidRetGid(gid)
		_, _ = unix.SetfsuidRetUid(uid)
		// setfsuid reports failure only through the ids it returns.
		if cur, _ := unix.SetfsuidRetUid(-1); cur != uid {
			return fmt.Errorf("unotify: file-system uid is %d, not %d", cur, uid)
		}
		if cur, _ := unix.SetfsgidRetGid(-1); cur != gid {
			return fmt.Errorf("unotify: file-system gid is %d, not %d", cur, gid)
		}
		return f()
	}
	reply := make(chan nsReply, 1)
	select {
	case n.req <- nsRequest{do: do, reply: reply}:
	case <-n.done:
		return ErrClosed
	}
	r := <-reply
	if !restored {
		n.broken.Store(true)
	}
	return r.err
}

// UnixStream returns a Unix stream socket (close-on-exec, blocking) of
// the namespace, from the sockets made ahead when there is one.
func (n *NetNS) UnixStream() (int, error) {
	select {
	case fd := <-n.pool:
		return fd, nil
	default:
		return n.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	}
}

// Close ends the thread and closes the sockets made ahead.
func (n *NetNS) Close() {
	select {
	case <-n.done:
		return
	default:
		close(n.done)
	}
	for {
		select {
		case fd := <-n.pool:
			unix.Close(fd)
		default:
			return
		}
	}
}
