package hybrid

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"strings"
	"syscall"

	"github.com/cloister/cloister/internal/wellknown"
	"github.com/mdlayher/vsock"
)

// Error classes of vsock operations. They are shared by the host side (this
// package) and the enclave side (internal/transport, package enclave), so one
// errors.Is check works in every world.
var (
	// ErrNoListener means nothing accepts connections on the destination
	// port: the CONNECT socket closed without a byte (Firecracker's answer
	// when the guest is not listening), or the Unix socket file is missing
	// or refuses connections (ENOENT, ECONNREFUSED).
	ErrNoListener = errors.New("vsock: nobody listening")
	// ErrTimeout means the peer did not answer before a deadline (the
	// caller's context, a handshake timeout, or a read/write deadline).
	ErrTimeout = errors.New("vsock: timed out")
	// ErrReset means the peer reset the connection (ECONNRESET, or EPIPE
	// before the handshake finished).
	ErrReset = errors.New("vsock: connection reset")
	// ErrProtocol means the peer broke the hybrid-vsock handshake: a
	// malformed, oversized or truncated "CONNECT <port>\n" or "OK <n>\n"
	// line.
	ErrProtocol = errors.New("vsock: hybrid vsock protocol violation")
)

// AnyCID (VMADDR_CID_ANY) is reported as the context ID of a peer whose CID
// is not known, e.g. the enclave behind a host listener created without a
// peer CID.
const AnyCID uint32 = 0xFFFFFFFF

// ParentCID is the context ID of the parent instance as seen from an enclave.
const ParentCID uint32 = wellknown.ParentCID

// Error is the detail of a failed vsock operation. Class is one of
// [ErrNoListener], [ErrTimeout], [ErrReset], [ErrProtocol]; Port is the vsock
// port involved; Err is the underlying cause (may be nil). errors.Is matches
// both Class and anything Err wraps.
type Error struct {
	Class error
	Port  uint32
	Err   error
}

// Error renders "<class> on port <port>: <cause>".
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(strings.TrimPrefix(e.Class.Error(), "vsock: "))
	fmt.Fprintf(&b, " on port %d", e.Port)
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Unwrap returns the class and the cause, for errors.Is and errors.As.
func (e *Error) Unwrap() []error {
	if e.Err == nil {
		return []error{e.Class}
	}
	return []error{e.Class, e.Err}
}

// Timeout reports whether the error is of class [ErrTimeout]; it makes
// *net.OpError.Timeout() true for such errors.
func (e *Error) Timeout() bool { return e.Class == ErrTimeout }

// Temporary reports the same as Timeout (net.Error compatibility).
func (e *Error) Temporary() bool { return e.Timeout() }

// Classify maps err, the failure of connecting to or using a Unix socket
// standing in for vsock port, to an [*Error] with the matching class:
// ENOENT/ECONNREFUSED → [ErrNoListener], ECONNRESET → [ErrReset],
// ETIMEDOUT or a deadline (os.ErrDeadlineExceeded, context.DeadlineExceeded)
// → [ErrTimeout]; any other error counts as [ErrTimeout] when ctx's deadline
// has passed. It returns nil for nil, err itself for io.EOF, net.ErrClosed
// and errors already classified, and err unchanged when it fits no class.
func Classify(ctx context.Context, err error, port uint32) error {
	if err == nil || err == io.EOF || errors.Is(err, net.ErrClosed) {
		return err
	}
	var he *Error
	if errors.As(err, &he) {
		return err
	}
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ECONNREFUSED):
		return &Error{Class: ErrNoListener, Port: port, Err: err}
	case errors.Is(err, syscall.ECONNRESET):
		return &Error{Class: ErrReset, Port: port, Err: err}
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded), errors.Is(err, syscall.ETIMEDOUT):
		return &Error{Class: ErrTimeout, Port: port, Err: err}
	}
	if ctx != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return &Error{Class: ErrTimeout, Port: port, Err: err}
	}
	return err
}

// opError builds the *net.OpError returned by this package's operations:
// network "vsock", vsock addresses, and a classified cause. If err already is
// a *net.OpError (from the Unix socket), its inner error is used.
func opError(op string, err error, local, remote *vsock.Addr) error {
	if err == nil || err == io.EOF {
		return err
	}
	if oe, ok := err.(*net.OpError); ok {
		err = oe.Err
	}
	var port uint32
	if remote != nil {
		port = remote.Port
	}
	oe := &net.OpError{Op: op, Net: "vsock", Err: Classify(context.Background(), err, port)}
	// Typed nil pointers must not end up in the net.Addr interfaces.
	if local != nil {
		oe.Source = local
	}
	if remote != nil {
		oe.Addr = remote
	}
	return oe
}
