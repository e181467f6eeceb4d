package vsockdev

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/cloister/cloister/internal/hybrid"
	"github.com/cloister/cloister/internal/virtq"
)

// hostListener listens on "<base>_<port>" like the daemon's host listeners.
func hostListener(t testing.TB, g *simGuest, port uint32) *net.UnixListener {
	t.Helper()
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: g.d.cfg.HostListenerBase + "_" + strconv.Itoa(int(port)), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func accept(t testing.TB, l *net.UnixListener) *net.UnixConn {
	t.Helper()
	_ = l.SetDeadline(time.Now().Add(10 * time.Second))
	c, err := l.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	return c
}

func readN(t testing.TB, c net.Conn, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("host read: %v", err)
	}
	return b
}

// recvData collects RW payloads until n bytes arrived.
func recvData(t testing.TB, g *simGuest, src, dst uint32, n int) []byte {
	t.Helper()
	var out []byte
	for len(out) < n {
		p := g.expect(OpRW, src, dst)
		out = append(out, p.payload...)
	}
	return out
}

func (g *simGuest) connCount() int {
	g.d.mu.Lock()
	defer g.d.mu.Unlock()
	return len(g.d.conns)
}

var layouts = []struct {
	name string
	o    simOpts
}{
	{"plain", simOpts{}},
	{"header split", simOpts{rxSplit: true, txSplit: true}},
	{"indirect", simOpts{indirect: true, txSplit: true}},
	{"wrap and event idx", simOpts{startIdx: 65500, eventIdx: true, txSplit: true}},
}

func TestGuestConnectsToHost(t *testing.T) {
	for _, lt := range layouts {
		t.Run(lt.name, func(t *testing.T) {
			g := newSimGuest(t, Config{}, lt.o)
			l := hostListener(t, g, 9000)

			g.send(g.hdr(OpRequest, 1234, 9000), nil)
			resp := g.expect(OpResponse, 9000, 1234)
			if resp.SrcCID != ParentCID || resp.BufAlloc != DefaultBufAlloc {
				t.Errorf("RESPONSE src_cid %d buf_alloc %d", resp.SrcCID, resp.BufAlloc)
			}
			hc := accept(t, l)

			g.send(g.hdr(OpRW, 1234, 9000), []byte("hello from the guest"))
			if got := readN(t, hc, 20); string(got) != "hello from the guest" {
				t.Errorf("host read %q", got)
			}
			if _, err := hc.Write([]byte("hello from the host")); err != nil {
				t.Fatal(err)
			}
			if got := recvData(t, g, 9000, 1234, 19); string(got) != "hello from the host" {
				t.Errorf("guest read %q", got)
			}

			// Half-close: the guest stops sending, the host sees EOF and
			// can still send.
			sh := g.hdr(OpShutdown, 1234, 9000)
			sh.Flags = ShutdownSend
			g.send(sh, nil)
			if rest, err := io.ReadAll(hc); err != nil || len(rest) != 0 {
				t.Fatalf("host after SHUTDOWN(SEND): %q, %v", rest, err)
			}
			if _, err := hc.Write([]byte("after")); err != nil {
				t.Fatal(err)
			}
			if got := recvData(t, g, 9000, 1234, 5); string(got) != "after" {
				t.Errorf("guest read %q", got)
			}
			// The host closes: SHUTDOWN(SEND), then, both sides being
			// done, SHUTDOWN(both); the guest answers RST.
			hc.Close()
			if p := g.expect(OpShutdown, 9000, 1234); p.Flags != ShutdownSend {
				t.Errorf("first SHUTDOWN flags %d", p.Flags)
			}
			if p := g.expect(OpShutdown, 9000, 1234); p.Flags != shutdownBoth {
				t.Errorf("second SHUTDOWN flags %d", p.Flags)
			}
			g.send(g.hdr(OpRST, 1234, 9000), nil)
			g.sentinel()
			if n := g.connCount(); n != 0 {
				t.Errorf("%d connections left", n)
			}
		})
	}
}

// sentinel sends a packet the device answers at once (REQUEST to an
// unknown CID) and checks that the next packet is its RST: everything sent
// before it produced no packet.
func (g *simGuest) sentinel() {
	g.t.Helper()
	h := g.hdr(OpRequest, 7777, 1)
	h.DstCID = 99
	g.send(h, nil)
	p := g.recv()
	if p.Op != OpRST || p.SrcCID != 99 || p.DstPort != 7777 {
		g.t.Fatalf("expected the sentinel RST, got %s from %d:%d to port %d", opName(p.Op), p.SrcCID, p.SrcPort, p.DstPort)
	}
}

