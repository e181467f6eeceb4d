// Package virtqtest is a simulated virtio driver (the guest side of a split
// virtqueue) over a byte-slice guest memory, for testing devices built on
// package virtq without a virtual machine.
//
// The driver writes descriptors and the available ring exactly as a guest
// kernel would and reads the used ring; it synchronises with the device on
// the ring index words through virtq.Load16/Store16, so tests under the race
// detector see the same happens-before edges as real shared memory.
package virtqtest

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cloister/cloister/internal/virtq"
)

// ErrNoSpace reports that the chain does not fit: not enough free
// descriptors or more bytes than Options.ChainArea.
var ErrNoSpace = errors.New("virtqtest: no space for chain")

// Options configures a Driver. Zero values select the documented defaults.
type Options struct {
	// Size is the queue size (power of two); default 256.
	Size uint16
	// Base is the guest physical address of the first byte of the simulated
	// memory; default 0x10000.
	Base uint64
	// ChainArea is the number of bytes of buffer space (plus indirect table)
	// each in-flight chain may use; default 160 KiB.
	ChainArea int
	// EventIdx negotiates VIRTIO_F_EVENT_IDX.
	EventIdx bool
	// Mem, when not nil, is used as the guest memory (starting at Base)
	// instead of a fresh slice; it must be at least MemSize(Options) bytes.
	Mem []byte
	// StartIdx is the initial value of the available and used indexes (to
	// exercise 16-bit wrap-around); the device must start with LastAvail =
	// StartIdx, which Config reports.
	StartIdx uint16
}

// Buffer is one descriptor of a chain: a readable buffer holding Data, or
// (Write) a writable buffer of Len bytes.
type Buffer struct {
	Data  []byte
	Len   int
	Write bool
}

// Used is one element the device returned on the used ring.
type Used struct {
	Head uint16
	Len  uint32
	// Data holds the first Len bytes of the chain's writable buffers
	// (capped at their total size), copied out of guest memory.
	Data []byte
}

type inflight struct {
	descs    []uint16
	writable [][2]uint64 // (gpa, len) of the writable buffers
}

// Driver is the guest side of one split virtqueue. It is not safe for
// concurrent use.
type Driver struct {
	// Mem is the simulated guest memory holding the rings and buffers.
	Mem *virtq.SliceMemory

	o                          Options
	descOff, availOff, usedOff int
	arenaOff                   int
	free                       []uint16
	availIdx                   uint16
	lastUsed                   uint16
	chains                     map[uint16]*inflight
}

// NewDriver lays out a queue (descriptor table, available ring, used ring)
// and ChainArea bytes per descriptor of buffer space in a fresh memory.
// It panics when Options.Mem is too small (a test bug).
func NewDriver(o Options) *Driver {
	o = o.withDefaults()
	n := int(o.Size)
	d := &Driver{o: o, chains: make(map[uint16]*inflight)}
	d.descOff = 0
	d.availOff = 16 * n
	d.usedOff = align(d.availOff+6+2*n+2, 4096)
	d.arenaOff = align(d.usedOff+6+8*n+2, 4096)
	mem := o.Mem
	if mem == nil {
		mem = make([]byte, MemSize(o))
	} else if len(mem) < MemSize(o) {
		panic(fmt.Sprintf("virtqtest: Options.Mem has %d bytes, need %d", len(mem), MemSize(o)))
	}
	d.Mem = &virtq.SliceMemory{Base: o.Base, Bytes: mem}
	for i := n - 1; i >= 0; i-- {
		d.free = append(d.free, uint16(i))
	}
	d.availIdx, d.lastUsed = o.StartIdx, o.StartIdx
	virtq.Store16(d.avail(), 2, o.StartIdx)
	virtq.Store16(d.used(), 2, o.StartIdx)
	return d
}

func (o Options) withDefaults() Options {
	if o.Size == 0 {
		o.Size = 256
	}
	if o.Base == 0 {
		o.Base = 0x10000
	}
	if o.ChainArea == 0 {
		o.ChainArea = 160 << 10
	}
	return o
}

