package vsockdev

import (
	"bytes"
	"context"
	"encoding/binary"
	"testing"
	"time"

	"github.com/cloister/cloister/internal/virtq"
	"github.com/cloister/cloister/internal/virtq/virtqtest"
)

// fuzzDevice builds a device without a running event loop over the given
// queues, with an established connection (host port 9000, guest port 1)
// whose reader and writer do not run, holding hostData for the guest. The
// outcome of an input then depends on the input alone (but for dials of
// host listeners, which fail at once), which keeps the fuzzer's coverage
// signal free of scheduling noise.
func fuzzDevice(t *testing.T, dir string, rxMem, txMem virtq.Memory, rxCfg, txCfg virtq.Config) (*Device, *simRings) {
	t.Helper()
	rings := &simRings{notified: [2]chan struct{}{make(chan struct{}, 1), make(chan struct{}, 1)}}
	var err error
	if rings.q[rxQueue], err = virtq.New(rxMem, rxCfg); err != nil {
		t.Fatal(err)
	}
	if rings.q[txQueue], err = virtq.New(txMem, txCfg); err != nil {
		t.Fatal(err)
	}
	d, err := newDevice(Config{GuestCID: guestCID, HostListenerBase: dir + "/vsock", MaxConns: 8}, rings)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	g := &rawGuest{t: t, d: d}
	g.inject(9000, 1, false)
	d.mu.Lock()
	d.conns[connKey{local: 9000, peer: 1}].rx.write(hostData)
	d.mu.Unlock()
	return d, rings
}

// fuzzStep runs one pass of the event loop, then waits for the dials of
// host listeners it started (they fail at once: there are none), so that
// what the next pass sees does not depend on scheduling. A pass that does
// not return within the deadline fails (the fuzzer reports the input).
func fuzzStep(t *testing.T, d *Device) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	g := &rawGuest{t: t, d: d}
	if err := g.tryStep(ctx); err != nil {
		t.Fatal(err)
	}
	for {
		d.mu.Lock()
		dialing := false
		for _, c := range d.conns {
			dialing = dialing || c.state == stateDialing
		}
		d.mu.Unlock()
		if !dialing {
			return
		}
		if ctx.Err() != nil {
			t.Fatal("a dial of a missing host listener did not fail")
		}
		time.Sleep(10 * time.Microsecond)
	}
}

// checkBounds checks the device's guest-driven state against its bounds.
func checkBounds(t *testing.T, d *Device) {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.conns) > d.cfg.MaxConns || len(d.ctrl) > maxCtrl || len(d.ready) > 2*d.cfg.MaxConns+16 {
		t.Fatalf("%d connections (max %d), %d control packets (max %d), %d ready", len(d.conns), d.cfg.MaxConns, len(d.ctrl), maxCtrl, len(d.ready))
	}
	for _, c := range d.conns {
		if c.tx.len() > int(d.cfg.BufAlloc) || c.rx.len() > rxBufferLimit+chunkSize {
			t.Fatalf("connection %d buffers %d bytes for the host, %d for the guest", c.key.local, c.tx.len(), c.rx.len())
		}
	}
}

