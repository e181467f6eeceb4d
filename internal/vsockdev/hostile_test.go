package vsockdev

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
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
	var wake chan struct{}
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
				// Forget earlier wake-ups: any after this
				// must come from the rx loop yielding.
				select {
				case <-wake:
				default:
				}
			}
		}}
	}})
	wake = g.d.wakeCh
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

// inject gives the device an established connection between host port
// local and guest port peer, as if the guest had connected and the host
// accepted, and returns the host's end. Without hostIO the connection's
// reader and writer do not run: nothing moves between the host socket and
// the connection's buffers, so the device's behaviour depends on the
// guest alone (closing the connection still closes the socket).
func (g *rawGuest) inject(local, peer uint32, hostIO bool) *net.UnixConn {
	g.t.Helper()
	devEnd, hostEnd, err := socketPair()
	if err != nil {
		g.t.Fatal(err)
	}
	g.t.Cleanup(func() { hostEnd.Close() })
	g.d.mu.Lock()
	defer g.d.mu.Unlock()
	c := g.d.newConn(connKey{local: local, peer: peer}, ParentCID, stateEstablished)
	c.hc = devEnd
	c.peerBufAlloc = 64 << 10
	g.d.conns[c.key] = c
	if hostIO {
		g.d.startIO(c)
	}
	return hostEnd
}

// expectEOF checks that the device closed the host end of a connection.
func expectEOF(t testing.TB, hc *net.UnixConn) {
	t.Helper()
	_ = hc.SetReadDeadline(time.Now().Add(20 * time.Second))
	if got, err := io.ReadAll(hc); err != nil || len(got) != 0 {
		t.Errorf("host end of a reset connection: %q, %v; want EOF", got, err)
	}
}

// ringAttacks are malformed rings a guest can write into either queue.
// far is the guest physical address of a 4 KiB region after a hole.
var ringAttacks = []struct {
	name   string
	attack func(d *virtqtest.Driver, far uint64)
}{
	{"descriptor chained to itself", func(d *virtqtest.Driver, far uint64) {
		d.WriteDesc(0, far, 64, virtq.DescFlagNext, 0)
		d.Publish(0)
	}},
	{"two-descriptor loop", func(d *virtqtest.Driver, far uint64) {
		d.WriteDesc(0, far, 64, virtq.DescFlagNext, 1)
		d.WriteDesc(1, far, 64, virtq.DescFlagNext, 0)
		d.Publish(0)
	}},
	{"loop inside an indirect table", func(d *virtqtest.Driver, far uint64) {
		tbl, _ := d.Scratch(1)
		d.WriteTable(tbl, []virtqtest.Desc{{Addr: far, Len: 64, Flags: virtq.DescFlagNext, Next: 1}, {Addr: far, Len: 64, Flags: virtq.DescFlagNext, Next: 0}})
		d.WriteDesc(0, tbl, 32, virtq.DescFlagIndirect, 0)
		d.Publish(0)
	}},
	{"nested indirect table", func(d *virtqtest.Driver, far uint64) {
		tbl, _ := d.Scratch(1)
		d.WriteTable(tbl, []virtqtest.Desc{{Addr: tbl, Len: 16, Flags: virtq.DescFlagIndirect}})
		d.WriteDesc(0, tbl, 16, virtq.DescFlagIndirect, 0)
		d.Publish(0)
	}},
	{"indirect table outside every region", func(d *virtqtest.Driver, far uint64) {
		d.WriteDesc(0, far+0x10_0000, 32, virtq.DescFlagIndirect, 0)
		d.Publish(0)
	}},
	{"addr+len overflows 64 bits", func(d *virtqtest.Driver, far uint64) {
		d.WriteDesc(0, ^uint64(0)-15, 64, virtq.DescFlagWrite, 0)
		d.Publish(0)
	}},
	{"buffer in the hole between regions", func(d *virtqtest.Driver, far uint64) {
		d.WriteDesc(0, far-0x1000, 64, virtq.DescFlagWrite, 0)
		d.Publish(0)
	}},
	{"buffer running into the hole", func(d *virtqtest.Driver, far uint64) {
		d.WriteDesc(0, far+0x1000-16, 64, 0, 0)
		d.Publish(0)
	}},
	{"huge descriptor", func(d *virtqtest.Driver, far uint64) {
		d.WriteDesc(0, far, 0xffff_ffff, 0, 0)
		d.Publish(0)
	}},
	{"avail index more than size ahead", func(d *virtqtest.Driver, far uint64) {
		d.SetAvailIdx(d.AvailIdx() + 9)
	}},
	{"avail index moved backwards", func(d *virtqtest.Driver, far uint64) {
		d.SetAvailIdx(d.AvailIdx() - 1)
	}},
	{"head index past the ring", func(d *virtqtest.Driver, far uint64) {
		d.Publish(8)
	}},
	{"next index past the ring", func(d *virtqtest.Driver, far uint64) {
		d.WriteDesc(0, far, 64, virtq.DescFlagNext, 8)
		d.Publish(0)
	}},
	{"readable after writable", func(d *virtqtest.Driver, far uint64) {
		d.WriteDesc(0, far, 64, virtq.DescFlagWrite|virtq.DescFlagNext, 1)
		d.WriteDesc(1, far, 64, 0, 0)
		d.Publish(0)
	}},
	{"more buffers than a chain may have", func(d *virtqtest.Driver, far uint64) {
		table := make([]virtqtest.Desc, virtq.MaxSegments+1)
		for i := range table {
			table[i] = virtqtest.Desc{Addr: far, Len: 1, Flags: virtq.DescFlagNext, Next: uint16(i + 1)}
		}
		table[len(table)-1].Flags = 0
		buf, _ := d.Scratch(1)
		d.WriteTable(buf, table)
		d.WriteDesc(0, buf, uint32(16*len(table)), virtq.DescFlagIndirect, 0)
		d.Publish(0)
	}},
}

