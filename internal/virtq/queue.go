package virtq

import (
	"encoding/binary"
	"fmt"
)

// Descriptor flags (virtio split ring).
const (
	DescFlagNext     = 1 // the chain continues at the next field
	DescFlagWrite    = 2 // the buffer is device-writable
	DescFlagIndirect = 4 // the buffer is a table of descriptors
)

// Ring flags.
const (
	// AvailFlagNoInterrupt is set by the driver in avail.flags when it does
	// not want used-buffer notifications (ignored with EVENT_IDX).
	AvailFlagNoInterrupt = 1
	// UsedFlagNoNotify is set by the device in used.flags when it does not
	// want available-buffer notifications (ignored with EVENT_IDX).
	UsedFlagNoNotify = 1
)

// MaxSize is the largest split-ring queue size the specification allows.
const MaxSize = 32768

// maxIndirect bounds an indirect table: its entries are addressed by the
// 16-bit next field.
const maxIndirect = 1 << 16

// MaxSegments bounds the buffers (contiguous pieces of guest memory) of one
// chain, as Linux's vhost bounds them by UIO_MAXIOV: without it one
// available-ring entry could make the device build Size-1 + 65536
// descriptors' worth of segments, each split again at every region
// boundary. A chain that needs more breaks the queue.
const MaxSegments = 1024

// Config describes a split virtqueue in guest physical addresses.
type Config struct {
	// Size is the number of descriptors: a power of two, 1..MaxSize.
	Size uint16
	// DescAddr, AvailAddr and UsedAddr are the guest physical addresses of
	// the descriptor table (16-byte aligned), the available ring (2-byte
	// aligned) and the used ring (4-byte aligned).
	DescAddr, AvailAddr, UsedAddr uint64
	// EventIdx enables VIRTIO_F_EVENT_IDX notification suppression.
	EventIdx bool
	// LastAvail is the index of the next available-ring entry to consume
	// (vhost-user SET_VRING_BASE); 0 for a fresh queue.
	LastAvail uint16
}

// Chain is one descriptor chain taken from the available ring. Readable and
// Writable alias guest memory and are valid only until the chain is returned
// with Push and the queue is not reconfigured.
type Chain struct {
	// Head is the index of the chain's first descriptor, to pass to Push.
	Head uint16
	// Readable holds the device-readable buffers in chain order.
	Readable [][]byte
	// Writable holds the device-writable buffers in chain order.
	Writable [][]byte
}

// ReadableLen returns the total length of the readable buffers.
func (c *Chain) ReadableLen() int { return segLen(c.Readable) }

// WritableLen returns the total length of the writable buffers.
func (c *Chain) WritableLen() int { return segLen(c.Writable) }

func segLen(s [][]byte) int {
	n := 0
	for _, b := range s {
		n += len(b)
	}
	return n
}

// CopyOut copies bytes from the concatenation of segs, starting at byte
// offset off, into dst and returns the number of bytes copied.
func CopyOut(dst []byte, segs [][]byte, off int) int {
	n := 0
	for _, s := range segs {
		if len(dst) == n {
			break
		}
		if off >= len(s) {
			off -= len(s)
			continue
		}
		n += copy(dst[n:], s[off:])
		off = 0
	}
	return n
}

// CopyIn copies src into the concatenation of segs starting at byte offset
// off and returns the number of bytes copied (less than len(src) when the
// segments are too short).
func CopyIn(segs [][]byte, off int, src []byte) int {
	n := 0
	for _, s := range segs {
		if n == len(src) {
			break
		}
		if off >= len(s) {
			off -= len(s)
			continue
		}
		n += copy(s[off:], src[n:])
		off = 0
	}
	return n
}

// Queue is the device side of one split virtqueue. It is not safe for
// concurrent use; the owner serialises calls.
type Queue struct {
	mem      Memory
	size     uint16
	eventIdx bool

	desc  []byte // 16*size bytes
	avail []byte // flags, idx, ring[size], used_event (+ padding when mapped)
	used  []byte // flags, idx, ring[size], avail_event (+ padding when mapped)

	lastAvail uint16
	usedIdx   uint16

	signalled      uint16 // used idx at the last notification decision
	signalledValid bool
	pushed         bool // elements pushed since the last notification decision

	err error
}

