// Package nsmdevtest provides a fake caller memory for testing code built
// on nsmdev: an address space of regions, each readable and/or writable,
// like a process's mappings.
package nsmdevtest

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
)

// ErrFault is what Memory returns for an access outside a region with the
// needed permission (a page fault in the real process).
var ErrFault = errors.New("nsmdevtest: bad address")

// Perm is a region's protection.
type Perm uint8

// Protections.
const (
	Read  Perm = 1 << iota // PROT_READ
	Write                  // PROT_WRITE
	RW    = Read | Write
)

// Region is one mapping: Data at Addr, with Perm.
type Region struct {
	Addr uint64
	Data []byte
	Perm Perm
}

// Memory is a fake process address space implementing nsmdev.Memory. An
// access must lie entirely in one region having the permission; a failing
// access changes nothing. It is safe for concurrent use.
type Memory struct {
	mu      sync.Mutex
	regions []*Region
	reads   int
	writes  int
}

// NewMemory returns a Memory holding regions; regions must not overlap.
func NewMemory(regions ...Region) *Memory {
	m := &Memory{}
	for _, r := range regions {
		m.regions = append(m.regions, &r)
	}
	return m
}

// Map adds a region and returns its data, which the caller may inspect.
func (m *Memory) Map(addr uint64, size int, perm Perm) []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := &Region{Addr: addr, Data: make([]byte, size), Perm: perm}
	m.regions = append(m.regions, r)
	return r.Data
}

// find returns the region holding [addr, addr+n) with perm, and the offset.
func (m *Memory) find(addr uint64, n int, perm Perm) (*Region, int, error) {
	end := addr + uint64(n)
	if end < addr {
		return nil, 0, fmt.Errorf("%w: %#x+%d wraps", ErrFault, addr, n)
	}
	for _, r := range m.regions {
		if addr >= r.Addr && end <= r.Addr+uint64(len(r.Data)) && r.Addr+uint64(len(r.Data)) >= r.Addr {
			if r.Perm&perm != perm {
				return nil, 0, fmt.Errorf("%w: %#x+%d not permitted", ErrFault, addr, n)
			}
			return r, int(addr - r.Addr), nil
		}
	}
	return nil, 0, fmt.Errorf("%w: %#x+%d not mapped", ErrFault, addr, n)
}

// ReadAt copies len(p) bytes at addr into p.
func (m *Memory) ReadAt(p []byte, addr uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, off, err := m.find(addr, len(p), Read)
	if err != nil {
		return err
	}
	copy(p, r.Data[off:])
	m.reads++
	return nil
}

// WriteAt copies p to addr.
func (m *Memory) WriteAt(p []byte, addr uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, off, err := m.find(addr, len(p), Write)
	if err != nil {
		return err
	}
	copy(r.Data[off:], p)
	m.writes++
	return nil
}

// Accesses returns how many successful reads and writes were made.
func (m *Memory) Accesses() (reads, writes int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.reads, m.writes
}

// Accessible reports whether an access of n bytes at addr with perm would
// succeed. Zero bytes are accessible anywhere that does not wrap.
func (m *Memory) Accessible(addr uint64, n int, perm Perm) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, _, err := m.find(addr, n, perm)
	return err == nil
}

// Snapshot returns a copy of every region, in the order they were added.
func (m *Memory) Snapshot() []Region {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Region, len(m.regions))
	for i, r := range m.regions {
		out[i] = Region{Addr: r.Addr, Data: bytes.Clone(r.Data), Perm: r.Perm}
	}
	return out
}
