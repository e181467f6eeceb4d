package virtq_test

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/internal/virtq"
	"github.com/cloister/cloister/internal/virtq/virtqtest"
)

func newPair(t *testing.T, o virtqtest.Options) (*virtqtest.Driver, *virtq.Queue) {
	t.Helper()
	d := virtqtest.NewDriver(o)
	q, err := virtq.New(d.Mem, d.Config())
	if err != nil {
		t.Fatalf("virtq.New: %v", err)
	}
	return d, q
}

func concat(segs [][]byte) []byte {
	var out []byte
	for _, s := range segs {
		out = append(out, s...)
	}
	return out
}

func TestChainRoundTrip(t *testing.T) {
	for _, indirect := range []bool{false, true} {
		t.Run(fmt.Sprintf("indirect=%v", indirect), func(t *testing.T) {
			d, q := newPair(t, virtqtest.Options{Size: 8})
			head, err := d.Add([]virtqtest.Buffer{
				{Data: []byte("hello ")}, {Data: []byte("world")},
				{Write: true, Len: 3}, {Write: true, Len: 10},
			}, indirect)
			if err != nil {
				t.Fatal(err)
			}
			var c virtq.Chain
			ok, err := q.Pop(&c)
			if err != nil || !ok {
				t.Fatalf("Pop = %v, %v", ok, err)
			}
			if c.Head != head {
				t.Errorf("head = %d, want %d", c.Head, head)
			}
			if got := string(concat(c.Readable)); got != "hello world" {
				t.Errorf("readable = %q", got)
			}
			if c.ReadableLen() != 11 || c.WritableLen() != 13 || len(c.Writable) != 2 {
				t.Errorf("lens = %d, %d, %d segs", c.ReadableLen(), c.WritableLen(), len(c.Writable))
			}
			if n := virtq.CopyIn(c.Writable, 0, []byte("0123456789AB")); n != 12 {
				t.Errorf("CopyIn = %d", n)
			}
			if err := q.Push(c.Head, 12); err != nil {
				t.Fatal(err)
			}
			if ok, _ := q.Pop(&c); ok {
				t.Fatal("second Pop found a chain")
			}
			u, ok, err := d.Poll()
			if err != nil || !ok {
				t.Fatalf("Poll = %v, %v", ok, err)
			}
			if diff := cmp.Diff(virtqtest.Used{Head: head, Len: 12, Data: []byte("0123456789AB")}, u); diff != "" {
				t.Errorf("used (-want +got):\n%s", diff)
			}
			if d.FreeDescriptors() != 8 {
				t.Errorf("free descriptors = %d", d.FreeDescriptors())
			}
		})
	}
}

func TestWrapAround(t *testing.T) {
	d, q := newPair(t, virtqtest.Options{Size: 4, StartIdx: 65531, EventIdx: true})
	var c virtq.Chain
	for i := range 40 {
		msg := []byte{byte(i), byte(i >> 8)}
		if _, err := d.Add([]virtqtest.Buffer{{Data: msg}, {Write: true, Len: 2}}, i%3 == 0); err != nil {
			t.Fatal(err)
		}
		ok, err := q.Pop(&c)
		if err != nil || !ok {
			t.Fatalf("iteration %d: Pop = %v, %v", i, ok, err)
		}
		if got := concat(c.Readable); !bytes.Equal(got, msg) {
			t.Fatalf("iteration %d: readable %x", i, got)
		}
		virtq.CopyIn(c.Writable, 0, []byte{msg[1], msg[0]})
		if err := q.Push(c.Head, 2); err != nil {
			t.Fatal(err)
		}
		u, ok, err := d.Poll()
		if err != nil || !ok || !bytes.Equal(u.Data, []byte{msg[1], msg[0]}) {
			t.Fatalf("iteration %d: Poll = %+v, %v, %v", i, u, ok, err)
		}
	}
	want := uint16(65531)
	want += 40
	if q.LastAvail() != want || q.UsedIdx() != want {
		t.Errorf("indexes = %d, %d", q.LastAvail(), q.UsedIdx())
	}
}

