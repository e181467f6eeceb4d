package vsockdev

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloister/cloister/internal/virtq"
	"github.com/cloister/cloister/internal/virtq/virtqtest"
)

// rawGuest is a hostile guest that writes its rings by hand. The device's
// event loop does not run: the test calls step, so every outcome is
// deterministic.
type rawGuest struct {
	t      testing.TB
	d      *Device
	rings  *simRings
	rx, tx *virtqtest.Driver
}

// rawOpts shapes a rawGuest's queues.
type rawOpts struct {
	rxSize, txSize uint16
	// rxMem and txMem, when set, wrap the drivers' memory (a Racing guest,
	// regions with holes).
	rxMem, txMem func(d *virtqtest.Driver) virtq.Memory
}

func newRawGuest(t testing.TB, cfg Config, o rawOpts) *rawGuest {
	t.Helper()
	if cfg.GuestCID == 0 {
		cfg.GuestCID = guestCID
	}
	if cfg.HostListenerBase == "" {
		cfg.HostListenerBase = t.TempDir() + "/vsock"
	}
	if o.rxSize == 0 {
		o.rxSize = 8
	}
	if o.txSize == 0 {
		o.txSize = 8
	}
	rx := virtqtest.NewDriver(virtqtest.Options{Size: o.rxSize, ChainArea: 4096})
	tx := virtqtest.NewDriver(virtqtest.Options{Size: o.txSize, ChainArea: 4096})
	mem := func(wrap func(*virtqtest.Driver) virtq.Memory, d *virtqtest.Driver) virtq.Memory {
		if wrap == nil {
			return d.Mem
		}
		return wrap(d)
	}
	rings := &simRings{notified: [2]chan struct{}{make(chan struct{}, 1), make(chan struct{}, 1)}}
	var err error
	if rings.q[rxQueue], err = virtq.New(mem(o.rxMem, rx), rx.Config()); err != nil {
		t.Fatal(err)
	}
	if rings.q[txQueue], err = virtq.New(mem(o.txMem, tx), tx.Config()); err != nil {
		t.Fatal(err)
	}
	d, err := newDevice(cfg, rings)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return &rawGuest{t: t, d: d, rings: rings, rx: rx, tx: tx}
}

// stepCtx runs one pass of the device's event loop and fails the test when
// it has not returned by the time ctx ends.
func (g *rawGuest) stepCtx(ctx context.Context, what string) {
	g.t.Helper()
	if err := g.tryStep(ctx); err != nil {
		g.t.Fatalf("%s: %v", what, err)
	}
}

// tryStep runs one pass of the device's event loop and reports an error
// when it has not returned by the time ctx ends (it waits for the pass to
// end anyway, so the test must make it end once ctx is done).
func (g *rawGuest) tryStep(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		defer close(done)
		g.d.step()
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		<-done
		return fmt.Errorf("the device's event loop did not return: %w", ctx.Err())
	}
}

// sendTx makes one well-formed tx chain holding raw available.
func (g *rawGuest) sendTx(raw []byte) {
	g.t.Helper()
	if _, err := g.tx.Add([]virtqtest.Buffer{{Data: raw}}, false); err != nil {
		g.t.Fatal(err)
	}
}

// rxPackets returns the packets the device put on the used rx ring since
// the last call (a zero-length element yields a zero Header).
func (g *rawGuest) rxPackets() []packet {
	g.t.Helper()
	var out []packet
	for {
		u, ok, err := g.rx.Poll()
		if err != nil {
			g.t.Fatal(err)
		}
		if !ok {
			return out
		}
		if u.Len == 0 {
			out = append(out, packet{})
			continue
		}
		h, err := ParseHeader(u.Data)
		if err != nil || u.Len != HeaderSize+h.Len {
			g.t.Fatalf("malformed rx element of %d bytes: %v", u.Len, err)
		}
		out = append(out, packet{Header: h, payload: u.Data[HeaderSize:]})
	}
}

// toNowhere is a REQUEST to a CID that does not exist: the device answers
// it with RST, which gives it something to send.
func toNowhere(port uint32) []byte {
	return Header{SrcCID: guestCID, DstCID: 99, SrcPort: port, DstPort: 1, Type: TypeStream, Op: OpRequest}.Bytes()
}

// TestRxLoopYields is CVE-2019-3900 for this device: with a packet to
// deliver and a guest that keeps re-posting an rx buffer too small for a
// header (each one is returned empty and the packet stays queued), the rx
// loop must still give the event loop back after a bounded batch instead
// of spinning under the device lock, starving tx and every connection.
func TestRxLoopYields(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var buf uint64
	var rx *virtqtest.Driver
	reposted := 0
	g := newRawGuest(t, Config{}, rawOpts{rxSize: 4, rxMem: func(d *virtqtest.Driver) virtq.Memory {
		rx = d
		buf, _ = d.Scratch(0)
		// The guest vCPU re-posts descriptor 0 whenever the device looks
		// at it, until the test gives up.
		return &virtqtest.Racing{Memory: d.Mem, OnSpan: func(addr, _ uint64) {
			if addr == buf && ctx.Err() == nil {
				rx.Publish(0)
				reposted++
			}
		}}
	}})
	rx.WriteDesc(0, buf, 8, virtq.DescFlagWrite, 0)
	rx.Publish(0)
	g.sendTx(toNowhere(5))

	if err := g.tryStep(ctx); err != nil {
		t.Fatalf("guest re-posting tiny rx buffers: %v (%d buffers taken)", err, reposted)
	}
	if reposted > rxBatch {
		t.Errorf("the device took %d rx buffers in one pass, want at most %d", reposted, rxBatch)
	}
	select {
	case <-g.d.wakeCh:
	default:
		t.Error("the device yielded without scheduling another pass")
	}
	// The guest stops cheating: the RST is still there for a real buffer.
	cancel()
	for {
		head, n, ok := rx.PollRaw()
		if !ok {
			break
		}
		if head != 0 || n != 0 {
			t.Fatalf("used element %d with %d bytes; want only the empty 8-byte buffer", head, n)
		}
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel2()
	rx.WriteDesc(1, buf+64, HeaderSize, virtq.DescFlagWrite, 0)
	rx.Publish(1)
	g.stepCtx(ctx2, "with a real buffer")
	var got []Header
	for {
		head, n, ok := rx.PollRaw()
		if !ok {
			break
		}
		if head == 1 && n == HeaderSize {
			h, _ := ParseHeader(rx.Mem.Bytes[buf+64-rx.Mem.Base:])
			got = append(got, h)
		}
	}
	if len(got) != 1 || got[0].Op != OpRST || got[0].DstPort != 5 {
		t.Errorf("got %+v, want one RST to port 5", got)
	}
}

// countHandler counts log records at Warn level and above.
type countHandler struct{ n atomic.Int64 }

func (h *countHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		h.n.Add(1)
	}
	return nil
}
func (h *countHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countHandler) WithGroup(string) slog.Handler      { return h }