func TestHostCIDAlias(t *testing.T) {
	g := newSimGuest(t, Config{}, simOpts{})
	l := hostListener(t, g, 52)
	h := g.hdr(OpRequest, 1000, 52)
	h.DstCID = HostCID
	g.send(h, nil)
	if p := g.expect(OpResponse, 52, 1000); p.SrcCID != HostCID {
		t.Errorf("RESPONSE from CID %d, want %d", p.SrcCID, HostCID)
	}
	hc := accept(t, l)
	h.Op = OpRW
	g.send(h, []byte("via cid 2"))
	if got := readN(t, hc, 9); string(got) != "via cid 2" {
		t.Errorf("host read %q", got)
	}
}

func TestGuestClosesBoth(t *testing.T) {
	g := newSimGuest(t, Config{}, simOpts{})
	l := hostListener(t, g, 9000)
	g.send(g.hdr(OpRequest, 1, 9000), nil)
	g.expect(OpResponse, 9000, 1)
	hc := accept(t, l)
	g.send(g.hdr(OpRW, 1, 9000), []byte("last words"))
	sh := g.hdr(OpShutdown, 1, 9000)
	sh.Flags = shutdownBoth
	g.send(sh, nil)
	// The data is flushed to the host before the RST ends the connection.
	if got, err := io.ReadAll(hc); err != nil || string(got) != "last words" {
		t.Errorf("host read %q, %v", got, err)
	}
	g.expect(OpRST, 9000, 1)
	if n := g.connCount(); n != 0 {
		t.Errorf("%d connections left", n)
	}
}

func TestRSTAndDrops(t *testing.T) {
	g := newSimGuest(t, Config{}, simOpts{})
	l := hostListener(t, g, 9000)
	g.send(g.hdr(OpRequest, 5, 9000), nil)
	g.expect(OpResponse, 9000, 5)
	accept(t, l)

	type reply struct {
		op      uint16
		srcCID  uint64
		typ     uint16
		dstPort uint32
	}
	tests := []struct {
		name string
		raw  func() []byte
		want *reply // nil: dropped silently
	}{
		{"no listener", func() []byte { return g.hdr(OpRequest, 10, 4444).Bytes() }, &reply{OpRST, ParentCID, TypeStream, 10}},
		{"unknown CID", func() []byte {
			h := g.hdr(OpRequest, 11, 9000)
			h.DstCID = 7
			return h.Bytes()
		}, &reply{OpRST, 7, TypeStream, 11}},
		{"data for unknown connection", func() []byte {
			h := g.hdr(OpRW, 12, 9000)
			h.Len = 3
			return append(h.Bytes(), "abc"...)
		}, &reply{OpRST, ParentCID, TypeStream, 12}},
		{"seqpacket", func() []byte {
			h := g.hdr(OpRequest, 13, 9000)
			h.Type = TypeSeqpacket
			return h.Bytes()
		}, &reply{OpRST, ParentCID, TypeSeqpacket, 13}},
		{"length beyond buffers", func() []byte {
			h := g.hdr(OpRW, 14, 9000)
			h.Len = 100
			return append(h.Bytes(), "short"...)
		}, &reply{OpRST, ParentCID, TypeStream, 14}},
		{"length above 64 KiB", func() []byte {
			h := g.hdr(OpRW, 15, 9000)
			h.Len = MaxPacketPayload + 1
			return h.Bytes()
		}, &reply{OpRST, ParentCID, TypeStream, 15}},
		{"unknown op on a connection", func() []byte { return g.hdr(99, 5, 9000).Bytes() }, &reply{OpRST, ParentCID, TypeStream, 5}},
		{"spoofed source CID", func() []byte {
			h := g.hdr(OpRequest, 16, 9000)
			h.SrcCID = 5
			return h.Bytes()
		}, nil},
		{"short packet", func() []byte { return make([]byte, 10) }, nil},
		{"RST for unknown connection", func() []byte { return g.hdr(OpRST, 17, 9000).Bytes() }, nil},
		{"credit update for unknown connection with RST type", func() []byte {
			h := g.hdr(OpRST, 18, 1)
			h.DstCID = 42
			return h.Bytes()
		}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g.t = t
			g.sendRaw(tc.raw())
			if tc.want == nil {
				g.sentinel()
				return
			}
			p := g.recv()
			got := reply{p.Op, p.SrcCID, p.Type, p.DstPort}
			if got != *tc.want {
				t.Errorf("reply %+v, want %+v", got, *tc.want)
			}
		})
	}
}