// TestBatchWrap fills the ring completely several times across the wrap.
func TestBatchWrap(t *testing.T) {
	d, q := newPair(t, virtqtest.Options{Size: 8, StartIdx: 65530})
	var c virtq.Chain
	for round := range 5 {
		for i := range 8 {
			if _, err := d.Add([]virtqtest.Buffer{{Data: []byte{byte(round), byte(i)}}}, false); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := d.Add([]virtqtest.Buffer{{Data: []byte{1}}}, false); !errors.Is(err, virtqtest.ErrNoSpace) {
			t.Fatalf("ninth Add: %v", err)
		}
		for i := range 8 {
			ok, err := q.Pop(&c)
			if err != nil || !ok {
				t.Fatalf("Pop = %v, %v", ok, err)
			}
			if got := concat(c.Readable); !bytes.Equal(got, []byte{byte(round), byte(i)}) {
				t.Fatalf("round %d chain %d: %x", round, i, got)
			}
			if err := q.Push(c.Head, 0); err != nil {
				t.Fatal(err)
			}
		}
		for range 8 {
			if _, ok, err := d.Poll(); !ok || err != nil {
				t.Fatalf("Poll: %v %v", ok, err)
			}
		}
	}
}

func TestBroken(t *testing.T) {
	const size = 8
	tests := []struct {
		name  string
		setup func(d *virtqtest.Driver)
	}{
		{"avail index too far ahead", func(d *virtqtest.Driver) { d.SetAvailIdx(size + 1) }},
		{"head out of range", func(d *virtqtest.Driver) { d.Publish(size) }},
		{"self loop", func(d *virtqtest.Driver) {
			d.WriteDesc(0, 0x10000, 4, virtq.DescFlagNext, 0)
			d.Publish(0)
		}},
		{"two-descriptor loop", func(d *virtqtest.Driver) {
			d.WriteDesc(0, 0x10000, 4, virtq.DescFlagNext, 1)
			d.WriteDesc(1, 0x10000, 4, virtq.DescFlagNext, 0)
			d.Publish(0)
		}},
		{"next out of range", func(d *virtqtest.Driver) {
			d.WriteDesc(0, 0x10000, 4, virtq.DescFlagNext, size)
			d.Publish(0)
		}},
		{"buffer out of bounds", func(d *virtqtest.Driver) {
			d.WriteDesc(0, 0xffff_ffff_0000, 4, 0, 0)
			d.Publish(0)
		}},
		{"buffer wraps address space", func(d *virtqtest.Driver) {
			d.WriteDesc(0, 0xffff_ffff_ffff_fff0, 0x20, 0, 0)
			d.Publish(0)
		}},
		{"buffer runs past memory end", func(d *virtqtest.Driver) {
			d.WriteDesc(0, d.Mem.Base+uint64(len(d.Mem.Bytes))-4, 8, 0, 0)
			d.Publish(0)
		}},
		{"readable after writable", func(d *virtqtest.Driver) {
			d.WriteDesc(0, 0x10000, 4, virtq.DescFlagWrite|virtq.DescFlagNext, 1)
			d.WriteDesc(1, 0x10000, 4, 0, 0)
			d.Publish(0)
		}},
		{"indirect with next", func(d *virtqtest.Driver) {
			d.WriteDesc(0, 0x10000, 16, virtq.DescFlagIndirect|virtq.DescFlagNext, 1)
			d.Publish(0)
		}},
		{"indirect length not a multiple of 16", func(d *virtqtest.Driver) {
			d.WriteDesc(0, 0x10000, 20, virtq.DescFlagIndirect, 0)
			d.Publish(0)
		}},
		{"indirect length zero", func(d *virtqtest.Driver) {
			d.WriteDesc(0, 0x10000, 0, virtq.DescFlagIndirect, 0)
			d.Publish(0)
		}},
		{"indirect table out of bounds", func(d *virtqtest.Driver) {
			d.WriteDesc(0, 0x10, 32, virtq.DescFlagIndirect, 0)
			d.Publish(0)
		}},
		{"nested indirect", func(d *virtqtest.Driver) {
			// The indirect table is the descriptor table itself, whose
			// entry 0 is the indirect descriptor again.
			d.WriteDesc(0, 0x10000, 16*size, virtq.DescFlagIndirect, 0)
			d.Publish(0)
		}},
		{"loop inside indirect table", func(d *virtqtest.Driver) {
			// Table = descriptors 1..2 of the ring table, looping 0->1->0.
			d.WriteDesc(0, 0x10000+16, 32, virtq.DescFlagIndirect, 0)
			d.WriteDesc(1, 0x10000, 4, virtq.DescFlagNext, 1)
			d.WriteDesc(2, 0x10000, 4, virtq.DescFlagNext, 0)
			d.Publish(0)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, q := newPair(t, virtqtest.Options{Size: size})
			tc.setup(d)
			var c virtq.Chain
			ok, err := q.Pop(&c)
			if ok || !errors.Is(err, virtq.ErrBroken) {
				t.Fatalf("Pop = %v, %v; want ErrBroken", ok, err)
			}
			if q.Err() == nil {
				t.Error("Err() = nil after a broken chain")
			}
			if _, err := q.Pop(&c); !errors.Is(err, virtq.ErrBroken) {
				t.Errorf("second Pop: %v", err)
			}
			if err := q.Push(0, 0); !errors.Is(err, virtq.ErrBroken) {
				t.Errorf("Push on a broken queue: %v", err)
			}
		})
	}
}

func TestZeroLengthDescriptorsAreSkipped(t *testing.T) {
	d, q := newPair(t, virtqtest.Options{Size: 8})
	if _, err := d.Add([]virtqtest.Buffer{{Data: nil}, {Data: []byte("x")}, {Write: true, Len: 0}}, false); err != nil {
		t.Fatal(err)
	}
	var c virtq.Chain
	if ok, err := q.Pop(&c); !ok || err != nil {
		t.Fatalf("Pop = %v, %v", ok, err)
	}
	if len(c.Readable) != 1 || len(c.Writable) != 0 {
		t.Errorf("segments = %d readable, %d writable", len(c.Readable), len(c.Writable))
	}
}

// twoRegions is a guest memory made of two regions, [0x1000, 0x3000) and
// [0x3000, 0x5000) adjacent, and [0x8000, 0x9000) after a hole.
type twoRegions struct{ a, b, c virtq.SliceMemory }

func (m *twoRegions) Span(addr, n uint64) ([]byte, error) {
	for _, r := range []*virtq.SliceMemory{&m.a, &m.b, &m.c} {
		if s, err := r.Span(addr, n); err == nil {
			return s, nil
		}
	}
	return nil, fmt.Errorf("%w: %#x", virtq.ErrOutOfBounds, addr)
}

func TestBufferSplitAcrossRegions(t *testing.T) {
	m := &twoRegions{
		a: virtq.SliceMemory{Base: 0x1000, Bytes: make([]byte, 0x2000)},
		b: virtq.SliceMemory{Base: 0x3000, Bytes: make([]byte, 0x2000)},
		c: virtq.SliceMemory{Base: 0x8000, Bytes: make([]byte, 0x1000)},
	}
	// Rings in region a: desc at 0x1000 (size 2), avail at 0x1100, used at 0x1200.
	cfg := virtq.Config{Size: 2, DescAddr: 0x1000, AvailAddr: 0x1100, UsedAddr: 0x1200}
	q, err := virtq.New(m, cfg)
	if err != nil {
		t.Fatal(err)
	}
	put := func(i int, addr uint64, n uint32, flags, next uint16) {
		e := m.a.Bytes[16*i:]
		e[0], e[1], e[2], e[3] = byte(addr), byte(addr>>8), byte(addr>>16), byte(addr>>24)
		e[8], e[9] = byte(n), byte(n>>8)
		e[12], e[14] = byte(flags), byte(next)
	}
	copy(m.a.Bytes[0x1ff0:], "ABCDEFGHIJKLMNOP")
	copy(m.b.Bytes, "qrstuvwxyz")
	put(0, 0x2ff0, 26, 0, 0) // 16 bytes in a, 10 in b
	put(1, 0x4ff0, 32, 0, 0) // runs from b into the hole
	avail := m.a.Bytes[0x100:]
	avail[4], avail[6] = 0, 1
	virtq.Store16(avail, 2, 1)
	var c virtq.Chain
	if ok, err := q.Pop(&c); !ok || err != nil {
		t.Fatalf("Pop = %v, %v", ok, err)
	}
	if len(c.Readable) != 2 || string(concat(c.Readable)) != "ABCDEFGHIJKLMNOPqrstuvwxyz" {
		t.Errorf("readable = %d segments %q", len(c.Readable), concat(c.Readable))
	}
	virtq.Store16(avail, 2, 2)
	if _, err := q.Pop(&c); !errors.Is(err, virtq.ErrBroken) || !errors.Is(err, virtq.ErrOutOfBounds) {
		t.Errorf("buffer into a hole: %v", err)
	}
}

func TestNewRejects(t *testing.T) {
	mem := &virtq.SliceMemory{Base: 0x1000, Bytes: make([]byte, 0x10000)}
	ok := virtq.Config{Size: 16, DescAddr: 0x1000, AvailAddr: 0x2000, UsedAddr: 0x3000}
	tests := []struct {
		name string
		mod  func(c *virtq.Config)
	}{
		{"size zero", func(c *virtq.Config) { c.Size = 0 }},
		{"size not power of two", func(c *virtq.Config) { c.Size = 12 }},
		{"size too large", func(c *virtq.Config) { c.Size = 65535 }},
		{"desc misaligned", func(c *virtq.Config) { c.DescAddr += 8 }},
		{"avail misaligned", func(c *virtq.Config) { c.AvailAddr++ }},
		{"used misaligned", func(c *virtq.Config) { c.UsedAddr += 2 }},
		{"desc unmapped", func(c *virtq.Config) { c.DescAddr = 0 }},
		{"used past end", func(c *virtq.Config) { c.UsedAddr = 0x10ff0 }},
		{"avail past end", func(c *virtq.Config) { c.AvailAddr = 0x10ffe }},
	}
	if _, err := virtq.New(mem, ok); err != nil {
		t.Fatalf("valid config rejected: %v", err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.mod(&c)
			if q, err := virtq.New(mem, c); q != nil || !errors.Is(err, virtq.ErrInvalidConfig) {
				t.Errorf("New = %v, %v; want ErrInvalidConfig", q, err)
			}
		})
	}
}

