package vsockdev

import (
	"bytes"
	"testing"

	"github.com/cloister/cloister/internal/virtq"
	"github.com/cloister/cloister/internal/virtq/virtqtest"
)

// FuzzVsockHeader feeds guest-chosen packets (headers and payloads, split
// across descriptors) through the device's tx path and collects what it
// answers on rx. The device must not panic, must answer only with
// well-formed packets addressed to the guest, and must never send data the
// host did not provide (no host peers exist here).
func FuzzVsockHeader(f *testing.F) {
	seed := func(h Header, payload []byte) []byte {
		h.Len = uint32(len(payload))
		return append(h.Bytes(), payload...)
	}
	base := Header{SrcCID: guestCID, DstCID: ParentCID, SrcPort: 1, DstPort: 9000, Type: TypeStream, BufAlloc: 4096}
	for _, op := range []uint16{OpRequest, OpResponse, OpRST, OpShutdown, OpRW, OpCreditUpdate, OpCreditRequest, 0, 8} {
		h := base
		h.Op = op
		f.Add(seed(h, []byte("payload")), uint8(3))
	}
	h := base
	h.DstCID = 77
	f.Add(seed(h, nil), uint8(0))
	h = base
	h.Type = TypeSeqpacket
	f.Add(seed(h, nil), uint8(50))
	f.Add([]byte{1, 2, 3}, uint8(1))

	f.Fuzz(func(t *testing.T, raw []byte, split uint8) {
		if len(raw) > 8192 {
			return
		}
		if len(raw) >= HeaderSize {
			h, err := ParseHeader(raw)
			if err != nil || !bytes.Equal(h.Bytes(), raw[:HeaderSize]) {
				t.Fatalf("header round trip: %v", err)
			}
		}
		rx := virtqtest.NewDriver(virtqtest.Options{Size: 16, ChainArea: 256})
		tx := virtqtest.NewDriver(virtqtest.Options{Size: 8, ChainArea: 8192 + 64})
		rings := &simRings{notified: [2]chan struct{}{make(chan struct{}, 1), make(chan struct{}, 1)}}
		rings.q[rxQueue], _ = virtq.New(rx.Mem, rx.Config())
		rings.q[txQueue], _ = virtq.New(tx.Mem, tx.Config())
		d, err := newDevice(Config{GuestCID: guestCID, HostListenerBase: t.TempDir() + "/vsock"}, rings)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		for range 8 {
			if _, err := rx.Add([]virtqtest.Buffer{{Write: true, Len: 20}, {Write: true, Len: 236}}, false); err != nil {
				t.Fatal(err)
			}
		}
		cut := min(int(split), len(raw))
		bufs := []virtqtest.Buffer{{Data: raw[:cut]}, {Data: raw[cut:]}}
		// The same packet twice: the second meets the state the first made.
		for range 2 {
			if _, err := tx.Add(bufs, split&1 == 1); err != nil {
				t.Fatal(err)
			}
			d.step()
		}
		for {
			u, ok, err := rx.Poll()
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				break
			}
			if u.Len == 0 {
				continue
			}
			p, err := ParseHeader(u.Data)
			if err != nil || u.Len != HeaderSize+p.Len {
				t.Fatalf("malformed rx packet of %d bytes: %v", u.Len, err)
			}
			if p.DstCID != guestCID || p.Op == OpRW || p.Len != 0 {
				t.Fatalf("unexpected rx packet %+v", p)
			}
		}
	})
}