// TestRequestFlood: a guest that floods REQUESTs gets at most MaxConns
// connections, RST for the rest, and (it used to log a warning per
// refused REQUEST, a log line per 44 guest bytes) one warning per burst.
func TestRequestFlood(t *testing.T) {
	logs := &countHandler{}
	g := newSimGuest(t, Config{MaxConns: 4, Logger: slog.New(logs)}, simOpts{})
	l := hostListener(t, g, 9000)
	const flood = 200
	for port := uint32(1); port <= flood; port++ {
		g.send(g.hdr(OpRequest, port, 9000), nil)
	}
	responses, rsts := 0, 0
	for range flood {
		switch p := g.recv(); p.Op {
		case OpResponse:
			responses++
			accept(t, l)
		case OpRST:
			rsts++
		default:
			t.Fatalf("unexpected %s", opName(p.Op))
		}
	}
	if responses != 4 || rsts != flood-4 {
		t.Errorf("%d RESPONSE and %d RST, want 4 and %d", responses, rsts, flood-4)
	}
	if n := g.connCount(); n != 4 {
		t.Errorf("%d connections, want 4", n)
	}
	if n := logs.n.Load(); n != 1 {
		t.Errorf("%d warnings for one flood of refused REQUESTs, want 1", n)
	}
}

// TestPacketsNotForTheHost: an RST not addressed to the host (another CID)
// or of another socket type names no host connection; it used to close the
// parent connection with the same ports. Linux drops such packets.
func TestPacketsNotForTheHost(t *testing.T) {
	g := newSimGuest(t, Config{}, simOpts{})
	l := hostListener(t, g, 9000)
	g.send(g.hdr(OpRequest, 1, 9000), nil)
	g.expect(OpResponse, 9000, 1)
	hc := accept(t, l)
	for _, mod := range []func(h *Header){
		func(h *Header) { h.DstCID = 77 },
		func(h *Header) { h.DstCID = guestCID },
		func(h *Header) { h.DstCID = ParentCID + 1<<32 },
		func(h *Header) { h.Type = TypeSeqpacket },
		func(h *Header) { h.Type = 0 },
	} {
		h := g.hdr(OpRST, 1, 9000)
		mod(&h)
		g.send(h, nil)
	}
	g.sentinel()
	g.send(g.hdr(OpRW, 1, 9000), []byte("still open"))
	if got := readN(t, hc, 10); string(got) != "still open" {
		t.Errorf("host read %q", got)
	}
}

// TestWrongWriteFlags: a tx chain with device-writable buffers, or an rx
// chain with device-readable ones, is not what the driver may post (Linux's
// vhost-vsock and Firecracker refuse both). The tx packet is dropped
// unprocessed; the rx chain is returned unused and the packet goes into
// the next buffer.
func TestWrongWriteFlags(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	g := newRawGuest(t, Config{}, rawOpts{})
	// tx: a valid REQUEST, but the chain also offers the device a
	// writable buffer. Dropped, no RST.
	if _, err := g.tx.Add([]virtqtest.Buffer{{Data: toNowhere(6)}, {Write: true, Len: 64}}, false); err != nil {
		t.Fatal(err)
	}
	// tx: only writable buffers.
	if _, err := g.tx.Add([]virtqtest.Buffer{{Write: true, Len: 64}}, false); err != nil {
		t.Fatal(err)
	}
	g.sendTx(toNowhere(7))
	// rx: a readable buffer before the writable space, then a good one.
	if _, err := g.rx.Add([]virtqtest.Buffer{{Data: make([]byte, 64)}, {Write: true, Len: 4000}}, false); err != nil {
		t.Fatal(err)
	}
	if _, err := g.rx.Add([]virtqtest.Buffer{{Write: true, Len: 4000}}, false); err != nil {
		t.Fatal(err)
	}
	g.stepCtx(ctx, "wrong write flags")
	got := g.rxPackets()
	if len(got) != 2 || got[0].Op != 0 || got[1].Op != OpRST || got[1].DstPort != 7 {
		t.Errorf("rx elements %+v; want an unused one, then the RST to port 7 only", got)
	}
	for {
		u, ok, err := g.tx.Poll()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		if u.Len != 0 {
			t.Errorf("tx chain %d returned with %d bytes written", u.Head, u.Len)
		}
	}
}
