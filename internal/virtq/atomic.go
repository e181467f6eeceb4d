package virtq

import (
	"encoding/binary"
	"sync/atomic"
	"unsafe"
)

// The rings' 16-bit fields are shared with the driver. Go has no 16-bit
// atomics, so each access goes through the naturally aligned 32-bit word that
// contains the field. Go's atomic operations are sequentially consistent:
// a load is at least an acquire and a store/CAS at least a release (and a
// full barrier on amd64), which is what the virtio ordering rules need.
//
// The word must lie inside the ring slice b; when it does not (a misaligned
// pointer, or a field at the very end of a slice that ends on a word
// boundary) the access falls back to plain byte access.

// wordFor returns the aligned word holding b[off:off+2] and the byte offset
// of the field inside that word, or nil when the word is not inside b.
func wordFor(b []byte, off int) (*uint32, int) {
	if off < 0 || off+2 > len(b) {
		return nil, 0
	}
	p := uintptr(unsafe.Pointer(&b[off]))
	switch p & 3 {
	case 0:
		if off+4 <= len(b) {
			return (*uint32)(unsafe.Pointer(&b[off])), 0
		}
	case 2:
		if off >= 2 {
			return (*uint32)(unsafe.Pointer(&b[off-2])), 2
		}
	}
	return nil, 0
}

// load16 reads the little-endian u16 at b[off:] with acquire ordering.
func load16(b []byte, off int) uint16 {
	w, k := wordFor(b, off)
	if w == nil {
		return binary.LittleEndian.Uint16(b[off:])
	}
	var buf [4]byte
	binary.NativeEndian.PutUint32(buf[:], atomic.LoadUint32(w))
	return binary.LittleEndian.Uint16(buf[k:])
}

// store16 writes v as a little-endian u16 at b[off:] with release ordering,
// preserving the other half of the containing word. Contention from a
// driver that keeps rewriting the neighbouring bytes is bounded: after a few
// failed compare-and-swaps the value is stored plainly.
func store16(b []byte, off int, v uint16) {
	w, k := wordFor(b, off)
	if w != nil {
		for range 64 {
			old := atomic.LoadUint32(w)
			var buf [4]byte
			binary.NativeEndian.PutUint32(buf[:], old)
			binary.LittleEndian.PutUint16(buf[k:], v)
			if atomic.CompareAndSwapUint32(w, old, binary.NativeEndian.Uint32(buf[:])) {
				return
			}
		}
	}
	binary.LittleEndian.PutUint16(b[off:], v)
}

// Load16 reads the little-endian u16 at b[off:] the way the device does
// (atomically through its aligned word). The simulated driver in virtqtest
// uses it so that both sides synchronise on the same words.
func Load16(b []byte, off int) uint16 { return load16(b, off) }

// Store16 writes the little-endian u16 at b[off:] the way the device does
// (atomically through its aligned word, preserving the neighbouring bytes).
func Store16(b []byte, off int, v uint16) { store16(b, off, v) }