func TestCreditHostToGuest(t *testing.T) {
	g := newSimGuest(t, Config{}, simOpts{rxSplit: true})
	l := hostListener(t, g, 9000)
	req := g.hdr(OpRequest, 2000, 9000)
	req.BufAlloc = 8192
	g.send(req, nil)
	g.expect(OpResponse, 9000, 2000)
	hc := accept(t, l)
	data := make([]byte, 20000)
	_, _ = rand.Read(data)
	go hc.Write(data)

	var got []byte
	var fwd uint32
	for len(got) < len(data) {
		// The device sends exactly the credit, then asks for more.
		var part []byte
		for {
			p := g.recv()
			if p.Op == OpCreditRequest {
				break
			}
			if p.Op != OpRW {
				t.Fatalf("unexpected %s", opName(p.Op))
			}
			part = append(part, p.payload...)
			if len(got)+len(part) == len(data) {
				break
			}
		}
		if want := min(8192, len(data)-len(got)); len(part) != want {
			t.Fatalf("received %d bytes within a credit window, want %d", len(part), want)
		}
		got = append(got, part...)
		fwd += uint32(len(part))
		up := g.hdr(OpCreditUpdate, 2000, 9000)
		up.BufAlloc, up.FwdCnt = 8192, fwd
		g.send(up, nil)
	}
	if !bytes.Equal(got, data) {
		t.Error("data corrupted")
	}
}

func TestCreditGuestToHost(t *testing.T) {
	g := newSimGuest(t, Config{BufAlloc: 4096}, simOpts{})
	l := hostListener(t, g, 9000)
	g.send(g.hdr(OpRequest, 3000, 9000), nil)
	if p := g.expect(OpResponse, 9000, 3000); p.BufAlloc != 4096 || p.FwdCnt != 0 {
		t.Fatalf("RESPONSE credit %d/%d", p.BufAlloc, p.FwdCnt)
	}
	hc := accept(t, l)
	g.send(g.hdr(OpRW, 3000, 9000), make([]byte, 4096))
	readN(t, hc, 4096)
	// The guest's credit was exhausted; forwarding to the host frees it.
	if p := g.expect(OpCreditUpdate, 9000, 3000); p.FwdCnt != 4096 || p.BufAlloc != 4096 {
		t.Errorf("CREDIT_UPDATE %d/%d", p.FwdCnt, p.BufAlloc)
	}
	// CREDIT_REQUEST is answered.
	g.send(g.hdr(OpCreditRequest, 3000, 9000), nil)
	if p := g.expect(OpCreditUpdate, 9000, 3000); p.FwdCnt != 4096 {
		t.Errorf("CREDIT_UPDATE fwd_cnt %d", p.FwdCnt)
	}
	// A guest that ignores the credit is reset.
	g.send(g.hdr(OpRW, 3000, 9000), make([]byte, 5000))
	g.expect(OpRST, 9000, 3000)
	if _, err := io.ReadAll(hc); err != nil {
		t.Errorf("host side after reset: %v", err)
	}
}

func TestHostInitiated(t *testing.T) {
	for _, lt := range layouts {
		t.Run(lt.name, func(t *testing.T) {
			g := newSimGuest(t, Config{}, lt.o)
			type res struct {
				c   net.Conn
				err error
			}
			done := make(chan res, 1)
			go func() {
				c, err := g.d.ConnectGuest(context.Background(), 5000)
				done <- res{c, err}
			}()
			req := g.recv()
			if req.Op != OpRequest || req.SrcCID != ParentCID || req.SrcPort < FirstHostPort || req.DstPort != 5000 ||
				req.DstCID != guestCID {
				t.Fatalf("REQUEST %+v", req.Header)
			}
			local := req.SrcPort
			resp := g.hdr(OpResponse, 5000, local)
			g.send(resp, nil)
			r := <-done
			if r.err != nil {
				t.Fatal(r.err)
			}
			defer r.c.Close()
			if _, err := r.c.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			if got := recvData(t, g, local, 5000, 4); string(got) != "ping" {
				t.Errorf("guest read %q", got)
			}
			g.send(g.hdr(OpRW, 5000, local), []byte("pong"))
			_ = r.c.SetDeadline(time.Now().Add(10 * time.Second))
			if got := readN(t, r.c, 4); string(got) != "pong" {
				t.Errorf("host read %q", got)
			}
			r.c.(*net.UnixConn).CloseWrite()
			if p := g.expect(OpShutdown, local, 5000); p.Flags != ShutdownSend {
				t.Errorf("SHUTDOWN flags %d", p.Flags)
			}
		})
	}
}

