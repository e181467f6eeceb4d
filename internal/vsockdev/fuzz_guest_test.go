package vsockdev

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/cloister/cloister/internal/virtq"
	"github.com/cloister/cloister/internal/virtq/virtqtest"
)

// fuzzDevice builds a device without a running event loop over the given
// queues, with an established connection (host port 9000, guest port 1)
// whose host end is returned.
func fuzzDevice(t *testing.T, rxMem, txMem virtq.Memory, rxCfg, txCfg virtq.Config) (*Device, *simRings, *net.UnixConn) {
	t.Helper()
	rings := &simRings{notified: [2]chan struct{}{make(chan struct{}, 1), make(chan struct{}, 1)}}
	var err error
	if rings.q[rxQueue], err = virtq.New(rxMem, rxCfg); err != nil {
		t.Fatal(err)
	}
	if rings.q[txQueue], err = virtq.New(txMem, txCfg); err != nil {
		t.Fatal(err)
	}
	d, err := newDevice(Config{GuestCID: guestCID, HostListenerBase: t.TempDir() + "/vsock", MaxConns: 8}, rings)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	g := &rawGuest{t: t, d: d}
	return d, rings, g.inject(9000, 1)
}

// fuzzStep runs one pass of the event loop; a pass that does not return
// within the deadline fails (the fuzzer reports the input).
func fuzzStep(t *testing.T, d *Device) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	g := &rawGuest{t: t, d: d}
	if err := g.tryStep(ctx); err != nil {
		t.Fatal(err)
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
		d, rings, hc := fuzzDevice(t, rxMem, txMem, rxCfg, txCfg)
		go func() { _, _ = io.Copy(io.Discard, hc) }()

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