// TestHostileRingsResetConnections writes each malformed ring into the tx
// and the rx queue of a device with an established connection. The device
// must return from its event loop, stop using the queue, reset every
// connection (the host sees EOF) and keep returning from later passes.
func TestHostileRingsResetConnections(t *testing.T) {
	const far = 0x4000_0000
	withHole := func(d *virtqtest.Driver) virtq.Memory {
		return virtqtest.Regions{d.Mem, &virtq.SliceMemory{Base: far, Bytes: make([]byte, 0x1000)}}
	}
	for _, q := range []int{txQueue, rxQueue} {
		for _, a := range ringAttacks {
			t.Run(fmt.Sprintf("%s/%s", []string{"rx", "tx"}[q], a.name), func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				g := newRawGuest(t, Config{}, rawOpts{rxMem: withHole, txMem: withHole, txSize: 8, rxSize: 8})
				hc := g.inject(9000, 1, false)
				drv := g.tx
				if q == rxQueue {
					drv = g.rx
					g.sendTx(toNowhere(5)) // something to deliver
				}
				a.attack(drv, far)
				g.stepCtx(ctx, "malformed ring")
				if err := g.rings.q[q].Err(); !errors.Is(err, virtq.ErrBroken) {
					t.Errorf("queue error %v, want ErrBroken", err)
				}
				if n := g.connCount(); n != 0 {
					t.Errorf("%d connections left", n)
				}
				expectEOF(t, hc)
				g.d.wake()
				g.stepCtx(ctx, "after the queue broke")
			})
		}
	}
}

func (g *rawGuest) connCount() int {
	g.d.mu.Lock()
	defer g.d.mu.Unlock()
	return len(g.d.conns)
}

