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

// TestHostileRings adds to TestBroken the layouts a malicious guest kernel
// can write with several memory regions and with a vCPU racing the device.
// Every case must break the queue (ErrBroken, and ErrOutOfBounds where an
// address is at fault) without panicking or looping.
func TestHostileRings(t *testing.T) {
	const size = 8
	// Guest memory: the driver's region at 0x10000, a hole, then a second
	// 4 KiB region at 0x80_0000 whose end is adjacent to nothing, and a
	// region at the top of the address space that claims to wrap past
	// 2^64 (vhostuser refuses such a region; virtq must not rely on it).
	const far = 0x80_0000
	const top = ^uint64(0) - 0xfff
	tests := []struct {
		name   string
		oob    bool // the error must also be ErrOutOfBounds
		attack func(d *virtqtest.Driver)
		race   func(d *virtqtest.Driver) func(addr, n uint64)
	}{
		{name: "descriptor in the hole between regions", oob: true, attack: func(d *virtqtest.Driver) {
			d.WriteDesc(0, far-0x1000, 16, 0, 0)
			d.Publish(0)
		}},
		{name: "buffer running from a region into the hole", oob: true, attack: func(d *virtqtest.Driver) {
			d.WriteDesc(0, far+0x1000-8, 16, virtq.DescFlagWrite, 0)
			d.Publish(0)
		}},
		{name: "buffer below every region", oob: true, attack: func(d *virtqtest.Driver) {
			d.WriteDesc(0, 0, 1, 0, 0)
			d.Publish(0)
		}},
		{name: "addr+len overflows 64 bits", oob: true, attack: func(d *virtqtest.Driver) {
			d.WriteDesc(0, ^uint64(0)-3, 8, 0, 0)
			d.Publish(0)
		}},
		{name: "huge descriptor", oob: true, attack: func(d *virtqtest.Driver) {
			d.WriteDesc(0, far, 0xffff_ffff, virtq.DescFlagWrite, 0)
			d.Publish(0)
		}},
		{name: "indirect table across the hole", oob: true, attack: func(d *virtqtest.Driver) {
			d.WriteDesc(0, far+0x1000-16, 32, virtq.DescFlagIndirect, 0)
			d.Publish(0)
		}},
		{name: "buffer wrapping the address space in a region that wraps", oob: true, attack: func(d *virtqtest.Driver) {
			d.WriteDesc(0, top+0xff0, 32, 0, 0)
			d.Publish(0)
		}},
		{name: "indirect table wrapping the address space in a region that wraps", oob: true, attack: func(d *virtqtest.Driver) {
			d.WriteDesc(0, top+0xff0, 32, virtq.DescFlagIndirect, 0)
			d.Publish(0)
		}},
		{name: "indirect table larger than 65536 entries", attack: func(d *virtqtest.Driver) {
			d.WriteDesc(0, d.Mem.Base, 16*(1<<16+1), virtq.DescFlagIndirect, 0)
			d.Publish(0)
		}},
		{name: "indirect entry pointing at a second table", attack: func(d *virtqtest.Driver) {
			t1, _ := d.Scratch(0)
			t2, _ := d.Scratch(1)
			d.WriteTable(t2, []virtqtest.Desc{{Addr: t2, Len: 4}})
			d.WriteTable(t1, []virtqtest.Desc{{Addr: t1, Len: 4, Flags: virtq.DescFlagNext, Next: 1}, {Addr: t2, Len: 16, Flags: virtq.DescFlagIndirect}})
			d.WriteDesc(0, t1, 32, virtq.DescFlagIndirect, 0)
			d.Publish(0)
		}},
		{name: "indirect entry with next past the table", attack: func(d *virtqtest.Driver) {
			t1, _ := d.Scratch(0)
			d.WriteTable(t1, []virtqtest.Desc{{Addr: t1, Len: 4, Flags: virtq.DescFlagNext, Next: 2}, {Addr: t1, Len: 4}})
			d.WriteDesc(0, t1, 32, virtq.DescFlagIndirect, 0)
			d.Publish(0)
		}},
		{name: "indirect table that loops through its last entry", attack: func(d *virtqtest.Driver) {
			t1, _ := d.Scratch(0)
			loop := make([]virtqtest.Desc, 64)
			for i := range loop {
				loop[i] = virtqtest.Desc{Addr: t1, Len: 1, Flags: virtq.DescFlagNext, Next: uint16((i + 1) % len(loop))}
			}
			d.WriteTable(t1, loop)
			d.WriteDesc(0, t1, 16*64, virtq.DescFlagIndirect, 0)
			d.Publish(0)
		}},
		{name: "ring chain of every descriptor looping back", attack: func(d *virtqtest.Driver) {
			buf, _ := d.Scratch(0)
			for i := range uint16(size) {
				d.WriteDesc(i, buf, 1, virtq.DescFlagNext, (i+1)%size)
			}
			d.Publish(3)
		}},
		{name: "ring chain entering an indirect table that is the ring", attack: func(d *virtqtest.Driver) {
			buf, _ := d.Scratch(0)
			d.WriteDesc(0, buf, 1, virtq.DescFlagNext, 1)
			d.WriteDesc(1, d.Config().DescAddr, 16*size, virtq.DescFlagIndirect, 0)
			d.Publish(0)
		}},
		{name: "avail index moved backwards", attack: func(d *virtqtest.Driver) {
			d.SetAvailIdx(d.AvailIdx() - 1)
		}},
		{name: "avail index jumping by size+1 at the 16-bit wrap", attack: func(d *virtqtest.Driver) {
			d.SetAvailIdx(d.AvailIdx() + size + 1)
		}},
		{name: "next rewritten into a loop while the device walks", attack: func(d *virtqtest.Driver) {
			buf, _ := d.Scratch(0)
			d.WriteDesc(0, buf, 1, virtq.DescFlagNext, 1)
			d.WriteDesc(1, buf+1, 1, 0, 0)
			d.Publish(0)
		}, race: func(d *virtqtest.Driver) func(addr, n uint64) {
			// Each time the device reads a buffer, the guest makes
			// the descriptor it just read point back at descriptor 0.
			buf, _ := d.Scratch(0)
			return func(addr, _ uint64) {
				if addr >= buf && addr < buf+2 {
					d.WriteDesc(1, buf+1, 1, virtq.DescFlagNext, 0)
				}
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := virtqtest.NewDriver(virtqtest.Options{Size: size, ChainArea: 4096, StartIdx: 65533})
			var mem virtq.Memory = virtqtest.Regions{d.Mem,
				&virtq.SliceMemory{Base: far, Bytes: make([]byte, 0x1000)},
				&virtq.SliceMemory{Base: top, Bytes: make([]byte, 0x2000)}}
			if tc.race != nil {
				mem = &virtqtest.Racing{Memory: mem, OnSpan: tc.race(d)}
			}
			q, err := virtq.New(mem, d.Config())
			if err != nil {
				t.Fatal(err)
			}
			// One good chain first: the queue works until the attack.
			if _, err := d.Add([]virtqtest.Buffer{{Data: []byte("ok")}}, false); err != nil {
				t.Fatal(err)
			}
			var c virtq.Chain
			if ok, err := q.Pop(&c); !ok || err != nil {
				t.Fatalf("good chain: %v, %v", ok, err)
			}
			if err := q.Push(c.Head, 0); err != nil {
				t.Fatal(err)
			}
			if _, _, err := d.Poll(); err != nil {
				t.Fatal(err)
			}
			tc.attack(d)
			ok, err := q.Pop(&c)
			if ok || !errors.Is(err, virtq.ErrBroken) || (tc.oob && !errors.Is(err, virtq.ErrOutOfBounds)) {
				t.Fatalf("Pop = %v, %v; want ErrBroken (out of bounds: %v)", ok, err, tc.oob)
			}
			if q.EnableNotify() {
				t.Error("EnableNotify on a broken queue reported work")
			}
		})
	}
}

// TestHostileButHarmless: layouts the device accepts because they harm
// nobody but the guest: it must neither fail nor touch memory outside the
// buffers it was given.
func TestHostileButHarmless(t *testing.T) {
	t.Run("zero-length descriptors anywhere", func(t *testing.T) {
		// A zero-length buffer is never accessed, whatever its address
		// (vhost translates no iovec for it).
		d, q := newPair(t, virtqtest.Options{Size: 8})
		buf, _ := d.Scratch(0)
		d.Put(buf, []byte("data"))
		d.SetDescs([]virtqtest.Desc{
			{Addr: ^uint64(0), Len: 0, Flags: virtq.DescFlagNext, Next: 1},
			{Addr: buf, Len: 4, Flags: virtq.DescFlagNext, Next: 2},
			{Addr: 0, Len: 0, Flags: virtq.DescFlagWrite},
		})
		d.Publish(0)
		var c virtq.Chain
		if ok, err := q.Pop(&c); !ok || err != nil || string(concat(c.Readable)) != "data" || len(c.Writable) != 0 {
			t.Fatalf("Pop = %v, %v, %q, %d writable", ok, err, concat(c.Readable), len(c.Writable))
		}
	})
	t.Run("avail index exactly size ahead", func(t *testing.T) {
		d, q := newPair(t, virtqtest.Options{Size: 4})
		buf, _ := d.Scratch(0)
		d.WriteDesc(0, buf, 1, 0, 0)
		for range 4 {
			d.Publish(0) // the same head four times
		}
		var c virtq.Chain
		for i := range 4 {
			if ok, err := q.Pop(&c); !ok || err != nil {
				t.Fatalf("Pop %d = %v, %v", i, ok, err)
			}
		}
		if ok, err := q.Pop(&c); ok || err != nil {
			t.Fatalf("fifth Pop = %v, %v", ok, err)
		}
	})
	t.Run("rings overlapping each other", func(t *testing.T) {
		// The used ring placed over the available ring and descriptor
		// table: the device's writes land in guest memory and the guest
		// gets the mess it asked for.
		mem := &virtq.SliceMemory{Base: 0x1000, Bytes: make([]byte, 0x1000)}
		for _, cfg := range []virtq.Config{
			{Size: 4, DescAddr: 0x1000, AvailAddr: 0x1000, UsedAddr: 0x1000},
			{Size: 4, DescAddr: 0x1000, AvailAddr: 0x1040, UsedAddr: 0x1040},
			{Size: 4, DescAddr: 0x1000, AvailAddr: 0x1044, UsedAddr: 0x1040},
		} {
			clear(mem.Bytes)
			q, err := virtq.New(mem, cfg)
			if err != nil {
				t.Fatal(err)
			}
			var c virtq.Chain
			for range 64 {
				ok, err := q.Pop(&c)
				if err != nil || !ok {
					break
				}
				virtq.CopyIn(c.Writable, 0, []byte("device data"))
				if err := q.Push(c.Head, uint32(c.WritableLen())); err != nil {
					t.Fatal(err)
				}
				q.NeedNotify()
				q.EnableNotify()
			}
		}
	})
}
