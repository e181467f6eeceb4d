package hybrid

import (
	"net"
	"syscall"
	"time"

	"github.com/mdlayher/vsock"
)

// Conn is a vsock stream connection carried by a Unix stream socket: the
// result of [Dial], of a [Listener]'s Accept, and of the sandbox world's
// enclave-side transport. Its addresses are vsock addresses and its errors
// are *net.OpError on network "vsock" whose Err is classified as [*Error]
// where a class fits (ECONNRESET → [ErrReset], deadline → [ErrTimeout]).
// io.EOF is returned unchanged.
type Conn struct {
	uc            *net.UnixConn
	local, remote *vsock.Addr
}

var (
	_ net.Conn                        = (*Conn)(nil)
	_ syscall.Conn                    = (*Conn)(nil)
	_ interface{ CloseWrite() error } = (*Conn)(nil)
)

// NewConn wraps an established Unix stream connection as a vsock connection
// with the given local and remote addresses (copied). uc must not be used
// directly afterwards.
func NewConn(uc *net.UnixConn, local, remote *vsock.Addr) *Conn {
	l, r := *local, *remote
	return &Conn{uc: uc, local: &l, remote: &r}
}

// Read reads from the stream.
func (c *Conn) Read(b []byte) (int, error) {
	n, err := c.uc.Read(b)
	return n, c.opError("read", err)
}

// Write writes to the stream.
func (c *Conn) Write(b []byte) (int, error) {
	n, err := c.uc.Write(b)
	return n, c.opError("write", err)
}

// Close closes the connection.
func (c *Conn) Close() error { return c.opError("close", c.uc.Close()) }

// CloseRead shuts down the reading side.
func (c *Conn) CloseRead() error { return c.opError("close", c.uc.CloseRead()) }

// CloseWrite shuts down the writing side; the peer reads io.EOF after the
// data already sent, and can still send.
func (c *Conn) CloseWrite() error { return c.opError("close", c.uc.CloseWrite()) }

// LocalAddr returns the local vsock address (*vsock.Addr).
func (c *Conn) LocalAddr() net.Addr { return c.local }

// RemoteAddr returns the remote vsock address (*vsock.Addr).
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

// SetDeadline sets the read and write deadlines.
func (c *Conn) SetDeadline(t time.Time) error { return c.opError("set", c.uc.SetDeadline(t)) }

// SetReadDeadline sets the read deadline.
func (c *Conn) SetReadDeadline(t time.Time) error {
	return c.opError("set", c.uc.SetReadDeadline(t))
}

// SetWriteDeadline sets the write deadline.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	return c.opError("set", c.uc.SetWriteDeadline(t))
}

// SyscallConn returns the raw connection of the underlying Unix socket.
func (c *Conn) SyscallConn() (syscall.RawConn, error) { return c.uc.SyscallConn() }

// UnixConn returns the underlying Unix connection, for code that splices
// streams (the [Server] relay); reading or writing it bypasses error
// classification.
func (c *Conn) UnixConn() *net.UnixConn { return c.uc }

func (c *Conn) opError(op string, err error) error {
	if err == nil {
		return nil
	}
	return opError(op, err, c.local, c.remote)
}