// TestHostileHeaders sends malformed vsock headers on an established
// connection. Each must be dropped (a spoofed source) or answered with
// exactly one RST, and either leave the connection working (the header did
// not name it) or reset it (the header named it and was invalid); no
// payload of a refused packet may reach the host.
func TestHostileHeaders(t *testing.T) {
	const none, survives, reset = 0, true, false
	tests := []struct {
		name    string
		op      uint16
		mod     func(h *Header)
		payload string
		lenFld  uint32 // when non-zero, the header's len instead of the payload's
		reply   uint16 // none, or the op of the one expected answer
		alive   bool
	}{
		{"source claims to be the parent", OpRW, func(h *Header) { h.SrcCID = ParentCID }, "xx", 0, none, survives},
		{"source claims to be the host", OpRW, func(h *Header) { h.SrcCID = HostCID }, "xx", 0, none, survives},
		{"source claims another enclave", OpRW, func(h *Header) { h.SrcCID = guestCID + 1 }, "xx", 0, none, survives},
		{"source CID with high bits", OpRW, func(h *Header) { h.SrcCID = guestCID + 1<<32 }, "xx", 0, none, survives},
		{"source claims another enclave, RST", OpRST, func(h *Header) { h.SrcCID = 5 }, "", 0, none, survives},
		{"destination another enclave", OpRW, func(h *Header) { h.DstCID = 5 }, "xx", 0, OpRST, survives},
		{"destination the guest itself", OpRW, func(h *Header) { h.DstCID = guestCID }, "xx", 0, OpRST, survives},
		{"destination CID with high bits", OpRW, func(h *Header) { h.DstCID = ParentCID + 1<<32 }, "xx", 0, OpRST, survives},
		{"destination VMADDR_CID_ANY", OpRW, func(h *Header) { h.DstCID = 0xffffffff }, "xx", 0, OpRST, survives},
		{"type 0", OpRW, func(h *Header) { h.Type = 0 }, "xx", 0, OpRST, survives},
		{"type seqpacket", OpRW, func(h *Header) { h.Type = TypeSeqpacket }, "xx", 0, OpRST, survives},
		{"type 0xffff", OpRW, func(h *Header) { h.Type = 0xffff }, "xx", 0, OpRST, survives},
		{"len beyond the buffers", OpRW, nil, "xx", 100, OpRST, reset},
		{"len above 64 KiB", OpRW, nil, "xx", MaxPacketPayload + 1, OpRST, reset},
		{"len 0xffffffff", OpRW, nil, "xx", 0xffffffff, OpRST, reset},
		{"op 0 (invalid)", 0, nil, "", 0, OpRST, reset},
		{"op 8", 8, nil, "", 0, OpRST, reset},
		{"op 0xffff", 0xffff, nil, "", 0, OpRST, reset},
		{"RESPONSE to a guest-initiated connection", OpResponse, nil, "", 0, OpRST, reset},
		{"second REQUEST for a live connection", OpRequest, nil, "", 0, OpRST, reset},
		{"SHUTDOWN without a valid flag", OpShutdown, func(h *Header) { h.Flags = 0xfffffffc }, "", 0, none, survives},
		{"credit update at the 32-bit limits", OpCreditUpdate, func(h *Header) { h.BufAlloc, h.FwdCnt = 0xffffffff, 0xffffffff }, "", 0, none, survives},
		{"RW with no payload", OpRW, nil, "", 0, none, survives},
	}
	g := newSimGuest(t, Config{}, simOpts{txSplit: true})
	l := hostListener(t, g, 9000)
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g.t = t
			port := uint32(100 + i)
			g.send(g.hdr(OpRequest, port, 9000), nil)
			g.expect(OpResponse, 9000, port)
			hc := accept(t, l)

			h := g.hdr(tc.op, port, 9000)
			if tc.mod != nil {
				tc.mod(&h)
			}
			h.Len = uint32(len(tc.payload))
			if tc.lenFld != 0 {
				h.Len = tc.lenFld
			}
			g.sendRaw(append(h.Bytes(), tc.payload...))
			if tc.reply != none {
				if p := g.recv(); p.Op != tc.reply || p.DstPort != port {
					t.Fatalf("answer %s to port %d, want %s to %d", opName(p.Op), p.DstPort, opName(tc.reply), port)
				}
			}
			g.sentinel()
			if !tc.alive {
				expectEOF(t, hc)
				return
			}
			g.send(g.hdr(OpRW, port, 9000), []byte("ok"))
			if got := readN(t, hc, 2); string(got) != "ok" {
				t.Errorf("host read %q: a refused packet's payload reached the host", got)
			}
			g.send(g.hdr(OpRST, port, 9000), nil)
			expectEOF(t, hc)
		})
	}
}

