package hugepagetest

import (
	"errors"
	"fmt"
	"sync"
	"syscall"

	"github.com/cloister/cloister/parent/nitro/hugepage"
	"github.com/cloister/cloister/parent/nitro/nedev/nedevtest"
)

// Fake is a [hugepage.Mapper] for tests: it hands out pages from a fixed supply per
// page size (like the kernel's free hugepage counts), gives each mapping a
// distinct page-aligned fake address, allocates the backing bytes lazily,
// and implements nedevtest.MemoryInfo so the simulated driver can check the
// mappings. It is safe for concurrent use.
type Fake struct {
	mu   sync.Mutex
	free map[uint64]int
	live map[uint64]*fakeMapping // by address
	next uint64

	// Node is the NUMA node reported for every mapping (default 0).
	Node int
	// NotHugeTLB makes the mappings look like ordinary pages to the driver.
	NotHugeTLB bool
	// FailMap, when set, is returned by every Map call.
	FailMap error
}

// NewFake returns a Fake with free[size] free pages of each size.
func NewFake(free map[uint64]int) *Fake {
	f := &Fake{free: map[uint64]int{}, live: map[uint64]*fakeMapping{}, next: 1 << 46}
	for k, v := range free {
		f.free[k] = v
	}
	return f
}

// Map takes one free page of pageSize or fails with ENOMEM.
func (f *Fake) Map(pageSize uint64) (hugepage.Mapping, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.FailMap != nil {
		return nil, f.FailMap
	}
	if f.free[pageSize] <= 0 {
		return nil, fmt.Errorf("hugepage: mmap %d MiB hugetlb page: %w", pageSize/hugepage.MiB, syscall.ENOMEM)
	}
	f.free[pageSize]--
	addr := (f.next + pageSize - 1) / pageSize * pageSize
	f.next = addr + pageSize
	m := &fakeMapping{f: f, addr: addr, size: pageSize}
	f.live[addr] = m
	return m, nil
}

// FreePages returns the free page count of every size that has any
// supply (including sizes now at zero).
func (f *Fake) FreePages() map[uint64]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[uint64]int{}
	for k, v := range f.free {
		out[k] = v
	}
	return out
}

// Mapped returns the number of live mappings.
func (f *Fake) Mapped() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.live)
}

// MemInfo implements nedevtest.MemoryInfo: the range must lie inside one live
// mapping.
func (f *Fake) MemInfo(addr, size uint64) (nedevtest.MemInfo, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, m := range f.live {
		if addr >= m.addr && size <= m.size && addr-m.addr <= m.size-size {
			return nedevtest.MemInfo{HugeTLB: !f.NotHugeTLB, PageSize: m.size, Node: f.Node}, true
		}
	}
	return nedevtest.MemInfo{}, false
}

// Contents returns a copy of the bytes of the live mappings whose addresses
// are given, concatenated in that order (for checking what was copied).
func (f *Fake) Contents(addrs []uint64) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []byte
	for _, a := range addrs {
		m := f.live[a]
		if m == nil {
			return nil, fmt.Errorf("hugepage: no live mapping at %#x", a)
		}
		b := m.data
		if b == nil {
			b = make([]byte, m.size)
		}
		out = append(out, b...)
	}
	return out, nil
}

type fakeMapping struct {
	f        *Fake
	addr     uint64
	size     uint64
	data     []byte
	unmapped bool
}

func (m *fakeMapping) Addr() uint64 { return m.addr }
func (m *fakeMapping) Size() uint64 { return m.size }

func (m *fakeMapping) Bytes() []byte {
	m.f.mu.Lock()
	defer m.f.mu.Unlock()
	if m.unmapped {
		return nil
	}
	if m.data == nil {
		m.data = make([]byte, m.size)
	}
	return m.data
}

func (m *fakeMapping) Unmap() error {
	m.f.mu.Lock()
	defer m.f.mu.Unlock()
	if m.unmapped {
		return errors.New("hugepage: mapping already unmapped")
	}
	m.unmapped = true
	m.data = nil
	delete(m.f.live, m.addr)
	m.f.free[m.size]++
	return nil
}

var _ nedevtest.MemoryInfo = (*Fake)(nil)
