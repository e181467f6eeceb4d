package virtq

import (
	"errors"
	"fmt"
)

// Errors returned by this package. They are always wrapped with detail; test
// them with errors.Is.
var (
	// ErrOutOfBounds reports a guest address range that is not backed by
	// guest memory.
	ErrOutOfBounds = errors.New("virtq: guest address out of bounds")
	// ErrBroken reports a queue the driver corrupted (bad index, malformed
	// chain); the queue does no more work until it is set up again.
	ErrBroken = errors.New("virtq: queue broken by driver")
	// ErrInvalidConfig reports a queue configuration that cannot be used
	// (size not a power of two, misaligned or unmapped rings).
	ErrInvalidConfig = errors.New("virtq: invalid queue configuration")
)

// Memory is the guest's memory as seen by the device, addressed by guest
// physical address (GPA).
type Memory interface {
	// Span returns the longest contiguous piece of guest memory that starts
	// at addr and is at most n bytes long (n > 0). The slice aliases guest
	// memory. It fails with ErrOutOfBounds when addr is not mapped; it never
	// returns an empty slice without an error.
	Span(addr, n uint64) ([]byte, error)
}

// SliceMemory is guest memory backed by one byte slice that starts at guest
// physical address Base.
type SliceMemory struct {
	Base  uint64
	Bytes []byte
}

// Span implements Memory: it returns Bytes[addr-Base:] limited to n bytes,
// or ErrOutOfBounds when addr is outside [Base, Base+len(Bytes)).
func (m *SliceMemory) Span(addr, n uint64) ([]byte, error) {
	if n == 0 || addr < m.Base || addr-m.Base >= uint64(len(m.Bytes)) {
		return nil, fmt.Errorf("%w: %#x+%d", ErrOutOfBounds, addr, n)
	}
	off := addr - m.Base
	end := uint64(len(m.Bytes))
	if n < end-off {
		end = off + n
	}
	return m.Bytes[off:end:end], nil
}

// Contiguous returns exactly n bytes of guest memory at addr as one slice. It
// fails with ErrOutOfBounds when the range is empty, wraps past the end of
// the address space (whatever the Memory maps there), is not mapped or
// crosses a gap between memory regions.
func Contiguous(m Memory, addr, n uint64) ([]byte, error) {
	if n == 0 {
		return nil, fmt.Errorf("%w: empty range at %#x", ErrOutOfBounds, addr)
	}
	if addr+n < addr {
		return nil, fmt.Errorf("%w: %#x+%d wraps the address space", ErrOutOfBounds, addr, n)
	}
	b, err := m.Span(addr, n)
	if err != nil {
		return nil, err
	}
	if uint64(len(b)) != n {
		return nil, fmt.Errorf("%w: %#x+%d is not contiguous", ErrOutOfBounds, addr, n)
	}
	return b, nil
}