// TestCreditLies: a guest that lies in buf_alloc/fwd_cnt (fwd_cnt ahead of
// what it was sent, wrapped around 2^32, a zero or shrinking window) never
// gets more data than buf_alloc - (sent - fwd_cnt) allows when that is
// non-negative, and none when its claims make it negative; the device's own
// read-ahead stays bounded whatever the guest says.
func TestCreditLies(t *testing.T) {
	g := newSimGuest(t, Config{}, simOpts{})
	l := hostListener(t, g, 9000)
	req := g.hdr(OpRequest, 1, 9000)
	req.BufAlloc = 1000
	g.send(req, nil)
	g.expect(OpResponse, 9000, 1)
	hc := accept(t, l)
	go func() { _, _ = hc.Write(make([]byte, 1<<20)) }()

	// noData sends the sentinel and checks that nothing but
	// CREDIT_REQUESTs come before its RST.
	noData := func(what string) {
		t.Helper()
		s := g.hdr(OpRequest, 7777, 1)
		s.DstCID = 99
		g.send(s, nil)
		for {
			p := g.recv()
			if p.Op == OpRST && p.DstPort == 7777 {
				return
			}
			if p.Op != OpCreditRequest {
				t.Fatalf("%s: got %s with %d bytes", what, opName(p.Op), len(p.payload))
			}
		}
	}
	// window receives RW packets until want bytes came and checks that no
	// more follow.
	window := func(want int) {
		t.Helper()
		n := 0
		for n < want {
			p := g.recv()
			switch p.Op {
			case OpRW:
				n += len(p.payload)
			case OpCreditRequest:
			default:
				t.Fatalf("unexpected %s", opName(p.Op))
			}
		}
		if n != want {
			t.Fatalf("received %d bytes on a %d-byte window", n, want)
		}
		noData("window used up")
	}
	window(1000)
	for _, lie := range []struct{ bufAlloc, fwdCnt uint32 }{
		{1000, 0xffffffff}, // fwd_cnt wrapped: 1001 bytes "in flight"
		{1000, 2000},       // consumed more than it was sent
		{1000, 1 << 31},    // half the counter space ahead
		{0, 1000},          // no window at all
		{999, 0},           // a shrinking window
	} {
		h := g.hdr(OpCreditUpdate, 1, 9000)
		h.BufAlloc, h.FwdCnt = lie.bufAlloc, lie.fwdCnt
		g.send(h, nil)
		noData(fmt.Sprintf("after the claim buf_alloc %d fwd_cnt %d", lie.bufAlloc, lie.fwdCnt))
	}
	// The truth again: one more window of exactly 1000 bytes.
	h := g.hdr(OpCreditUpdate, 1, 9000)
	h.BufAlloc, h.FwdCnt = 1000, 1000
	g.send(h, nil)
	window(1000)
	g.d.mu.Lock()
	for _, c := range g.d.conns {
		if c.rx.len() > rxBufferLimit+chunkSize {
			t.Errorf("%d bytes read ahead from the host, bound %d", c.rx.len(), rxBufferLimit+chunkSize)
		}
	}
	g.d.mu.Unlock()
}

// TestGuestCannotGrowDeviceBuffers: a guest that ignores the device's
// credit while the host reads nothing is reset once the data buffered for
// the host would exceed BufAlloc, and the buffer never exceeds it.
func TestGuestCannotGrowDeviceBuffers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const bufAlloc = 64 << 10
	g := newRawGuest(t, Config{BufAlloc: bufAlloc}, rawOpts{})
	hc := g.inject(9000, 1, true) // the host never reads
	for range 8 {
		g.postRx()
	}
	rw := Header{SrcCID: guestCID, DstCID: ParentCID, SrcPort: 1, DstPort: 9000, Type: TypeStream, Op: OpRW, Len: 4000}
	payload := append(rw.Bytes(), make([]byte, 4000)...)
	for i := 0; ; i++ {
		if i == 10000 {
			t.Fatal("40 MB accepted from a guest that ignores its credit")
		}
		g.sendTx(payload)
		g.stepCtx(ctx, "RW beyond the credit")
		g.reclaimTx()
		g.d.mu.Lock()
		c := g.d.conns[connKey{local: 9000, peer: 1}]
		n := 0
		if c != nil {
			n = c.tx.len()
		}
		g.d.mu.Unlock()
		if n > bufAlloc {
			t.Fatalf("%d bytes buffered for the host, BufAlloc %d", n, bufAlloc)
		}
		rst := false
		for _, p := range g.rxPackets() {
			g.postRx()
			rst = rst || p.Op == OpRST && p.DstPort == 1
		}
		if c == nil {
			if !rst {
				t.Fatal("connection dropped without an RST to the guest")
			}
			break
		}
	}
	_ = hc
}

