package hybrid

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/cloister/cloister/internal/wellknown"
	"github.com/mdlayher/vsock"
)

// Marker bytes: the first byte a sandbox-world connection to an enclave
// listener (vsock_<port> in its listener directory) carries, written by
// whoever connects (the daemon's [Server] through [UnixConnector], or a
// direct dialer).
const (
	// MarkerHandoff ('F') comes with one SCM_RIGHTS file descriptor: the
	// host client's own socket, already past "OK <n>\n". The enclave uses
	// that socket and closes the connection the marker came on.
	MarkerHandoff byte = 'F'
	// MarkerRelay ('R') says that the connection itself carries the
	// stream, starting with the next byte.
	MarkerRelay byte = 'R'
)

// DefaultMarkerTimeout bounds how long a guest [Listener]'s Accept waits for
// the marker of one connection when Listener.MarkerTimeout is zero.
const DefaultMarkerTimeout = 5 * time.Second

// ErrHandoffUnsupported is returned by a [Handoff] implementation that
// cannot hand this connection off; it has then neither consumed nor written
// anything, and the [Server] relays instead.
var ErrHandoffUnsupported = errors.New("hybrid: connection handoff not supported")

// Handoff is an optional interface of a [Connector]: instead of returning a
// stream for the [Server] to relay, it gives the client's socket itself to
// the enclave. Handoff connects to the enclave's port (failing with a
// class-[ErrNoListener] or [ErrTimeout] error without writing anything to
// client if that fails), writes ok ("OK <hostport>\n") to client, then passes
// client's file descriptor to the enclave. The Server closes its copy of
// client after Handoff returns, whatever the result; an error after ok was
// written therefore reads as end of stream to the client. ctx bounds the
// attempt.
type Handoff interface {
	Handoff(ctx context.Context, port uint32, client *net.UnixConn, ok []byte) error
}

var _ Handoff = UnixConnector{}

// guestName is the name of the enclave's listener socket for port.
func guestName(port uint32) string { return wellknown.VsockSocketName(port) }

// errNotSocket is the cause of a refused connection to an enclave listener
// name that is not a socket of the listener directory; it is of class
// [ErrNoListener].
var errNotSocket = errors.New("not a socket in the enclave's listener directory")

// dial connects to the enclave's listener for port, "vsock_<port>" in the
// listener directory, never following a link the enclave made (see
// [UnixConnector]).
func (u UnixConnector) dial(ctx context.Context, port uint32) (*net.UnixConn, error) {
	c, err := dialGuest(ctx, u.Dir, u.Root, guestName(port))
	if errors.Is(err, errNotSocket) {
		err = &Error{Class: ErrNoListener, Port: port, Err: err}
	}
	if err != nil {
		return nil, fmt.Errorf("hybrid: connect to enclave port %d: %w", port, Classify(ctx, err, port))
	}
	return c, nil
}

// Dial connects to the enclave's "vsock_<port>" as ConnectGuest does, but
// sends no marker: the caller sends one (the sandbox's supervisor puts a
// connection back in an emulated listener's queue with [MarkerHandoff]).
func (u UnixConnector) Dial(ctx context.Context, port uint32) (*net.UnixConn, error) {
	return u.dial(ctx, port)
}

// Handoff implements [Handoff]: it connects to the enclave's "vsock_<port>"
// as ConnectGuest does, writes ok to client, then sends the marker
// [MarkerHandoff] with client's descriptor (SCM_RIGHTS) on the new
// connection and closes that connection.
func (u UnixConnector) Handoff(ctx context.Context, port uint32, client *net.UnixConn, ok []byte) error {
	g, err := u.dial(ctx, port)
	if err != nil {
		return err
	}
	defer g.Close()
	if dl, has := ctx.Deadline(); has {
		if err := g.SetDeadline(dl); err != nil {
			return err
		}
	}
	if _, err := client.Write(ok); err != nil {
		return fmt.Errorf("hybrid: writing OK to client: %w", err)
	}
	return SendHandoff(g, client)
}

