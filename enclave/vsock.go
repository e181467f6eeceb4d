package enclave

import (
	"context"
	"net"

	"github.com/cloister/cloister/internal/hybrid"
	"github.com/cloister/cloister/internal/transport"
	"github.com/mdlayher/vsock"
)

// Addr is a vsock address: a context ID (CID) and a port. Connections made by
// [Listen], [Dial] and [DialParent] report their ends as *Addr in every
// world.
type Addr = vsock.Addr

// ParentCID is the CID of the parent instance, the only peer an enclave can
// reach.
const ParentCID uint32 = 3

// Error classes of [Listen], [Dial] and [DialParent] failures and of
// connection I/O; match them with errors.Is. They are the same values in all
// worlds and on the parent side.
var (
	// ErrNoListener: nothing listens on the destination port.
	ErrNoListener = hybrid.ErrNoListener
	// ErrTimeout: the peer did not answer before the deadline (the
	// context's, or a read/write deadline).
	ErrTimeout = hybrid.ErrTimeout
	// ErrReset: the peer reset the connection.
	ErrReset = hybrid.ErrReset
	// ErrUnreachable: the destination CID cannot be reached from the
	// enclave (only ParentCID can).
	ErrUnreachable = transport.ErrUnreachable
)

// Listen listens on vsock port for connections from the parent instance. In
// a Nitro enclave and a microVM it is an AF_VSOCK listener; in the process
// sandbox it is the Unix socket the parent's Cloister daemon connects to
// when a parent process dials (enclave CID, port). The listener's Addr and
// the accepted connections' addresses are *[Addr].
func Listen(port uint32) (net.Listener, error) {
	return transport.Listen(port, nil)
}

// Dial connects to (cid, port); ctx bounds the attempt. From an enclave only
// [ParentCID] is reachable ([ErrUnreachable] otherwise in the sandbox). A
// port nobody listens on gives [ErrNoListener]; an expired ctx gives
// [ErrTimeout]. There is no retry.
func Dial(ctx context.Context, cid, port uint32) (net.Conn, error) {
	return transport.Dial(ctx, cid, port, nil)
}

// DialParent connects to port on the parent instance, i.e.
// Dial(ctx, ParentCID, port).
func DialParent(ctx context.Context, port uint32) (net.Conn, error) {
	return transport.Dial(ctx, ParentCID, port, nil)
}