// New sets up the device side of a queue whose rings the driver placed in
// mem as described by cfg. It checks that the size is a power of two no
// larger than MaxSize, that the rings are aligned and that each ring lies in
// one contiguous piece of mapped memory. The used index is taken from the
// used ring in memory.
func New(mem Memory, cfg Config) (*Queue, error) {
	n := uint64(cfg.Size)
	if n == 0 || n > MaxSize || n&(n-1) != 0 {
		return nil, fmt.Errorf("%w: size %d is not a power of two in 1..%d", ErrInvalidConfig, n, MaxSize)
	}
	if cfg.DescAddr%16 != 0 || cfg.AvailAddr%2 != 0 || cfg.UsedAddr%4 != 0 {
		return nil, fmt.Errorf("%w: misaligned rings desc=%#x avail=%#x used=%#x",
			ErrInvalidConfig, cfg.DescAddr, cfg.AvailAddr, cfg.UsedAddr)
	}
	desc, err := Contiguous(mem, cfg.DescAddr, 16*n)
	if err != nil {
		return nil, fmt.Errorf("%w: descriptor table: %w", ErrInvalidConfig, err)
	}
	avail, err := ringSlice(mem, cfg.AvailAddr, 6+2*n)
	if err != nil {
		return nil, fmt.Errorf("%w: available ring: %w", ErrInvalidConfig, err)
	}
	used, err := ringSlice(mem, cfg.UsedAddr, 6+8*n)
	if err != nil {
		return nil, fmt.Errorf("%w: used ring: %w", ErrInvalidConfig, err)
	}
	q := &Queue{
		mem: mem, size: cfg.Size, eventIdx: cfg.EventIdx,
		desc: desc, avail: avail, used: used,
		lastAvail: cfg.LastAvail,
	}
	q.usedIdx = load16(q.used, 2)
	return q, nil
}

// ringSlice maps a ring of n bytes, plus two bytes of padding when they are
// mapped too, so that the trailing event field can be reached atomically.
func ringSlice(mem Memory, addr, n uint64) ([]byte, error) {
	if b, err := mem.Span(addr, n+2); err == nil && uint64(len(b)) == n+2 {
		return b[: n+2 : n+2], nil
	}
	return Contiguous(mem, addr, n)
}

// Size returns the queue size.
func (q *Queue) Size() uint16 { return q.size }

// LastAvail returns the index of the next available-ring entry the device
// will consume (what vhost-user GET_VRING_BASE reports).
func (q *Queue) LastAvail() uint16 { return q.lastAvail }

// UsedIdx returns the device's used index (the next used-ring slot).
func (q *Queue) UsedIdx() uint16 { return q.usedIdx }

// Err returns the error that broke the queue, or nil.
func (q *Queue) Err() error { return q.err }

func (q *Queue) fail(format string, args ...any) error {
	q.err = fmt.Errorf("%w: "+format, append([]any{ErrBroken}, args...)...)
	return q.err
}

// Pending returns how many chains the driver has made available and the
// device has not taken yet. It fails with ErrBroken when the driver's
// available index is more than Size ahead.
func (q *Queue) Pending() (int, error) {
	if q.err != nil {
		return 0, q.err
	}
	n := load16(q.avail, 2) - q.lastAvail
	if n > q.size {
		return 0, q.fail("available index %d is %d entries ahead of %d (size %d)",
			q.lastAvail+n, n, q.lastAvail, q.size)
	}
	return int(n), nil
}

// Pop takes the next available descriptor chain into c (reusing its slices)
// and reports whether there was one. It checks the head index, each
// descriptor's index, flags and buffer bounds, that readable buffers precede
// writable ones, that indirect tables are well-formed and not nested, and
// bounds the chain's length (Size descriptors, or the table's entry count
// inside an indirect table) so a looping chain is detected, and bounds its
// buffers to MaxSegments pieces of guest memory. Any violation
// breaks the queue: this and every later call returns an ErrBroken error.
func (q *Queue) Pop(c *Chain) (bool, error) {
	n, err := q.Pending()
	if err != nil || n == 0 {
		return false, err
	}
	slot := int(q.lastAvail % q.size)
	head := binary.LittleEndian.Uint16(q.avail[4+2*slot:])
	if head >= q.size {
		return false, q.fail("head index %d >= size %d", head, q.size)
	}
	c.Head = head
	c.Readable = c.Readable[:0]
	c.Writable = c.Writable[:0]
	if err := q.walk(c, head); err != nil {
		c.Readable = c.Readable[:0]
		c.Writable = c.Writable[:0]
		return false, err
	}
	q.lastAvail++
	return true, nil
}

