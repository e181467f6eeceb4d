package shim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/cloister/cloister/internal/hybrid"
)

// ListenInNetNS listens on TCP port (all addresses) inside the network
// namespace at nsPath ("" for the shim's own). The socket is created by
// an OS thread switched into that namespace, which then switches back;
// the listener stays in the namespace it was created in.
func ListenInNetNS(nsPath string, port uint32) (net.Listener, error) {
	addr := ":" + strconv.FormatUint(uint64(port), 10)
	if nsPath == "" {
		return net.Listen("tcp", addr)
	}
	type result struct {
		ln  net.Listener
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		// The thread is unlocked only once it is back in its own
		// namespace; otherwise it ends with this goroutine.
		ln, restored, err := listenIn(nsPath, addr)
		if restored {
			runtime.UnlockOSThread()
		}
		ch <- result{ln, err}
	}()
	r := <-ch
	return r.ln, r.err
}

func listenIn(nsPath, addr string) (net.Listener, bool, error) {
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return nil, true, fmt.Errorf("shim: own network namespace: %w", err)
	}
	defer self.Close()
	target, err := os.Open(nsPath)
	if err != nil {
		return nil, true, fmt.Errorf("shim: network namespace %s: %w", nsPath, err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		return nil, true, fmt.Errorf("shim: enter network namespace %s: %w", nsPath, err)
	}
	ln, lerr := net.Listen("tcp", addr)
	restored := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET) == nil
	if lerr != nil {
		return nil, restored, fmt.Errorf("shim: listen on %s in %s: %w", addr, nsPath, lerr)
	}
	return ln, restored, nil
}

// Dialer opens a stream to an enclave's vsock port.
type Dialer func(ctx context.Context, port uint32) (net.Conn, error)

// Forwarder relays TCP connections accepted on its listeners to enclave
// vsock ports.
type Forwarder struct {
	log  *slog.Logger
	dial Dialer
	wg   sync.WaitGroup
	mu   sync.Mutex
	lns  []net.Listener
	done bool
}

// Publish listens on each port's TCP port in nsPath and relays to its
// vsock port. On error it closes what it opened.
func Publish(nsPath string, ports []Port, dial Dialer, log *slog.Logger) (*Forwarder, error) {
	f := &Forwarder{log: log, dial: dial}
	for _, p := range ports {
		ln, err := ListenInNetNS(nsPath, p.TCP)
		if err != nil {
			f.Close()
			return nil, err
		}
		f.lns = append(f.lns, ln)
		f.wg.Add(1)
		go f.serve(ln, p)
	}
	return f, nil
}

func (f *Forwarder) serve(ln net.Listener, p Port) {
	defer f.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				f.log.Error("shim: accept", "port", p.TCP, "err", err)
			}
			return
		}
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
			vc, err := f.dial(ctx, p.Vsock)
			cancel()
			if err != nil {
				f.log.Warn("shim: connect to the enclave", "tcp", p.TCP, "vsock", p.Vsock, "err", err)
				c.Close()
				return
			}
			hybrid.Splice(c, vc)
		}()
	}
}

// Close stops listening (connections in flight go on) and waits for the
// accept loops.
func (f *Forwarder) Close() {
	if f == nil {
		return
	}
	f.mu.Lock()
	if f.done {
		f.mu.Unlock()
		return
	}
	f.done = true
	for _, ln := range f.lns {
		ln.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}
