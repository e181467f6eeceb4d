package hybrid

import (
	"io"
	"net"
	"sync"
)

var bufPool = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// unixOf returns the Unix socket under c, if any.
func unixOf(c net.Conn) *net.UnixConn {
	switch v := c.(type) {
	case *net.UnixConn:
		return v
	case *Conn:
		return v.uc
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