func TestHostInitiatedFailures(t *testing.T) {
	g := newSimGuest(t, Config{RequestTimeout: 100 * time.Millisecond}, simOpts{})
	connect := func(ctx context.Context, port uint32) chan error {
		ch := make(chan error, 1)
		go func() {
			c, err := g.d.ConnectGuest(ctx, port)
			if c != nil {
				c.Close()
			}
			ch <- err
		}()
		return ch
	}

	// Refused: the guest answers RST.
	ch := connect(context.Background(), 6000)
	req := g.recv().Header
	if req.Op != OpRequest || req.DstPort != 6000 {
		t.Fatalf("REQUEST %+v", req)
	}
	g.send(g.hdr(OpRST, 6000, req.SrcPort), nil)
	var he *hybrid.Error
	if err := <-ch; !errors.Is(err, hybrid.ErrNoListener) || !errors.As(err, &he) || he.Port != 6000 {
		t.Errorf("refused: %v", err)
	}

	// Silent guest: timeout, and the device withdraws with RST.
	ch = connect(context.Background(), 6001)
	req2 := g.recv()
	if req2.Op != OpRequest || req2.SrcPort == req.SrcPort {
		t.Fatalf("second REQUEST %+v (first from port %d)", req2.Header, req.SrcPort)
	}
	if err := <-ch; !errors.Is(err, hybrid.ErrTimeout) {
		t.Errorf("silent guest: %v", err)
	}
	g.expect(OpRST, req2.SrcPort, 6001)

	// Cancelled context.
	ctx, cancel := context.WithCancel(context.Background())
	ch = connect(ctx, 6002)
	req3 := g.recv()
	cancel()
	if err := <-ch; !errors.Is(err, hybrid.ErrTimeout) {
		t.Errorf("cancelled: %v", err)
	}
	g.expect(OpRST, req3.SrcPort, 6002)
	// A late RESPONSE is answered with RST.
	g.send(g.hdr(OpResponse, 6002, req3.SrcPort), nil)
	g.expect(OpRST, req3.SrcPort, 6002)
	if n := g.connCount(); n != 0 {
		t.Errorf("%d connections left", n)
	}
}

func TestConnectGuestWithoutDriver(t *testing.T) {
	d, err := newDevice(Config{GuestCID: 5, RequestTimeout: 50 * time.Millisecond}, &simRings{})
	if err != nil {
		t.Fatal(err)
	}
	d.start()
	defer d.Close()
	if _, err := d.ConnectGuest(context.Background(), 1); !errors.Is(err, hybrid.ErrTimeout) {
		t.Errorf("ConnectGuest = %v", err)
	}
}

func TestConnectGuestAfterClose(t *testing.T) {
	g := newSimGuest(t, Config{}, simOpts{})
	g.d.Close()
	if _, err := g.d.ConnectGuest(context.Background(), 1); !errors.Is(err, hybrid.ErrReset) || !errors.Is(err, ErrClosed) {
		t.Errorf("ConnectGuest after Close = %v", err)
	}
}

func TestBrokenQueueResetsConnections(t *testing.T) {
	g := newSimGuest(t, Config{}, simOpts{})
	l := hostListener(t, g, 9000)
	g.send(g.hdr(OpRequest, 1, 9000), nil)
	g.expect(OpResponse, 9000, 1)
	hc := accept(t, l)
	g.reclaimTx()
	// A descriptor that chains to itself.
	g.tx.WriteDesc(0, g.tx.Mem.Base, 44, virtq.DescFlagNext, 0)
	g.tx.Publish(0)
	g.d.wake()
	if got, err := io.ReadAll(hc); err != nil || len(got) != 0 {
		t.Errorf("host after the reset: %q, %v", got, err)
	}
	if n := g.connCount(); n != 0 {
		t.Errorf("%d connections left", n)
	}
}

func TestNewRejects(t *testing.T) {
	for _, cid := range []uint32{0, 1, 2, 0xffffffff} {
		if d, err := New(Config{GuestCID: cid, SocketPath: "x", HostListenerBase: "y"}); d != nil || !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("CID %d: New = %v, %v", cid, d, err)
		}
	}
	if d, err := New(Config{GuestCID: 4}); d != nil || !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("no paths: New = %v, %v", d, err)
	}
}