// FuzzGuestRings gives the fuzzer every byte of both queues' guest memory
// (descriptor tables, available rings and indexes, indirect tables,
// buffers and the vsock packets in them, a second region after a hole)
// and a script of guest actions between passes of the device's event
// loop: publish a head on either ring, move an available index. The device
// must not panic, every pass must return, it must never write the tx
// queue's memory outside its used ring, its rx used elements must be
// plausible, and its state must stay within its bounds.
func FuzzGuestRings(f *testing.F) {
	// Seeds: valid traffic laid out by the simulated driver.
	for _, indirect := range []bool{false, true} {
		rx := virtqtest.NewDriver(virtqtest.Options{Size: 8, ChainArea: 512})
		tx := virtqtest.NewDriver(virtqtest.Options{Size: 8, ChainArea: 512})
		for range 4 {
			_, _ = rx.Add([]virtqtest.Buffer{{Write: true, Len: 20}, {Write: true, Len: 300}}, indirect)
		}
		hdr := Header{SrcCID: guestCID, DstCID: ParentCID, SrcPort: 1, DstPort: 9000, Type: TypeStream, BufAlloc: 4096}
		for _, op := range []uint16{OpRW, OpCreditRequest, OpCreditUpdate, OpShutdown, OpRequest} {
			h := hdr
			h.Op = op
			p := []byte("guest data")
			h.Len = uint32(len(p))
			raw := append(h.Bytes(), p...)
			_, _ = tx.Add([]virtqtest.Buffer{{Data: raw[:20]}, {Data: raw[20:]}}, indirect)
		}
		_, _ = tx.Add([]virtqtest.Buffer{{Data: toNowhere(5)}}, indirect)
		f.Add(rx.Mem.Bytes, tx.Mem.Bytes, []byte{0})
		f.Add(rx.Mem.Bytes, tx.Mem.Bytes, []byte{0, 0x40, 0x80, 0xc1, 0})
	}
	f.Add([]byte{}, []byte{}, []byte{0x41, 0x82, 0xff, 0})

	dir := f.TempDir() // no host listeners: every dial fails
	f.Fuzz(func(t *testing.T, rxImage, txImage, script []byte) {
		if len(script) > 64 {
			script = script[:64]
		}
		const far = 0x4000_0000
		newSide := func(image []byte) (*virtqtest.Driver, virtqtest.Regions) {
			d := virtqtest.NewDriver(virtqtest.Options{Size: 8, ChainArea: 512})
			mem := virtqtest.Regions{d.Mem, &virtq.SliceMemory{Base: far, Bytes: make([]byte, 4096)}}
			rest := image[copy(d.Mem.Bytes, image):]
			copy(mem[1].Bytes, rest)
			return d, mem
		}
		rx, rxMem := newSide(rxImage)
		tx, txMem := newSide(txImage)
		rxCfg, txCfg := rx.Config(), tx.Config()
		d, rings := fuzzDevice(t, dir, rxMem, txMem, rxCfg, txCfg)

		// The tx queue's used ring (flags, idx, ring, avail_event) is
		// the only tx memory the device may write.
		usedLo := int(txCfg.UsedAddr - tx.Mem.Base)
		usedHi := usedLo + 6 + 8*8
		snapshot := func() ([]byte, []byte) {
			return bytes.Clone(txMem[0].Bytes), bytes.Clone(txMem[1].Bytes)
		}
		lastUsed := rx.UsedIdx()
		for _, b := range append(script, 0) {
			switch b >> 6 {
			case 0:
				before0, before1 := snapshot()
				fuzzStep(t, d)
				after0, after1 := snapshot()
				if !bytes.Equal(before0[:usedLo], after0[:usedLo]) || !bytes.Equal(before0[usedHi:], after0[usedHi:]) ||
					!bytes.Equal(before1, after1) {
					t.Fatal("the device wrote tx memory outside the used ring")
				}
				for ; lastUsed != rx.UsedIdx(); lastUsed++ {
					// The guest may have moved the used ring's
					// content, not the device's bounds.
					head, n := usedElem(rx, lastUsed)
					if rings.q[rxQueue].Err() == nil && (head >= 8 || n > HeaderSize+MaxPacketPayload) {
						t.Fatalf("rx used element head %d len %d", head, n)
					}
				}
				checkBounds(t, d)
			case 1:
				tx.Publish(uint16(b & 7))
			case 2:
				rx.Publish(uint16(b & 7))
			case 3:
				if b&1 == 0 {
					tx.SetAvailIdx(tx.AvailIdx() + uint16(b>>1&15))
				} else {
					rx.SetAvailIdx(rx.AvailIdx() + uint16(b>>1&15))
				}
			}
		}
	})
}

// usedElem reads used-ring element i of d as the device wrote it.
func usedElem(d *virtqtest.Driver, i uint16) (head, n uint32) {
	b := d.Mem.Bytes[d.Config().UsedAddr-d.Mem.Base+4+8*uint64(i%8):]
	return binary.LittleEndian.Uint32(b), binary.LittleEndian.Uint32(b[4:])
}

// hostData is what the host end of the fuzzed connection sends.
var hostData = func() []byte {
	b := make([]byte, 5000)
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return b
}()

// Control bits of a FuzzGuestTraffic packet.
const (
	fzSrc      = 1 << iota // source CID := the guest's
	fzDst                  // destination CID := the parent
	fzConn                 // ports := the established connection's
	fzLen                  // len := the payload's length
	fzSplit                // header split across descriptors
	fzIndirect             // through an indirect table
	fzBig                  // payload length × 256
)

