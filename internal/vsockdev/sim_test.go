package vsockdev

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/cloister/cloister/internal/virtq"
	"github.com/cloister/cloister/internal/virtq/virtqtest"
)

// simRings gives the device its two queues over simulated guest memory.
type simRings struct {
	mu       sync.Mutex
	q        [2]*virtq.Queue
	notified [2]chan struct{}
}

func (r *simRings) With(i int, f func(q *virtq.Queue)) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	q := r.q[i]
	if q == nil || q.Err() != nil {
		return false
	}
	f(q)
	if q.NeedNotify() {
		select {
		case r.notified[i] <- struct{}{}:
		default:
		}
	}
	return true
}

// simOpts selects how the simulated guest lays out its buffers.
type simOpts struct {
	// rxSplit posts rx buffers as three descriptors (10 + 34 + rest
	// bytes), so the header straddles descriptors.
	rxSplit bool
	// rxBuf is the size of each rx buffer (default 4096, like Linux).
	rxBuf int
	// txSplit sends each tx packet as header[:20], header[20:]+payload[:7],
	// payload[7:].
	txSplit bool
	// indirect sends tx packets through indirect tables.
	indirect bool
	// startIdx starts both rings near the 16-bit wrap.
	startIdx uint16
	// eventIdx negotiates EVENT_IDX.
	eventIdx bool
}

type packet struct {
	Header
	payload []byte
}

// simGuest is the guest side: a driver for each queue and a tiny vsock
// stack (enough to send packets and read the device's).
type simGuest struct {
	t     testing.TB
	d     *Device
	rings *simRings
	rx    *virtqtest.Driver
	tx    *virtqtest.Driver
	o     simOpts
	cid   uint32
}

const guestCID = 4

func newSimGuest(t testing.TB, cfg Config, o simOpts) *simGuest {
	t.Helper()
	if o.rxBuf == 0 {
		o.rxBuf = 4096
	}
	if cfg.GuestCID == 0 {
		cfg.GuestCID = guestCID
	}
	if cfg.HostListenerBase == "" {
		cfg.HostListenerBase = t.TempDir() + "/vsock"
	}
	rx := virtqtest.NewDriver(virtqtest.Options{Size: 64, ChainArea: o.rxBuf, StartIdx: o.startIdx, EventIdx: o.eventIdx})
	tx := virtqtest.NewDriver(virtqtest.Options{Size: 128, ChainArea: HeaderSize + MaxPacketPayload + 64, StartIdx: o.startIdx, EventIdx: o.eventIdx})
	rings := &simRings{notified: [2]chan struct{}{make(chan struct{}, 1), make(chan struct{}, 1)}}
	var err error
	if rings.q[rxQueue], err = virtq.New(rx.Mem, rx.Config()); err != nil {
		t.Fatal(err)
	}
	if rings.q[txQueue], err = virtq.New(tx.Mem, tx.Config()); err != nil {
		t.Fatal(err)
	}
	d, err := newDevice(cfg, rings)
	if err != nil {
		t.Fatal(err)
	}
	d.start()
	t.Cleanup(func() { d.Close() })
	g := &simGuest{t: t, d: d, rings: rings, rx: rx, tx: tx, o: o, cid: cfg.GuestCID}
	for g.postRx() {
	}
	d.wake()
	return g
}

// postRx posts one rx buffer; false when the ring is full.
func (g *simGuest) postRx() bool {
	var bufs []virtqtest.Buffer
	if g.o.rxSplit {
		bufs = []virtqtest.Buffer{{Write: true, Len: 10}, {Write: true, Len: 34}, {Write: true, Len: g.o.rxBuf - 44}}
	} else {
		bufs = []virtqtest.Buffer{{Write: true, Len: g.o.rxBuf}}
	}
	_, err := g.rx.Add(bufs, false)
	if errors.Is(err, virtqtest.ErrNoSpace) {
		return false
	}
	if err != nil {
		g.t.Fatal(err)
	}
	return true
}

// hdr returns a header from the guest (cid:src) to (dstCID:dst).
func (g *simGuest) hdr(op uint16, src, dst uint32) Header {
	return Header{
		SrcCID: uint64(g.cid), DstCID: ParentCID, SrcPort: src, DstPort: dst,
		Type: TypeStream, Op: op, BufAlloc: 256 << 10,
	}
}

// reclaimTx frees tx chains the device finished.
func (g *simGuest) reclaimTx() {
	for {
		_, ok, err := g.tx.Poll()
		if err != nil {
			g.t.Fatal(err)
		}
		if !ok {
			return
		}
	}
}

// send queues a packet on the tx queue and notifies the device.
func (g *simGuest) send(h Header, payload []byte) {
	g.t.Helper()
	h.Len = uint32(len(payload))
	raw := append(h.Bytes(), payload...)
	g.sendRaw(raw)
}

func (g *simGuest) sendRaw(raw []byte) {
	g.t.Helper()
	var bufs []virtqtest.Buffer
	if g.o.txSplit && len(raw) > 27 {
		bufs = []virtqtest.Buffer{{Data: raw[:20]}, {Data: raw[20:27]}, {Data: raw[27:]}}
	} else {
		bufs = []virtqtest.Buffer{{Data: raw}}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		g.reclaimTx()
		_, err := g.tx.Add(bufs, g.o.indirect)
		if err == nil {
			break
		}
		if !errors.Is(err, virtqtest.ErrNoSpace) || time.Now().After(deadline) {
			g.t.Fatalf("tx Add: %v", err)
		}
		g.d.wake()
		g.wait(txQueue)
	}
	g.d.wake() // the kick
}

func (g *simGuest) wait(q int) {
	select {
	case <-g.rings.notified[q]:
	case <-time.After(5 * time.Millisecond):
	}
}

// tryRecv returns the next packet the device sent, if any, and reposts the
// buffer.
func (g *simGuest) tryRecv() (packet, bool) {
	g.t.Helper()
	u, ok, err := g.rx.Poll()
	if err != nil {
		g.t.Fatal(err)
	}
	if !ok {
		return packet{}, false
	}
	g.postRx()
	g.d.wake()
	h, err := ParseHeader(u.Data)
	if err != nil {
		g.t.Fatalf("rx element of %d bytes: %v", u.Len, err)
	}
	if int(u.Len) != HeaderSize+int(h.Len) {
		g.t.Fatalf("rx element of %d bytes carries header len %d", u.Len, h.Len)
	}
	return packet{Header: h, payload: u.Data[HeaderSize:]}, true
}

// recv waits for the next packet from the device.
func (g *simGuest) recv() packet {
	g.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if p, ok := g.tryRecv(); ok {
			return p
		}
		if time.Now().After(deadline) {
			g.t.Fatal("no packet from the device")
		}
		g.wait(rxQueue)
	}
}

// expect receives the next packet and checks its op and addresses.
func (g *simGuest) expect(op uint16, src, dst uint32) packet {
	g.t.Helper()
	p := g.recv()
	if p.Op != op || p.SrcPort != src || p.DstPort != dst || p.DstCID != uint64(g.cid) || p.Type != TypeStream {
		g.t.Fatalf("got %s %d:%d -> %d:%d type %d, want %s %d -> %d",
			opName(p.Op), p.SrcCID, p.SrcPort, p.DstCID, p.DstPort, p.Type, opName(op), src, dst)
	}
	return p
}