func TestNotifyNoEventIdx(t *testing.T) {
	d, q := newPair(t, virtqtest.Options{Size: 8})
	var c virtq.Chain
	if q.NeedNotify() {
		t.Error("NeedNotify with nothing pushed")
	}
	for _, noIntr := range []bool{false, true, false} {
		d.SetNoInterrupt(noIntr)
		if _, err := d.Add([]virtqtest.Buffer{{Data: []byte{1}}}, false); err != nil {
			t.Fatal(err)
		}
		if ok, err := q.Pop(&c); !ok || err != nil {
			t.Fatal(ok, err)
		}
		_ = q.Push(c.Head, 0)
		if got := q.NeedNotify(); got == noIntr {
			t.Errorf("NoInterrupt=%v: NeedNotify = %v", noIntr, got)
		}
		if q.NeedNotify() {
			t.Error("second NeedNotify without a push")
		}
		_, _, _ = d.Poll()
	}
	q.DisableNotify()
	if d.UsedFlags()&virtq.UsedFlagNoNotify == 0 || d.NeedKick(0) {
		t.Error("DisableNotify did not set NO_NOTIFY")
	}
	if q.EnableNotify() {
		t.Error("EnableNotify reported pending chains")
	}
	if d.UsedFlags()&virtq.UsedFlagNoNotify != 0 || !d.NeedKick(0) {
		t.Error("EnableNotify did not clear NO_NOTIFY")
	}
}

