package virtq_test

import (
	"errors"
	"testing"

	"github.com/cloister/cloister/internal/virtq"
	"github.com/cloister/cloister/internal/virtq/virtqtest"
)

// TestChainSegmentsBounded: a guest can describe one chain with up to
// Size-1 ring descriptors plus a 65536-entry indirect table, and each
// descriptor may cover several memory regions, so without a bound a single
// available-ring entry made the device build (and keep, since the Chain is
// reused) hundreds of thousands of segment slices. A chain of more than
// virtq.MaxSegments buffers breaks the queue, as vhost refuses more than
// UIO_MAXIOV iovecs; exactly virtq.MaxSegments is accepted.
func TestChainSegmentsBounded(t *testing.T) {
	tests := []struct {
		name  string
		segs  int
		build func(t *testing.T, segs int) (virtq.Memory, virtq.Config)
	}{
		{"indirect table", virtq.MaxSegments + 1, indirectChain},
		{"indirect table at the bound", virtq.MaxSegments, indirectChain},
		{"full 65536-entry indirect table", 1 << 16, indirectChain},
		{"ring chain", virtq.MaxSegments + 1, ringChain},
		{"ring chain at the bound", virtq.MaxSegments, ringChain},
		{"one descriptor over many regions", virtq.MaxSegments + 1, regionChain},
		{"one descriptor over regions at the bound", virtq.MaxSegments, regionChain},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mem, cfg := tc.build(t, tc.segs)
			q, err := virtq.New(mem, cfg)
			if err != nil {
				t.Fatal(err)
			}
			var c virtq.Chain
			ok, err := q.Pop(&c)
			if tc.segs > virtq.MaxSegments {
				if ok || !errors.Is(err, virtq.ErrBroken) {
					t.Fatalf("Pop of a %d-segment chain = %v, %v (%d segments taken); want ErrBroken",
						tc.segs, ok, err, len(c.Readable)+len(c.Writable))
				}
				return
			}
			if !ok || err != nil {
				t.Fatalf("Pop of a %d-segment chain = %v, %v", tc.segs, ok, err)
			}
			if got := len(c.Readable); got != tc.segs {
				t.Errorf("%d readable segments, want %d", got, tc.segs)
			}
		})
	}
}

// indirectChain: ring descriptor 0 points at an indirect table of segs
// one-byte readable buffers.
func indirectChain(t *testing.T, segs int) (virtq.Memory, virtq.Config) {
	d := virtqtest.NewDriver(virtqtest.Options{Size: 8, ChainArea: 1 << 20})
	table, _ := d.Scratch(0)
	bufs, _ := d.Scratch(1)
	descs := make([]virtqtest.Desc, segs)
	for i := range descs {
		descs[i] = virtqtest.Desc{Addr: bufs + uint64(i%4096), Len: 1}
		if i+1 < segs {
			descs[i].Flags, descs[i].Next = virtq.DescFlagNext, uint16(i+1)
		}
	}
	d.WriteTable(table, descs)
	d.WriteDesc(0, table, uint32(16*segs), virtq.DescFlagIndirect, 0)
	d.Publish(0)
	return d.Mem, d.Config()
}

// ringChain: segs ring descriptors chained 0 -> 1 -> ..., one byte each.
func ringChain(t *testing.T, segs int) (virtq.Memory, virtq.Config) {
	d := virtqtest.NewDriver(virtqtest.Options{Size: 2048, ChainArea: 16})
	bufs, _ := d.Scratch(0)
	for i := range segs {
		var flags, next uint16
		if i+1 < segs {
			flags, next = virtq.DescFlagNext, uint16(i+1)
		}
		d.WriteDesc(uint16(i), bufs+uint64(i%16), 1, flags, next)
	}
	d.Publish(0)
	return d.Mem, d.Config()
}

// regionChain: one descriptor covering segs adjacent one-byte regions.
func regionChain(t *testing.T, segs int) (virtq.Memory, virtq.Config) {
	d := virtqtest.NewDriver(virtqtest.Options{Size: 2, ChainArea: 64})
	const base = 0x1000_0000
	mem := virtqtest.Regions{d.Mem}
	for i := range segs {
		mem = append(mem, &virtq.SliceMemory{Base: base + uint64(i), Bytes: []byte{byte(i)}})
	}
	d.WriteDesc(0, base, uint32(segs), 0, 0)
	d.Publish(0)
	return mem, d.Config()
}
