package hybrid

import (
	"io"
	"net"
	"sync"
)

var bufPool = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// unixOf returns the Unix socket under c, if any: c itself, or what its
// UnixConn method returns (a [*Conn], a connection counted by
// internal/connlimit).
func unixOf(c net.Conn) *net.UnixConn {
	switch v := c.(type) {
	case *net.UnixConn:
		return v
	case *Conn:
		return v.uc
	case interface{ UnixConn() *net.UnixConn }:
		return v.UnixConn()
	}
	return nil
}

// relay copies src to dst until end of stream (nil error) or an error. Two
// Unix sockets are spliced through a pipe; anything else is copied with
// io.CopyBuffer (which uses ReaderFrom/WriterTo when available).
func relay(dst, src net.Conn) (int64, error) {
	if d, s := unixOf(dst), unixOf(src); d != nil && s != nil {
		if n, handled, err := spliceUnix(d, s); handled {
			return n, err
		}
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	return io.CopyBuffer(dst, src, *bp)
}

// Splice copies a to b and b to a until both directions end, propagating
// half-close (CloseWrite) so request/response protocols keep working; on a
// copy error it closes both connections. Two Unix sockets are spliced in
// the kernel. It is the one relay used by the hybrid server, the daemon's
// connect endpoint and the egress proxy.
func Splice(a, b net.Conn) {
	var once sync.Once
	closeBoth := func() { once.Do(func() { a.Close(); b.Close() }) }
	pipe := func(dst, src net.Conn) {
		if _, err := relay(dst, src); err != nil {
			closeBoth()
			return
		}
		if cw, ok := dst.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
			return
		}
		closeBoth()
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		pipe(b, a)
	}()
	pipe(a, b)
	<-done
}
