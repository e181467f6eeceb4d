package vsockdev

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"net"
	"testing"
	"time"
)

// guestStream is the guest end of one established connection, honouring
// the device's credit and granting credit as it consumes data.
type guestStream struct {
	g                        *simGuest
	port, hostPort           uint32
	peerBufAlloc, peerFwdCnt uint32
	txCnt                    uint32
	bufAlloc                 uint32
	fwdCnt, lastFwdSent      uint32
	recvd                    []byte
	keep                     bool // keep the received bytes (else only count them)
	nrecv                    int
	peerShut                 uint32
}

func (s *guestStream) hdr(op uint16) Header {
	h := s.g.hdr(op, s.port, s.hostPort)
	h.BufAlloc, h.FwdCnt = s.bufAlloc, s.fwdCnt
	s.lastFwdSent = s.fwdCnt
	return h
}

func (s *guestStream) handle(p packet) {
	t := s.g.t
	t.Helper()
	if p.SrcPort != s.hostPort || p.DstPort != s.port {
		t.Fatalf("packet for another connection: %+v", p.Header)
	}
	s.peerBufAlloc, s.peerFwdCnt = p.BufAlloc, p.FwdCnt
	switch p.Op {
	case OpRW:
		if s.keep {
			s.recvd = append(s.recvd, p.payload...)
		}
		s.nrecv += len(p.payload)
		if uint32(s.nrecv)-s.fwdCnt > s.bufAlloc {
			t.Fatalf("device exceeded the guest's credit: %d bytes outstanding, buf_alloc %d", uint32(s.nrecv)-s.fwdCnt, s.bufAlloc)
		}
		s.fwdCnt += uint32(len(p.payload)) // consumed at once
		if s.fwdCnt-s.lastFwdSent >= s.bufAlloc/2 {
			s.g.send(s.hdr(OpCreditUpdate), nil)
		}
	case OpCreditRequest:
		s.g.send(s.hdr(OpCreditUpdate), nil)
	case OpCreditUpdate:
	case OpShutdown:
		s.peerShut |= p.Flags
	default:
		t.Fatalf("unexpected %s", opName(p.Op))
	}
}

// pump sends data and receives until at least want bytes arrived.
func (s *guestStream) pump(data []byte, want int) {
	t := s.g.t
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for len(data) > 0 || s.nrecv < want {
		progress := false
		for {
			p, ok := s.g.tryRecv()
			if !ok {
				break
			}
			s.handle(p)
			progress = true
		}
		if len(data) > 0 {
			credit := s.peerBufAlloc - (s.txCnt - s.peerFwdCnt)
			if credit > 0 {
				n := min(len(data), int(credit), MaxPacketPayload)
				s.g.send(s.hdr(OpRW), data[:n])
				data = data[n:]
				s.txCnt += uint32(n)
				progress = true
			}
		}
		if !progress {
			if time.Now().After(deadline) {
				t.Fatalf("stalled: %d bytes left to send, %d/%d received", len(data), s.nrecv, want)
			}
			s.g.wait(rxQueue)
		}
	}
}

// openStream connects the guest to a fresh host listener on port.
func openStream(t testing.TB, g *simGuest, port uint32) (*guestStream, *net.UnixConn) {
	t.Helper()
	l := hostListener(t, g, port)
	s := &guestStream{g: g, port: 40000 + port, hostPort: port, bufAlloc: 256 << 10}
	g.send(s.hdr(OpRequest), nil)
	p := g.expect(OpResponse, port, s.port)
	s.peerBufAlloc, s.peerFwdCnt = p.BufAlloc, p.FwdCnt
	return s, accept(t, l)
}

func TestBulkTransfer(t *testing.T) {
	const size = 6 << 20
	for _, lt := range []struct {
		name string
		o    simOpts
	}{
		{"4k rx buffers", simOpts{}},
		{"split headers", simOpts{rxSplit: true, txSplit: true, startIdx: 65000}},
		{"indirect event idx", simOpts{indirect: true, eventIdx: true, rxBuf: 64 << 10}},
	} {
		t.Run(lt.name, func(t *testing.T) {
			g := newSimGuest(t, Config{}, lt.o)
			s, hc := openStream(t, g, 9000)
			s.keep = true
			up := make([]byte, size)
			down := make([]byte, size)
			_, _ = rand.Read(up)
			_, _ = rand.Read(down)
			_ = hc.SetDeadline(time.Now().Add(120 * time.Second))

			hostGot := make(chan [32]byte, 1)
			go func() {
				h := sha256.New()
				_, _ = io.Copy(h, hc)
				var sum [32]byte
				copy(sum[:], h.Sum(nil))
				hostGot <- sum
			}()
			go func() {
				_, _ = hc.Write(down)
				_ = hc.CloseWrite()
			}()
			s.pump(up, size)
			sh := s.hdr(OpShutdown)
			sh.Flags = ShutdownSend
			g.send(sh, nil)
			if got := <-hostGot; got != sha256.Sum256(up) {
				t.Error("guest → host data corrupted")
			}
			if !bytes.Equal(s.recvd, down) {
				t.Errorf("host → guest data corrupted (%d bytes received)", len(s.recvd))
			}
		})
	}
}

// BenchmarkVsockThroughput measures bytes moved through the device's state
// machine between the simulated guest and a Unix-socket host peer.
func BenchmarkVsockThroughput(b *testing.B) {
	const chunk = 8 << 20
	b.Run("guest-to-host", func(b *testing.B) {
		g := newSimGuest(b, Config{}, simOpts{})
		s, hc := openStream(b, g, 9000)
		go func() { _, _ = io.Copy(io.Discard, hc) }()
		data := make([]byte, chunk)
		b.SetBytes(chunk)
		b.ResetTimer()
		for b.Loop() {
			s.pump(data, 0)
		}
	})
	b.Run("host-to-guest", func(b *testing.B) {
		g := newSimGuest(b, Config{}, simOpts{rxBuf: 64 << 10})
		s, hc := openStream(b, g, 9000)
		data := make([]byte, chunk)
		b.SetBytes(chunk)
		b.ResetTimer()
		for b.Loop() {
			want := s.nrecv + chunk
			go func() { _, _ = hc.Write(data) }()
			s.pump(nil, want)
		}
	})
	b.Run("host-to-guest-4k-buffers", func(b *testing.B) {
		g := newSimGuest(b, Config{}, simOpts{})
		s, hc := openStream(b, g, 9000)
		data := make([]byte, chunk)
		b.SetBytes(chunk)
		b.ResetTimer()
		for b.Loop() {
			want := s.nrecv + chunk
			go func() { _, _ = hc.Write(data) }()
			s.pump(nil, want)
		}
	})
}