// MemSize returns the number of bytes of guest memory a Driver with these
// options uses: rings, then ChainArea bytes per descriptor.
func MemSize(o Options) int {
	o = o.withDefaults()
	n := int(o.Size)
	used := align(16*n+6+2*n+2, 4096)
	return align(used+6+8*n+2, 4096) + n*o.ChainArea
}

func align(x, a int) int { return (x + a - 1) / a * a }

func (d *Driver) avail() []byte {
	return d.Mem.Bytes[d.availOff : d.availOff+6+2*int(d.o.Size)+2]
}

func (d *Driver) used() []byte {
	return d.Mem.Bytes[d.usedOff : d.usedOff+6+8*int(d.o.Size)+2]
}

// Config returns the queue configuration the device must use.
func (d *Driver) Config() virtq.Config {
	return virtq.Config{
		Size:      d.o.Size,
		DescAddr:  d.o.Base + uint64(d.descOff),
		AvailAddr: d.o.Base + uint64(d.availOff),
		UsedAddr:  d.o.Base + uint64(d.usedOff),
		EventIdx:  d.o.EventIdx,
		LastAvail: d.o.StartIdx,
	}
}

// FreeDescriptors returns how many descriptors are not in flight.
func (d *Driver) FreeDescriptors() int { return len(d.free) }

// InFlight returns how many chains the device has not returned yet.
func (d *Driver) InFlight() int { return len(d.chains) }

// Add places a chain made of bufs in guest memory and makes it available.
// With indirect the buffers are described by an indirect table and the
// chain uses one ring descriptor. Readable buffers must precede writable
// ones for a well-formed chain (Add does not enforce it, so tests can build
// malformed chains).
func (d *Driver) Add(bufs []Buffer, indirect bool) (uint16, error) {
	need := len(bufs)
	if indirect {
		need = 1
	}
	if need == 0 || need > len(d.free) {
		return 0, fmt.Errorf("%w: %d descriptors needed, %d free", ErrNoSpace, need, len(d.free))
	}
	head := d.free[len(d.free)-1]
	area := d.arenaOff + int(head)*d.o.ChainArea
	pos := area
	if indirect {
		pos += 16 * len(bufs)
	}
	total := 0
	for _, b := range bufs {
		total += bufLen(b)
	}
	if pos+total > area+d.o.ChainArea {
		return 0, fmt.Errorf("%w: %d bytes > chain area %d", ErrNoSpace, total, d.o.ChainArea)
	}
	inf := &inflight{}
	for i := 0; i < need; i++ {
		inf.descs = append(inf.descs, d.free[len(d.free)-1])
		d.free = d.free[:len(d.free)-1]
	}
	var table []byte
	var tableIdx func(i int) uint16
	if indirect {
		table = d.Mem.Bytes[area : area+16*len(bufs)]
		tableIdx = func(i int) uint16 { return uint16(i) }
	} else {
		table = d.Mem.Bytes[d.descOff : d.descOff+16*int(d.o.Size)]
		tableIdx = func(i int) uint16 { return inf.descs[i] }
	}
	for i, b := range bufs {
		n := bufLen(b)
		gpa := d.o.Base + uint64(pos)
		if b.Write {
			inf.writable = append(inf.writable, [2]uint64{gpa, uint64(n)})
		} else {
			copy(d.Mem.Bytes[pos:], b.Data)
		}
		var flags, next uint16
		if b.Write {
			flags |= virtq.DescFlagWrite
		}
		if i+1 < len(bufs) {
			flags |= virtq.DescFlagNext
			next = tableIdx(i + 1)
		}
		writeDesc(table, tableIdx(i), gpa, uint32(n), flags, next)
		pos += n
	}
	if indirect {
		writeDesc(d.Mem.Bytes[d.descOff:], head, d.o.Base+uint64(area), uint32(16*len(bufs)), virtq.DescFlagIndirect, 0)
	}
	d.chains[head] = inf
	d.Publish(head)
	return head, nil
}

func bufLen(b Buffer) int {
	if b.Write {
		return b.Len
	}
	return len(b.Data)
}

