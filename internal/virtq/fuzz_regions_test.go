package virtq_test

import (
	"encoding/binary"
	"testing"
	"unsafe"

	"github.com/cloister/cloister/internal/virtq"
	"github.com/cloister/cloister/internal/virtq/virtqtest"
)

// FuzzHostileGuest is a guest that owns all of guest memory: the fuzzer
// chooses the queue size and start index, the layout of three memory
// regions (sizes, holes or adjacency between them), every byte of them
// (descriptor table, available ring, indirect tables, buffers) and a list
// of writes the guest makes to its rings while the device is reading
// (one at each device access). The device must not panic or loop, must
// either hand out chains whose every segment lies inside one region and
// number at most MaxSegments, or break the queue, and must keep the used
// index it publishes equal to its own.
func FuzzHostileGuest(f *testing.F) {
	// Seeds: valid traffic from the simulated driver, direct and indirect,
	// with buffers in the first region; and the same with a guest racing.
	for _, indirect := range []bool{false, true} {
		d := virtqtest.NewDriver(virtqtest.Options{Size: 8, Base: regionBase, ChainArea: 256})
		_, _ = d.Add([]virtqtest.Buffer{{Data: []byte("header")}, {Data: []byte("payload")}, {Write: true, Len: 32}}, indirect)
		_, _ = d.Add([]virtqtest.Buffer{{Write: true, Len: 64}}, false)
		img := d.Mem.Bytes[:min(len(d.Mem.Bytes), 16<<10)]
		f.Add(uint8(3), uint16(0), false, []byte{4, 0, 4}, img, []byte(nil))
		f.Add(uint8(3), uint16(0), true, []byte{1, 1, 2}, img, []byte{0x80, 2, 0, 0, 0x90, 14, 1, 0})
	}
	f.Add(uint8(0), uint16(65535), true, []byte{0, 0, 0}, make([]byte, 64), []byte{})

	f.Fuzz(func(t *testing.T, logSize uint8, start uint16, eventIdx bool, layout, image, race []byte) {
		size := uint16(1) << (logSize % 9) // 1..256
		n := uint64(size)
		// Region 0 holds the rings (descriptor table, then the
		// available ring, then the used ring at its end) and 16 KiB
		// of buffers; regions 1 and 2 follow after holes of 0..3
		// pages (0: adjacent) and are 1..4 pages long.
		lb := func(i int) uint64 {
			if i < len(layout) {
				return uint64(layout[i] % 4)
			}
			return 0
		}
		r0 := &virtq.SliceMemory{Base: regionBase, Bytes: make([]byte, 16*n+6+2*n+2+8+6+8*n+2+16<<10)}
		r1 := &virtq.SliceMemory{Base: r0.Base + uint64(len(r0.Bytes)) + 4096*lb(0), Bytes: make([]byte, 4096*(1+lb(1)))}
		r2 := &virtq.SliceMemory{Base: r1.Base + uint64(len(r1.Bytes)) + 4096*lb(2), Bytes: make([]byte, 4096*(1+lb(1)+lb(2)))}
		regions := []*virtq.SliceMemory{r0, r1, r2}
		rest := image
		for _, r := range regions {
			rest = rest[copy(r.Bytes, rest):]
		}
		cfg := virtq.Config{
			Size: size, DescAddr: r0.Base, AvailAddr: r0.Base + 16*n,
			UsedAddr: (r0.Base + uint64(len(r0.Bytes)) - (6 + 8*n + 2)) &^ 3,
			EventIdx: eventIdx, LastAvail: start,
		}
		// The racing guest: each device access applies the next
		// (offset, value) pair of race to the first 256 bytes of the
		// rings (descriptors, avail idx and ring).
		mem := &virtqtest.Racing{Memory: virtqtest.Regions(regions), OnSpan: func(uint64, uint64) {
			if len(race) >= 2 {
				off := int(race[0]) % min(len(r0.Bytes), 256)
				r0.Bytes[off] = race[1]
				race = race[2:]
			}
		}}
		q, err := virtq.New(mem, cfg)
		if err != nil {
			t.Fatalf("valid layout rejected: %v", err)
		}
		inside := func(s []byte) bool {
			p := uintptr(unsafe.Pointer(unsafe.SliceData(s)))
			for _, r := range regions {
				b := uintptr(unsafe.Pointer(unsafe.SliceData(r.Bytes)))
				if p >= b && p+uintptr(len(s)) <= b+uintptr(len(r.Bytes)) {
					return true
				}
			}
			return false
		}
		var c virtq.Chain
		for range 2*n + 2 {
			ok, err := q.Pop(&c)
			if err != nil || !ok {
				break
			}
			if k := len(c.Readable) + len(c.Writable); k > virtq.MaxSegments {
				t.Fatalf("chain of %d segments", k)
			}
			for _, s := range append(c.Readable, c.Writable...) {
				if len(s) == 0 || !inside(s) {
					t.Fatalf("segment of %d bytes outside guest memory", len(s))
				}
			}
			virtq.CopyIn(c.Writable, 0, []byte("written by the device"))
			if err := q.Push(c.Head, uint32(c.WritableLen())); err != nil {
				t.Fatal(err)
			}
			q.NeedNotify()
			q.EnableNotify()
		}
		usedOff := cfg.UsedAddr - r0.Base
		if used := binary.LittleEndian.Uint16(r0.Bytes[usedOff+2:]); used != q.UsedIdx() {
			t.Fatalf("used idx in memory %d, device %d", used, q.UsedIdx())
		}
	})
}

const regionBase = 0x10000