// postRx posts one 4 KiB rx buffer.
func (g *rawGuest) postRx() {
	g.t.Helper()
	if _, err := g.rx.Add([]virtqtest.Buffer{{Write: true, Len: 4096}}, false); err != nil {
		g.t.Fatal(err)
	}
}

// reclaimTx takes back the tx chains the device returned.
func (g *rawGuest) reclaimTx() {
	g.t.Helper()
	for {
		if _, ok, err := g.tx.Poll(); err != nil {
			g.t.Fatal(err)
		} else if !ok {
			return
		}
	}
}

// TestRequestChurn: REQUEST then RST, over and over, on fresh ports. The
// RST closes each connection whether or not its dial finished, so MaxConns
// never fills, and every dial and I/O goroutine ends: nothing accumulates
// per REQUEST.
func TestRequestChurn(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	g := newSimGuest(t, Config{MaxConns: 8}, simOpts{})
	hostListener(t, g, 9000) // never accepts: connections wait in its backlog
	g.sentinel()
	before := runtime.NumGoroutine()
	const churn = 500
	for port := uint32(1); port <= churn; port++ {
		g.send(g.hdr(OpRequest, port, 9000), nil)
		g.send(g.hdr(OpRST, port, 9000), nil)
	}
	// A REQUEST after the churn still gets through.
	g.send(g.hdr(OpRequest, churn+1, 9000), nil)
	for {
		p := g.recv()
		if p.DstPort == churn+1 {
			if p.Op != OpResponse {
				t.Fatalf("REQUEST after the churn answered %s", opName(p.Op))
			}
			break
		}
		if p.Op != OpResponse && p.Op != OpRST {
			t.Fatalf("unexpected %s", opName(p.Op))
		}
	}
	g.send(g.hdr(OpRST, churn+1, 9000), nil)
	g.sentinel()
	if n := g.connCount(); n != 0 {
		t.Errorf("%d connections after the churn", n)
	}
	for {
		n := runtime.NumGoroutine()
		if n <= before {
			break
		}
		if ctx.Err() != nil {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines after the churn, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
		}
		runtime.Gosched()
		time.Sleep(time.Millisecond)
	}
}

// TestReadyListBoundedWithoutRx: a guest may leave its rx queue
// unconfigured (QEMU skips a ring whose address is 0) or break it, and
// keep using tx. Each connection that had something to send was queued
// for rx and stayed queued after it closed, since only the rx loop
// dropped closed entries: REQUEST, wait for the RESPONSE to be due, RST,
// again, grew the list by one connection per round, without bound.
func TestReadyListBoundedWithoutRx(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	g := newRawGuest(t, Config{MaxConns: 4}, rawOpts{txSize: 64})
	g.rings.q[rxQueue] = nil // never set up
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: g.d.cfg.HostListenerBase + "_9000", Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	const rounds = 300
	for port := uint32(1); port <= rounds; port++ {
		h := Header{SrcCID: guestCID, DstCID: ParentCID, SrcPort: port, DstPort: 9000, Type: TypeStream, Op: OpRequest}
		g.sendTx(h.Bytes())
		g.stepCtx(ctx, "REQUEST")
		// Wait for the dial: the RESPONSE is then due and the
		// connection queued for rx.
		for {
			g.d.mu.Lock()
			c := g.d.conns[connKey{local: 9000, peer: port}]
			st := stateClosed
			if c != nil {
				st = c.state
			}
			g.d.mu.Unlock()
			if st != stateDialing {
				break
			}
			if ctx.Err() != nil {
				t.Fatal("dial did not finish")
			}
			time.Sleep(100 * time.Microsecond)
		}
		h.Op = OpRST
		g.sendTx(h.Bytes())
		g.stepCtx(ctx, "RST")
		g.reclaimTx()
	}
	g.d.mu.Lock()
	n, conns := len(g.d.ready), len(g.d.conns)
	g.d.mu.Unlock()
	if bound := 2*g.d.cfg.MaxConns + 16; n > bound {
		t.Errorf("%d connections queued for rx after %d rounds (%d open); want at most %d", n, rounds, conns, bound)
	}
}
