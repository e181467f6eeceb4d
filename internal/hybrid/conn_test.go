package hybrid_test

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloister/cloister/internal/hybrid"
	"github.com/cloister/cloister/internal/transport"
	"golang.org/x/net/nettest"
)

// TestConnHybridDial runs nettest's conformance suite on host → enclave
// connections: c1 is the host's hybrid.Dial connection through a Server with
// UnixConnector, c2 the enclave's connection accepted from the sandbox
// transport. "handoff" is the default (the enclave gets the client's socket),
// "relay" hides the Handoff method so the Server relays.
func TestConnHybridDial(t *testing.T) {
	for _, tc := range []struct {
		name      string
		configure func(*hybrid.Server)
	}{
		{"handoff", nil},
		{"relay", func(s *hybrid.Server) { s.Connector = relayOnly(s.Connector) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, tc.configure)
			var port atomic.Uint32
			port.Store(5000)
			nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
				p := port.Add(1)
				l, err := transport.Listen(p, w.tcfg)
				if err != nil {
					return nil, nil, nil, err
				}
				accepted := acceptOne(l)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				hc, err := hybrid.Dial(ctx, w.sock, p, dialCfg())
				if err != nil {
					l.Close()
					return nil, nil, nil, err
				}
				gc, ok := <-accepted
				if !ok {
					hc.Close()
					l.Close()
					return nil, nil, nil, errors.New("accept failed")
				}
				return hc, gc, func() { hc.Close(); gc.Close(); l.Close() }, nil
			})
		})
	}
}

// TestConnHostListener runs nettest's suite on enclave → host connections:
// c1 is accepted from a host listener (hybrid.Listen), c2 is the enclave's
// sandbox transport.Dial connection.
func TestConnHostListener(t *testing.T) {
	w := newWorld(t, nil)
	var port atomic.Uint32
	port.Store(6000)
	nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
		p := port.Add(1)
		l, err := hybrid.Listen(w.hostBase(), p)
		if err != nil {
			return nil, nil, nil, err
		}
		accepted := acceptOne(l)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ec, err := transport.Dial(ctx, hybrid.ParentCID, p, w.tcfg)
		if err != nil {
			l.Close()
			return nil, nil, nil, err
		}
		hc := <-accepted
		return hc, ec, func() { hc.Close(); ec.Close(); l.Close() }, nil
	})
}
