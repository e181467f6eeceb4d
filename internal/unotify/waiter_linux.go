//go:build linux

package unotify

import (
	"errors"
	"sync"

	"golang.org/x/sys/unix"
)

// waiter tells handlers when a descriptor becomes readable, for many
// descriptors at once, without an OS thread per descriptor: one epoll
// instance and one goroutine. It serves blocking accepts on emulated
// listeners, whose descriptors the supervisor may not switch to
// non-blocking mode (the mode belongs to the sandbox's open file).
type waiter struct {
	ep   int
	stop int // eventfd that ends the loop

	mu    sync.Mutex
	ready map[int32]chan struct{}
	done  chan struct{}
}

func newWaiter() (*waiter, error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	stop, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(ep)
		return nil, err
	}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, stop, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: -1}); err != nil {
		unix.Close(ep)
		unix.Close(stop)
		return nil, err
	}
	w := &waiter{ep: ep, stop: stop, ready: make(map[int32]chan struct{}), done: make(chan struct{})}
	go w.loop()
	return w, nil
}

func (w *waiter) loop() {
	defer close(w.done)
	events := make([]unix.EpollEvent, 64)
	for {
		n, err := unix.EpollWait(w.ep, events, -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		w.mu.Lock()
		for _, ev := range events[:n] {
			if ev.Fd == -1 {
				w.mu.Unlock()
				return
			}
			if ch, ok := w.ready[ev.Fd]; ok {
				close(ch)
				delete(w.ready, ev.Fd)
			}
		}
		w.mu.Unlock()
	}
}

// wait returns a channel closed once fd is readable (or in error), and a
// function that stops watching fd; call it before closing fd.
func (w *waiter) wait(fd int) (<-chan struct{}, func(), error) {
	ch := make(chan struct{})
	w.mu.Lock()
	w.ready[int32(fd)] = ch
	w.mu.Unlock()
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLONESHOT, Fd: int32(fd)}
	if err := unix.EpollCtl(w.ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		w.mu.Lock()
		delete(w.ready, int32(fd))
		w.mu.Unlock()
		return nil, nil, err
	}
	return ch, func() {
		_ = unix.EpollCtl(w.ep, unix.EPOLL_CTL_DEL, fd, nil)
		w.mu.Lock()
		delete(w.ready, int32(fd))
		w.mu.Unlock()
	}, nil
}

func (w *waiter) close() {
	one := [8]byte{1}
	_, _ = unix.Write(w.stop, one[:])
	<-w.done
	unix.Close(w.ep)
	unix.Close(w.stop)
}