func TestNotifyEventIdx(t *testing.T) {
	d, q := newPair(t, virtqtest.Options{Size: 8, EventIdx: true, StartIdx: 65534})
	var c virtq.Chain
	step := func() {
		t.Helper()
		if _, err := d.Add([]virtqtest.Buffer{{Data: []byte{1}}}, false); err != nil {
			t.Fatal(err)
		}
		if ok, err := q.Pop(&c); !ok || err != nil {
			t.Fatal(ok, err)
		}
		_ = q.Push(c.Head, 0)
	}
	step() // used idx 65535; the first decision always notifies
	if !q.NeedNotify() {
		t.Error("first notification suppressed")
	}
	d.SetUsedEvent(1) // notify when used idx passes 1 (i.e. becomes 2)
	step()            // 0
	if q.NeedNotify() {
		t.Error("notified before used_event")
	}
	step() // 1
	if q.NeedNotify() {
		t.Error("notified at used_event")
	}
	step() // 2: crossed
	if !q.NeedNotify() {
		t.Error("not notified after crossing used_event")
	}
	// Kick suppression: avail_event tracks LastAvail.
	if q.EnableNotify() {
		t.Error("EnableNotify reported pending chains")
	}
	if got := d.AvailEvent(); got != q.LastAvail() {
		t.Errorf("avail_event = %d, want %d", got, q.LastAvail())
	}
	old := d.AvailIdx()
	if _, err := d.Add([]virtqtest.Buffer{{Data: []byte{1}}}, false); err != nil {
		t.Fatal(err)
	}
	if !d.NeedKick(old) {
		t.Error("driver would not kick for a chain past avail_event")
	}
	if !q.EnableNotify() {
		t.Error("EnableNotify missed a pending chain")
	}
	if n, err := q.Pending(); n != 1 || err != nil {
		t.Errorf("Pending = %d, %v", n, err)
	}
}

func TestNeedEvent(t *testing.T) {
	tests := []struct {
		event, new, old uint16
		want            bool
	}{
		{0, 1, 0, true},
		{1, 1, 0, false},
		{1, 2, 0, true},
		{65535, 0, 65535, true},
		{65535, 2, 65534, true},
		{5, 4, 2, false},
		{3, 10, 10, false},
	}
	for _, tc := range tests {
		if got := virtq.NeedEvent(tc.event, tc.new, tc.old); got != tc.want {
			t.Errorf("NeedEvent(%d, %d, %d) = %v, want %v", tc.event, tc.new, tc.old, got, tc.want)
		}
	}
}

func TestCopyOutIn(t *testing.T) {
	segs := [][]byte{make([]byte, 3), make([]byte, 0), make([]byte, 5)}
	if n := virtq.CopyIn(segs, 2, []byte("abcdefgh")); n != 6 {
		t.Errorf("CopyIn = %d", n)
	}
	dst := make([]byte, 10)
	if n := virtq.CopyOut(dst, segs, 1); n != 7 || string(dst[:7]) != "\x00abcdef" {
		t.Errorf("CopyOut = %d %q", n, dst[:n])
	}
}