func (q *Queue) walk(c *Chain, head uint16) error {
	table := q.desc
	tableLen := int(q.size)
	limit := int(q.size)
	indirect := false
	idx := int(head)
	for count := 1; ; count++ {
		if count > limit {
			return q.fail("chain at head %d longer than %d descriptors (loop?)", head, limit)
		}
		d := table[16*idx : 16*idx+16]
		addr := binary.LittleEndian.Uint64(d[0:])
		length := binary.LittleEndian.Uint32(d[8:])
		flags := binary.LittleEndian.Uint16(d[12:])
		next := binary.LittleEndian.Uint16(d[14:])
		if flags&DescFlagIndirect != 0 {
			if indirect {
				return q.fail("nested indirect table in chain at head %d", head)
			}
			if flags&DescFlagNext != 0 {
				return q.fail("indirect descriptor with NEXT in chain at head %d", head)
			}
			if length == 0 || length%16 != 0 || length/16 > maxIndirect {
				return q.fail("indirect table length %d in chain at head %d", length, head)
			}
			t, err := Contiguous(q.mem, addr, uint64(length))
			if err != nil {
				return q.fail("indirect table of chain at head %d: %w", head, err)
			}
			table, tableLen, limit = t, int(length/16), int(length/16)
			indirect, idx, count = true, 0, 0
			continue
		}
		if flags&DescFlagWrite == 0 && len(c.Writable) > 0 {
			return q.fail("readable descriptor after a writable one in chain at head %d", head)
		}
		if err := q.appendBuffer(c, addr, uint64(length), flags&DescFlagWrite != 0); err != nil {
			return q.fail("buffer %#x+%d in chain at head %d: %w", addr, length, head, err)
		}
		if flags&DescFlagNext == 0 {
			return nil
		}
		if int(next) >= tableLen {
			return q.fail("next index %d >= %d in chain at head %d", next, tableLen, head)
		}
		idx = int(next)
	}
}

// appendBuffer appends the guest buffer [addr, addr+n) to c, split at
// memory-region boundaries, failing when c would hold more than
// MaxSegments buffers.
func (q *Queue) appendBuffer(c *Chain, addr, n uint64, write bool) error {
	if addr+n < addr {
		return fmt.Errorf("%w: address wraps", ErrOutOfBounds)
	}
	for n > 0 {
		if len(c.Readable)+len(c.Writable) >= MaxSegments {
			return fmt.Errorf("more than %d buffers", MaxSegments)
		}
		b, err := q.mem.Span(addr, n)
		if err != nil {
			return err
		}
		if write {
			c.Writable = append(c.Writable, b)
		} else {
			c.Readable = append(c.Readable, b)
		}
		addr += uint64(len(b))
		n -= uint64(len(b))
	}
	return nil
}

// Push returns the chain with the given head to the driver, reporting that
// the device wrote length bytes into its writable buffers, and publishes the
// new used index with release ordering.
func (q *Queue) Push(head uint16, length uint32) error {
	if q.err != nil {
		return q.err
	}
	if head >= q.size {
		return fmt.Errorf("%w: push of head %d >= size %d", ErrInvalidConfig, head, q.size)
	}
	off := 4 + 8*int(q.usedIdx%q.size)
	binary.LittleEndian.PutUint32(q.used[off:], uint32(head))
	binary.LittleEndian.PutUint32(q.used[off+4:], length)
	q.usedIdx++
	store16(q.used, 2, q.usedIdx)
	q.pushed = true
	return nil
}

// NeedNotify reports whether the driver must be notified (call eventfd /
// interrupt) about the elements pushed since the previous call: with
// EVENT_IDX when the used index crossed the driver's used_event, otherwise
// unless the driver set AvailFlagNoInterrupt. It returns false when nothing
// was pushed.
func (q *Queue) NeedNotify() bool {
	if !q.pushed {
		return false
	}
	q.pushed = false
	if !q.eventIdx {
		return load16(q.avail, 0)&AvailFlagNoInterrupt == 0
	}
	old, valid := q.signalled, q.signalledValid
	q.signalled, q.signalledValid = q.usedIdx, true
	if !valid {
		return true
	}
	event := load16(q.avail, 4+2*int(q.size))
	return NeedEvent(event, q.usedIdx, old)
}

// NeedEvent is the virtio vring_need_event rule: whether moving an index
// from old to new crossed the other side's event index.
func NeedEvent(event, new, old uint16) bool {
	return new-event-1 < new-old
}

// EnableNotify asks the driver to notify the device about the next
// available chain (EVENT_IDX: avail_event = LastAvail; otherwise clear
// UsedFlagNoNotify) and then re-reads the available index. It reports
// whether chains became available in the meantime, in which case the caller
// must keep processing instead of waiting for a notification.
func (q *Queue) EnableNotify() bool {
	if q.err != nil {
		return false
	}
	if q.eventIdx {
		store16(q.used, 4+8*int(q.size), q.lastAvail)
	} else {
		store16(q.used, 0, load16(q.used, 0)&^UsedFlagNoNotify)
	}
	return load16(q.avail, 2) != q.lastAvail
}

// DisableNotify asks the driver not to notify the device (without
// EVENT_IDX: set UsedFlagNoNotify; with EVENT_IDX it does nothing, the
// avail_event written by EnableNotify already limits notifications).
func (q *Queue) DisableNotify() {
	if q.err != nil || q.eventIdx {
		return
	}
	store16(q.used, 0, load16(q.used, 0)|UsedFlagNoNotify)
}
