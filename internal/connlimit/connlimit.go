// Package connlimit bounds the connections a listener hands out, for the
// services the daemon's per-enclave monitor runs on an enclave's behalf
// (emulated security module, egress proxies): one enclave must not be able
// to make its monitor hold an unbounded number of connections.
package connlimit

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
)

// Stats are a [Listener]'s counters.
type Stats struct {
	// Max is the bound on concurrent connections.
	Max int `json:"max"`
	// Active counts the connections handed out and not yet closed.
	Active int64 `json:"active"`
	// Accepted counts the connections handed out since the start.
	Accepted uint64 `json:"accepted"`
	// Refused counts the connections closed at once because Max were
	// active.
	Refused uint64 `json:"refused"`
}

// Listener wraps a net.Listener so that at most Max of its connections are
// open at once. Accept returns connections wrapped in [*Conn], whose Close
// frees their place; a connection arriving while Max are open is accepted
// and closed at once (the peer reads end of stream, as from Firecracker
// beyond its connection limit) and Accept waits for the next one.
type Listener struct {
	net.Listener
	sem      chan struct{}
	active   atomic.Int64
	accepted atomic.Uint64
	refused  atomic.Uint64
}

// New bounds l to n concurrent connections (n ≥ 1; smaller values mean 1).
func New(l net.Listener, n int) *Listener {
	return &Listener{Listener: l, sem: make(chan struct{}, max(n, 1))}
}

// Accept returns the next connection that fits under the bound.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.sem <- struct{}{}:
			l.accepted.Add(1)
			l.active.Add(1)
			return &Conn{Conn: c, l: l}, nil
		default:
			l.refused.Add(1)
			c.Close()
		}
	}
}

// Stats returns the listener's counters.
func (l *Listener) Stats() Stats {
	return Stats{Max: cap(l.sem), Active: l.active.Load(), Accepted: l.accepted.Load(), Refused: l.refused.Load()}
}

// Conn is a connection counted by a [Listener].
type Conn struct {
	net.Conn
	l    *Listener
	once sync.Once
}

// Close closes the connection and frees its place (once).
func (c *Conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.active.Add(-1)
		<-c.l.sem
	})
	return err
}

// CloseWrite half-closes the connection; it fails with
// errors.ErrUnsupported if the underlying connection cannot.
func (c *Conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// CloseRead shuts the reading side; it fails with errors.ErrUnsupported if
// the underlying connection cannot.
func (c *Conn) CloseRead() error {
	if cr, ok := c.Conn.(interface{ CloseRead() error }); ok {
		return cr.CloseRead()
	}
	return errors.ErrUnsupported
}

// UnixConn returns the Unix socket under the connection, or nil: relays
// (internal/hybrid's Splice) use it to splice in the kernel.
func (c *Conn) UnixConn() *net.UnixConn {
	switch v := c.Conn.(type) {
	case *net.UnixConn:
		return v
	case interface{ UnixConn() *net.UnixConn }:
		return v.UnixConn()
	}
	return nil
}

// Unwrap returns the underlying connection.
func (c *Conn) Unwrap() net.Conn { return c.Conn }