// FuzzGuestTraffic sends the device a sequence of guest packets through
// well-formed rings while an established connection has hostData to
// deliver. Each packet is a control byte, a payload length byte, 44 header
// bytes and the payload; control bits force fields to plausible values so
// the fuzzer reaches deep states. The device must not panic, every pass
// must return, its packets must be well-formed and addressed to the guest,
// it must deliver the host's bytes in order and never beyond the credit
// the guest last granted on that connection, and stay within its bounds.
func FuzzGuestTraffic(f *testing.F) {
	pkt := func(ctl, n byte, h Header, payload []byte) []byte {
		out := append([]byte{ctl, n}, h.Bytes()...)
		return append(out, payload...)
	}
	conn := Header{SrcCID: guestCID, DstCID: ParentCID, SrcPort: 1, DstPort: 9000, Type: TypeStream, BufAlloc: 1000}
	all := fzSrc | fzDst | fzConn | fzLen
	var session []byte
	for _, op := range []uint16{OpCreditUpdate, OpRW, OpCreditRequest, OpShutdown, OpRST} {
		h := conn
		h.Op = op
		if op == OpShutdown {
			h.Flags = ShutdownSend
		}
		session = append(session, pkt(byte(all|fzSplit), 4, h, []byte("data"))...)
	}
	f.Add(session)
	grant := conn
	grant.Op, grant.BufAlloc, grant.FwdCnt = OpCreditUpdate, 4096, 1000
	f.Add(append(pkt(byte(all), 0, conn, nil), pkt(byte(all|fzIndirect), 0, grant, nil)...))
	req := conn
	req.Op, req.SrcPort, req.DstPort = OpRequest, 7, 1234
	f.Add(pkt(byte(fzSrc|fzDst|fzLen), 0, req, nil))
	big := conn
	big.Op = OpRW
	f.Add(pkt(byte(all|fzBig), 255, big, nil))

	dir := f.TempDir() // no host listeners: every dial fails
	f.Fuzz(func(t *testing.T, stream []byte) {
		rx := virtqtest.NewDriver(virtqtest.Options{Size: 16, ChainArea: 512})
		tx := virtqtest.NewDriver(virtqtest.Options{Size: 4, ChainArea: HeaderSize + MaxPacketPayload + 64})
		d, _ := fuzzDevice(t, dir, rx.Mem, tx.Mem, rx.Config(), tx.Config())
		key := connKey{local: 9000, peer: 1}
		for range 8 {
			if _, err := rx.Add([]virtqtest.Buffer{{Write: true, Len: 300}, {Write: true, Len: 200}}, false); err != nil {
				t.Fatal(err)
			}
		}
		// The guest's credit for the connection: the initial one the
		// injected connection starts with, then its last claim the
		// device took.
		bufAlloc, fwdCnt := uint32(64<<10), uint32(0)
		sent := 0
		check := func() {
			t.Helper()
			for {
				u, ok, err := rx.Poll()
				if err != nil {
					t.Fatal(err)
				}
				if !ok {
					break
				}
				if _, err := rx.Add([]virtqtest.Buffer{{Write: true, Len: 300}, {Write: true, Len: 200}}, false); err != nil {
					t.Fatal(err)
				}
				if u.Len == 0 {
					continue
				}
				h, err := ParseHeader(u.Data)
				if err != nil || u.Len != HeaderSize+h.Len {
					t.Fatalf("malformed rx element of %d bytes: %v", u.Len, err)
				}
				if h.DstCID != guestCID || h.Op < OpRequest || h.Op > OpCreditRequest ||
					(h.Op != OpRST && (h.Type != TypeStream || h.SrcCID != ParentCID)) {
					t.Fatalf("bad packet from the device: %+v", h)
				}
				if h.Op != OpRW {
					continue
				}
				if h.SrcPort != 9000 || h.DstPort != 1 {
					t.Fatalf("data on a connection that has none: %+v", h)
				}
				p := u.Data[HeaderSize:]
				if !bytes.Equal(p, hostData[sent:sent+len(p)]) {
					t.Fatalf("bytes %d..%d are not the host's", sent, sent+len(p))
				}
				sent += len(p)
				if inFlight := uint32(sent) - fwdCnt; inFlight > bufAlloc {
					t.Fatalf("%d bytes in flight, the guest granted %d (fwd_cnt %d)", inFlight, bufAlloc, fwdCnt)
				}
			}
			checkBounds(t, d)
		}
		for len(stream) >= 2+HeaderSize {
			ctl, n := stream[0], int(stream[1])
			if ctl&fzBig != 0 {
				n *= 256
			}
			h, _ := ParseHeader(stream[2:])
			stream = stream[2+HeaderSize:]
			payload := make([]byte, n)
			stream = stream[copy(payload, stream):]
			if ctl&fzSrc != 0 {
				h.SrcCID = guestCID
			}
			if ctl&fzDst != 0 {
				h.DstCID = ParentCID
			}
			if ctl&fzConn != 0 {
				h.SrcPort, h.DstPort = 1, 9000
			}
			if ctl&fzLen != 0 {
				h.Len = uint32(n)
			}
			// The device takes the credit of a packet on the live
			// connection that it accepts (handleTx's checks).
			d.mu.Lock()
			_, alive := d.conns[key]
			d.mu.Unlock()
			if alive && h.SrcCID == guestCID && h.Type == TypeStream && (h.DstCID == HostCID || h.DstCID == ParentCID) &&
				h.SrcPort == 1 && h.DstPort == 9000 && h.Op != OpRST && h.Op != OpRequest &&
				h.Len <= MaxPacketPayload && int(h.Len) <= n {
				bufAlloc, fwdCnt = h.BufAlloc, h.FwdCnt
			}
			raw := append(h.Bytes(), payload...)
			bufs := []virtqtest.Buffer{{Data: raw}}
			if ctl&fzSplit != 0 {
				bufs = []virtqtest.Buffer{{Data: raw[:HeaderSize/2]}, {Data: raw[HeaderSize/2:]}}
			}
			if _, err := tx.Add(bufs, ctl&fzIndirect != 0); err != nil {
				t.Fatal(err)
			}
			fuzzStep(t, d)
			for {
				if _, ok, err := tx.Poll(); err != nil {
					t.Fatal(err)
				} else if !ok {
					break
				}
			}
			check()
		}
		fuzzStep(t, d)
		check()
	})
}