func writeDesc(table []byte, i uint16, addr uint64, n uint32, flags, next uint16) {
	e := table[16*int(i):]
	binary.LittleEndian.PutUint64(e[0:], addr)
	binary.LittleEndian.PutUint32(e[8:], n)
	binary.LittleEndian.PutUint16(e[12:], flags)
	binary.LittleEndian.PutUint16(e[14:], next)
}

// WriteDesc writes raw descriptor i of the ring's descriptor table, for
// tests that build malformed chains by hand.
func (d *Driver) WriteDesc(i uint16, addr uint64, n uint32, flags, next uint16) {
	writeDesc(d.Mem.Bytes[d.descOff:d.descOff+16*int(d.o.Size)], i, addr, n, flags, next)
}

// Publish puts head in the next available-ring slot and releases the new
// available index to the device.
func (d *Driver) Publish(head uint16) {
	a := d.avail()
	binary.LittleEndian.PutUint16(a[4+2*int(d.availIdx%d.o.Size):], head)
	d.availIdx++
	virtq.Store16(a, 2, d.availIdx)
}

// SetAvailIdx stores a raw available index (for tests of a driver that
// corrupts it).
func (d *Driver) SetAvailIdx(v uint16) {
	d.availIdx = v
	virtq.Store16(d.avail(), 2, v)
}

// SetNoInterrupt sets or clears AvailFlagNoInterrupt.
func (d *Driver) SetNoInterrupt(on bool) {
	var f uint16
	if on {
		f = virtq.AvailFlagNoInterrupt
	}
	virtq.Store16(d.avail(), 0, f)
}

// SetUsedEvent writes used_event (EVENT_IDX): the driver wants a
// notification once the used index passes v.
func (d *Driver) SetUsedEvent(v uint16) {
	virtq.Store16(d.avail(), 4+2*int(d.o.Size), v)
}

// UsedFlags returns the device's used.flags.
func (d *Driver) UsedFlags() uint16 { return virtq.Load16(d.used(), 0) }

// AvailEvent returns the device's avail_event (EVENT_IDX).
func (d *Driver) AvailEvent() uint16 { return virtq.Load16(d.used(), 4+8*int(d.o.Size)) }

// UsedIdx returns the device's used index as published in memory.
func (d *Driver) UsedIdx() uint16 { return virtq.Load16(d.used(), 2) }

// NeedKick reports whether the device asked to be notified about the chains
// made available since the index old (EVENT_IDX rule or UsedFlagNoNotify).
func (d *Driver) NeedKick(old uint16) bool {
	if d.o.EventIdx {
		return virtq.NeedEvent(d.AvailEvent(), d.availIdx, old)
	}
	return d.UsedFlags()&virtq.UsedFlagNoNotify == 0
}

// AvailIdx returns the driver's available index.
func (d *Driver) AvailIdx() uint16 { return d.availIdx }

// Poll returns the next element of the used ring, if any, and frees its
// descriptors. With EVENT_IDX it also asks for a notification on the next
// used element (used_event = its index), as a guest that keeps callbacks
// enabled does. It fails when the device returned an unknown head.
func (d *Driver) Poll() (Used, bool, error) {
	if d.UsedIdx() == d.lastUsed {
		return Used{}, false, nil
	}
	defer func() {
		if d.o.EventIdx {
			d.SetUsedEvent(d.lastUsed)
		}
	}()
	u := d.used()
	e := u[4+8*int(d.lastUsed%d.o.Size):]
	head := uint16(binary.LittleEndian.Uint32(e))
	n := binary.LittleEndian.Uint32(e[4:])
	d.lastUsed++
	inf, ok := d.chains[head]
	if !ok {
		return Used{}, false, fmt.Errorf("virtqtest: device returned head %d which is not in flight", head)
	}
	delete(d.chains, head)
	for i := len(inf.descs) - 1; i >= 0; i-- {
		d.free = append(d.free, inf.descs[i])
	}
	out := Used{Head: head, Len: n}
	left := uint64(n)
	for _, w := range inf.writable {
		if left == 0 {
			break
		}
		k := min(left, w[1])
		off := w[0] - d.o.Base
		out.Data = append(out.Data, d.Mem.Bytes[off:off+k]...)
		left -= k
	}
	return out, true, nil
}
