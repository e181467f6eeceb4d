package virtqtest

import (
	"encoding/binary"
	"fmt"

	"github.com/cloister/cloister/internal/virtq"
)

// This file gives tests the means of a malicious guest kernel: raw
// descriptors and tables written anywhere in guest memory, guest memory made
// of several regions with holes between them, and a guest that acts while
// the device is reading its memory.

// Desc is one raw split-ring descriptor.
type Desc struct {
	Addr  uint64
	Len   uint32
	Flags uint16
	Next  uint16
}

// Put writes b into guest memory at guest physical address gpa. It panics
// when the range is outside the Driver's memory (a test bug).
func (d *Driver) Put(gpa uint64, b []byte) {
	off := gpa - d.o.Base
	if gpa < d.o.Base || off+uint64(len(b)) > uint64(len(d.Mem.Bytes)) {
		panic(fmt.Sprintf("virtqtest: Put of %d bytes at %#x outside guest memory", len(b), gpa))
	}
	copy(d.Mem.Bytes[off:], b)
}

// WriteTable writes descs as a descriptor table (an indirect table, or a
// fake one) at guest physical address gpa.
func (d *Driver) WriteTable(gpa uint64, descs []Desc) {
	d.Put(gpa, EncodeTable(descs))
}

// EncodeTable returns the 16-byte-per-entry encoding of descs.
func EncodeTable(descs []Desc) []byte {
	b := make([]byte, 16*len(descs))
	for i, e := range descs {
		writeDesc(b, uint16(i), e.Addr, e.Len, e.Flags, e.Next)
	}
	return b
}

// SetDescs writes descs into the ring's descriptor table starting at entry
// 0, for chains built by hand.
func (d *Driver) SetDescs(descs []Desc) {
	for i, e := range descs {
		d.WriteDesc(uint16(i), e.Addr, e.Len, e.Flags, e.Next)
	}
}

// Scratch returns the guest physical address and size of the buffer space
// that NewDriver reserved for the chain whose head is i; tests that build
// chains by hand may use it freely (Add uses it for that head).
func (d *Driver) Scratch(i uint16) (uint64, int) {
	return d.o.Base + uint64(d.arenaOff+int(i)*d.o.ChainArea), d.o.ChainArea
}

// Regions is guest memory made of several regions with unmapped holes
// between them, the way a vhost-user memory table describes it. Regions
// must not overlap; they need not be sorted.
type Regions []*virtq.SliceMemory

var _ virtq.Memory = Regions(nil)

// Span implements virtq.Memory: the piece of the region containing addr,
// or ErrOutOfBounds when addr lies in a hole.
func (r Regions) Span(addr, n uint64) ([]byte, error) {
	for _, m := range r {
		if addr >= m.Base && addr-m.Base < uint64(len(m.Bytes)) {
			return m.Span(addr, n)
		}
	}
	return nil, fmt.Errorf("%w: %#x+%d is in no region", virtq.ErrOutOfBounds, addr, n)
}

// Racing is guest memory whose guest acts while the device reads it:
// OnSpan runs on the device's goroutine at every Span call, before the
// bytes are handed over. It stands for a guest vCPU that is always fast
// enough to change its rings between two device accesses, which a real
// guest can only do sometimes, so the outcome is deterministic.
type Racing struct {
	virtq.Memory
	OnSpan func(addr, n uint64)
}

// Span implements virtq.Memory.
func (r *Racing) Span(addr, n uint64) ([]byte, error) {
	if r.OnSpan != nil {
		r.OnSpan(addr, n)
	}
	return r.Memory.Span(addr, n)
}

// PollRaw returns the next element of the used ring, if any, without
// matching it to a chain that Add made: for chains published by hand. It
// frees no descriptors.
func (d *Driver) PollRaw() (head, n uint32, ok bool) {
	if d.UsedIdx() == d.lastUsed {
		return 0, 0, false
	}
	e := d.used()[4+8*int(d.lastUsed%d.o.Size):]
	d.lastUsed++
	return binary.LittleEndian.Uint32(e), binary.LittleEndian.Uint32(e[4:]), true
}