// SendHandoff sends [MarkerHandoff] with client's file descriptor over g, a
// fresh connection to an enclave listener.
func SendHandoff(g, client *net.UnixConn) error {
	rc, err := client.SyscallConn()
	if err != nil {
		return fmt.Errorf("hybrid: handoff: %w", err)
	}
	var werr error
	if err := rc.Control(func(fd uintptr) {
		_, _, werr = g.WriteMsgUnix([]byte{MarkerHandoff}, syscall.UnixRights(int(fd)), nil)
	}); err != nil {
		return fmt.Errorf("hybrid: handoff: %w", err)
	}
	if werr != nil {
		return fmt.Errorf("hybrid: handoff: sending descriptor: %w", werr)
	}
	return nil
}

// SendRelay writes [MarkerRelay] to c, a fresh connection to an enclave
// listener, so that the enclave reads the connection itself as the stream.
func SendRelay(c net.Conn) error {
	if _, err := c.Write([]byte{MarkerRelay}); err != nil {
		return fmt.Errorf("hybrid: sending relay marker: %w", err)
	}
	return nil
}

// ListenGuest is [ListenUnix] for the sandbox world's enclave listeners
// (vsock_<port> in the listener directory): Accept first reads each
// connection's marker. With [MarkerHandoff] and a descriptor, the accepted
// [*Conn] wraps the received socket and the connection the marker came on
// is closed; with [MarkerRelay], it wraps the connection itself. A
// connection that sends anything else, ends, or sends nothing within the
// marker timeout is closed and Accept waits for the next one (a misbehaving
// peer delays Accept by at most that timeout).
func ListenGuest(path string, local *vsock.Addr, peerCID uint32) (*Listener, error) {
	l, err := ListenUnix(path, local, peerCID)
	if err != nil {
		return nil, err
	}
	l.guest = true
	return l, nil
}

// receiveMarker reads the marker of a guest connection; it returns the
// stream to use (uc itself, or the handed-off socket with uc closed).
func (l *Listener) receiveMarker(uc *net.UnixConn) (*net.UnixConn, error) {
	to := l.MarkerTimeout
	if to <= 0 {
		to = DefaultMarkerTimeout
	}
	if err := uc.SetReadDeadline(time.Now().Add(to)); err != nil {
		return nil, err
	}
	b := make([]byte, 1)
	oob := make([]byte, syscall.CmsgSpace(4*4))
	n, oobn, flags, _, err := uc.ReadMsgUnix(b, oob)
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, io.EOF
	}
	var fds []int
	if oobn > 0 {
		msgs, perr := syscall.ParseSocketControlMessage(oob[:oobn])
		if perr != nil {
			return nil, perr
		}
		for _, m := range msgs {
			rights, rerr := syscall.ParseUnixRights(&m)
			if rerr == nil {
				fds = append(fds, rights...)
			}
		}
	}
	closeFDs := func(fds []int) {
		for _, fd := range fds {
			syscall.Close(fd)
		}
	}
	switch {
	case b[0] == MarkerRelay && len(fds) == 0 && flags&syscall.MSG_CTRUNC == 0:
		if err := uc.SetReadDeadline(time.Time{}); err != nil {
			return nil, err
		}
		return uc, nil
	case b[0] == MarkerHandoff && len(fds) == 1 && flags&syscall.MSG_CTRUNC == 0:
		hc, err := unixConnFromFD(fds[0])
		if err != nil {
			return nil, err
		}
		uc.Close()
		return hc, nil
	}
	closeFDs(fds)
	return nil, fmt.Errorf("unexpected marker %q with %d descriptors (flags %#x): %w", b[0], len(fds), flags, ErrProtocol)
}

// unixConnFromFD turns a received descriptor into a *net.UnixConn; it takes
// ownership of fd.
func unixConnFromFD(fd int) (*net.UnixConn, error) {
	f := os.NewFile(uintptr(fd), "vsock-handoff")
	defer f.Close()
	nc, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("handed-off descriptor: %w", err)
	}
	uc, ok := nc.(*net.UnixConn)
	if !ok {
		nc.Close()
		return nil, fmt.Errorf("handed-off descriptor is a %T, not a Unix socket: %w", nc, ErrProtocol)
	}
	return uc, nil
}
