package nitro

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"

	"github.com/mdlayher/vsock"
)

// Vsock is the AF_VSOCK seam. The real implementation ([AFVsock]) is only
// used on a Nitro parent; tests supply Unix-socket stand-ins.
type Vsock interface {
	// Listen binds and listens on (cid, port) of this host.
	Listen(cid, port uint32) (net.Listener, error)
	// Dial connects to (cid, port).
	Dial(ctx context.Context, cid, port uint32) (net.Conn, error)
}

// AFVsock is the real [Vsock] (github.com/mdlayher/vsock).
type AFVsock struct{}

// Listen listens on AF_VSOCK (cid, port).
func (AFVsock) Listen(cid, port uint32) (net.Listener, error) {
	l, err := vsock.ListenContextID(cid, port, nil)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("%w: vsock port %d on the parent is already bound (another enclave's monitor or a vsock-proxy holds it; on Nitro all enclaves share the parent's ports)", err, port)
		}
		return nil, err
	}
	return l, nil
}

// Dial connects to AF_VSOCK (cid, port).
func (AFVsock) Dial(ctx context.Context, cid, port uint32) (net.Conn, error) {
	return vsock.DialContext(ctx, cid, port, nil)
}

// CIDAddr is implemented by addresses that carry a vsock context id.
type CIDAddr interface {
	net.Addr
	CID() uint32
}

// remoteCID extracts the peer CID of a connection, when the address says.
func remoteCID(a net.Addr) (uint32, bool) {
	switch v := a.(type) {
	case *vsock.Addr:
		return v.ContextID, true
	case CIDAddr:
		return v.CID(), true
	}
	return 0, false
}

// cidListener yields only connections whose peer is the enclave with CID
// cid: on Nitro the parent's ports are shared by all enclaves, and the
// heartbeat must come from the enclave being launched. Connections whose
// address carries no CID are passed through.
type cidListener struct {
	net.Listener
	cid      uint32
	rejected func(from uint32)
}

func (l *cidListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if from, ok := remoteCID(c.RemoteAddr()); ok && from != l.cid {
			c.Close()
			if l.rejected != nil {
				l.rejected(from)
			}
			continue
		}
		return c, nil
	}
}
