//go:build linux

package unotify

import (
	"fmt"
	"runtime"

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
}

type nsRequest struct {
	domain, typ, proto int
	reply              chan nsReply
}

type nsReply struct {
	fd  int
	err error
}

// EnterNetNS starts the thread in the network namespace of the process
// pidfd refers to. The caller needs CAP_SYS_ADMIN over that namespace.
func EnterNetNS(pidfd int) (*NetNS, error) {
	n := &NetNS{req: make(chan nsRequest), done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		// The thread is never unlocked: when this goroutine returns the
		// runtime ends the thread, so no other goroutine ever runs in
		// the sandbox's namespace.
		runtime.LockOSThread()
		if err := unix.Setns(pidfd, unix.CLONE_NEWNET); err != nil {
			started <- fmt.Errorf("unotify: enter the sandbox's network namespace: %w", err)
			return
		}
		started <- nil
		for {
			select {
			case r := <-n.req:
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
	case n.req <- nsRequest{domain, typ, proto, reply}:
	case <-n.done:
		return -1, ErrClosed
	}
	r := <-reply
	return r.fd, r.err
}

// Close ends the thread.
func (n *NetNS) Close() {
	select {
	case <-n.done:
	default:
		close(n.done)
	}
}
