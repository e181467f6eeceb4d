//go:build linux

package hugepage

import (
	"fmt"
	"math/bits"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Mmap is the real [Mapper]: mmap(PROT_READ|PROT_WRITE,
// MAP_PRIVATE|MAP_ANONYMOUS|MAP_HUGETLB|log2(pageSize)<<MAP_HUGE_SHIFT).
type Mmap struct{}

// Map maps one hugetlb page of pageSize bytes (a power of two ≥ 2 MiB).
func (Mmap) Map(pageSize uint64) (Mapping, error) {
	if pageSize < 2*MiB || pageSize&(pageSize-1) != 0 || pageSize > 1<<40 {
		return nil, fmt.Errorf("hugepage: page size %d is not a power of two between 2 MiB and 1 TiB", pageSize)
	}
	shift := uint64(bits.TrailingZeros64(pageSize))
	flags := unix.MAP_PRIVATE | unix.MAP_ANONYMOUS | unix.MAP_HUGETLB | int(shift<<unix.MAP_HUGE_SHIFT)
	b, err := unix.Mmap(-1, 0, int(pageSize), unix.PROT_READ|unix.PROT_WRITE, flags)
	if err != nil {
		return nil, fmt.Errorf("hugepage: mmap %d MiB hugetlb page: %w", pageSize/MiB, err)
	}
	return &mmapping{b: b}, nil
}

type mmapping struct {
	mu sync.Mutex
	b  []byte
}

func (m *mmapping) Addr() uint64  { return uint64(uintptr(unsafe.Pointer(unsafe.SliceData(m.b)))) }
func (m *mmapping) Size() uint64  { return uint64(len(m.b)) }
func (m *mmapping) Bytes() []byte { return m.b }
func (m *mmapping) Unmap() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.b == nil {
		return fmt.Errorf("hugepage: mapping already unmapped")
	}
	err := unix.Munmap(m.b)
	m.b = nil
	return err
}
