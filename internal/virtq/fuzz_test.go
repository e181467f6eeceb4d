package virtq_test

import (
	"encoding/binary"
	"testing"

	"github.com/cloister/cloister/internal/virtq"
	"github.com/cloister/cloister/internal/virtq/virtqtest"
)

// FuzzDescriptorChain lets the fuzzer write the descriptor table, the
// available ring and the rest of guest memory. The device must never panic,
// never loop and must either return chains whose buffers lie in guest memory
// or report a broken queue.
func FuzzDescriptorChain(f *testing.F) {
	// Seeds: valid layouts produced by the simulated driver.
	for _, indirect := range []bool{false, true} {
		d := virtqtest.NewDriver(virtqtest.Options{Size: 8, Base: 0x10000, ChainArea: 256})
		_, _ = d.Add([]virtqtest.Buffer{{Data: []byte("hdr")}, {Data: []byte("payload")}, {Write: true, Len: 16}}, indirect)
		_, _ = d.Add([]virtqtest.Buffer{{Write: true, Len: 64}}, false)
		f.Add(uint8(3), uint16(0), false, d.Mem.Bytes[:8192])
	}
	f.Add(uint8(0), uint16(65535), true, make([]byte, 64))
	f.Fuzz(func(t *testing.T, logSize uint8, start uint16, eventIdx bool, image []byte) {
		const memSize = 64 << 10
		size := uint16(1) << (logSize % 9) // 1..256
		mem := &virtq.SliceMemory{Base: 0x10000, Bytes: make([]byte, memSize)}
		copy(mem.Bytes, image)
		n := int(size)
		cfg := virtq.Config{
			Size:      size,
			DescAddr:  0x10000,
			AvailAddr: 0x10000 + uint64(16*n),
			UsedAddr:  0x10000 + memSize - uint64(6+8*n) - 2,
			EventIdx:  eventIdx,
			LastAvail: start,
		}
		cfg.UsedAddr &^= 3
		q, err := virtq.New(mem, cfg)
		if err != nil {
			t.Fatalf("valid layout rejected: %v", err)
		}
		var c virtq.Chain
		for range 2*n + 2 {
			ok, err := q.Pop(&c)
			if err != nil || !ok {
				break
			}
			for _, s := range append(c.Readable, c.Writable...) {
				if len(s) == 0 {
					t.Fatal("empty segment")
				}
			}
			virtq.CopyIn(c.Writable, 0, []byte("written by the device"))
			if err := q.Push(c.Head, uint32(c.WritableLen())); err != nil {
				t.Fatal(err)
			}
			q.NeedNotify()
			q.EnableNotify()
		}
		if used := binary.LittleEndian.Uint16(mem.Bytes[cfg.UsedAddr-0x10000+2:]); used != q.UsedIdx() {
			t.Fatalf("used idx in memory %d, device %d", used, q.UsedIdx())
		}
	})
}
