package vhostuser

import (
	"fmt"
	"os"
	"sort"

	"golang.org/x/sys/unix"

	"github.com/cloister/cloister/internal/virtq"
)

// maxRegionSize bounds one region (1 TiB) so size arithmetic cannot
// overflow and a hostile table cannot ask for absurd mappings.
const maxRegionSize = 1 << 40

type mapping struct {
	Region
	data  []byte // exactly Size bytes of guest memory
	whole []byte // the mmap'ed range (page-aligned start), for munmap
}

// MemTable is the guest memory shared by the front-end: a set of regions,
// each mmap'ed from the file descriptor the front-end passed. It implements
// virtq.Memory (guest physical addresses) and translates front-end virtual
// addresses (ring addresses) to guest physical ones. It is immutable once
// built; Close unmaps it.
type MemTable struct {
	regs []mapping // sorted by GuestPhys
}

// MapRegions checks the regions (non-empty, no address overflow, no overlap
// in guest-physical or front-end-virtual space, file large enough) and maps
// region i from fds[i] with MAP_SHARED at its mmap offset. It does not close
// the fds. On error nothing stays mapped.
func MapRegions(regs []Region, fds []int) (*MemTable, error) {
	if len(regs) != len(fds) {
		return nil, fmt.Errorf("%w: %d regions but %d fds", ErrMemory, len(regs), len(fds))
	}
	if err := checkRegions(regs); err != nil {
		return nil, err
	}
	t := &MemTable{}
	for i, r := range regs {
		m, err := mapRegion(r, fds[i])
		if err != nil {
			t.Close()
			return nil, fmt.Errorf("region %d (gpa %#x size %#x): %w", i, r.GuestPhys, r.Size, err)
		}
		t.regs = append(t.regs, m)
	}
	sort.Slice(t.regs, func(i, j int) bool { return t.regs[i].GuestPhys < t.regs[j].GuestPhys })
	return t, nil
}

func checkRegions(regs []Region) error {
	for i, r := range regs {
		if r.Size == 0 || r.Size > maxRegionSize {
			return fmt.Errorf("%w: region %d size %#x", ErrMemory, i, r.Size)
		}
		if r.GuestPhys+r.Size < r.GuestPhys || r.UserAddr+r.Size < r.UserAddr || r.MmapOffset+r.Size < r.MmapOffset ||
			r.MmapOffset > 1<<62 {
			return fmt.Errorf("%w: region %d address range overflows", ErrMemory, i)
		}
		for j := range i {
			o := regs[j]
			if r.GuestPhys < o.GuestPhys+o.Size && o.GuestPhys < r.GuestPhys+r.Size {
				return fmt.Errorf("%w: regions %d and %d overlap in guest-physical space", ErrMemory, j, i)
			}
			if r.UserAddr < o.UserAddr+o.Size && o.UserAddr < r.UserAddr+r.Size {
				return fmt.Errorf("%w: regions %d and %d overlap in front-end address space", ErrMemory, j, i)
			}
		}
	}
	return nil
}

func mapRegion(r Region, fd int) (mapping, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return mapping{}, fmt.Errorf("%w: fstat: %w", ErrMemory, err)
	}
	// Touching a page beyond the end of the file would raise SIGBUS; refuse
	// regions the file does not cover (for regular files and memfds).
	if st.Mode&unix.S_IFMT == unix.S_IFREG && uint64(st.Size) < r.MmapOffset+r.Size {
		return mapping{}, fmt.Errorf("%w: file of %d bytes does not cover offset %#x + size %#x",
			ErrMemory, st.Size, r.MmapOffset, r.Size)
	}
	page := uint64(os.Getpagesize())
	delta := r.MmapOffset % page
	length := r.Size + delta
	if length > uint64(^uint(0)>>1) {
		return mapping{}, fmt.Errorf("%w: region too large for this platform", ErrMemory)
	}
	whole, err := unix.Mmap(fd, int64(r.MmapOffset-delta), int(length), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return mapping{}, fmt.Errorf("%w: mmap: %w", ErrMemory, err)
	}
	return mapping{Region: r, data: whole[delta:length:length], whole: whole}, nil
}

// Regions returns the table's regions sorted by guest physical address.
func (t *MemTable) Regions() []Region {
	out := make([]Region, len(t.regs))
	for i, m := range t.regs {
		out[i] = m.Region
	}
	return out
}

// find returns the region containing gpa.
func (t *MemTable) find(gpa uint64) *mapping {
	i := sort.Search(len(t.regs), func(i int) bool { return t.regs[i].GuestPhys+t.regs[i].Size > gpa })
	if i < len(t.regs) && t.regs[i].GuestPhys <= gpa {
		return &t.regs[i]
	}
	return nil
}

// Span implements virtq.Memory: the longest contiguous piece (at most n
// bytes) of the region containing gpa, or an error wrapping ErrMemory and
// virtq.ErrOutOfBounds when gpa is in no region.
func (t *MemTable) Span(gpa, n uint64) ([]byte, error) {
	m := t.find(gpa)
	if m == nil || n == 0 {
		return nil, fmt.Errorf("%w: %w: guest address %#x+%d not mapped", ErrMemory, virtq.ErrOutOfBounds, gpa, n)
	}
	off := gpa - m.GuestPhys
	end := m.Size
	if n < end-off {
		end = off + n
	}
	return m.data[off:end:end], nil
}

// UVAToGPA translates a front-end virtual address to a guest physical
// address, or fails with ErrMemory when no region contains it.
func (t *MemTable) UVAToGPA(uva uint64) (uint64, error) {
	for _, m := range t.regs {
		if uva >= m.UserAddr && uva-m.UserAddr < m.Size {
			return m.GuestPhys + (uva - m.UserAddr), nil
		}
	}
	return 0, fmt.Errorf("%w: front-end address %#x not mapped", ErrMemory, uva)
}

// Close unmaps every region. The table must not be used afterwards.
func (t *MemTable) Close() {
	for _, m := range t.regs {
		_ = unix.Munmap(m.whole)
	}
	t.regs = nil
}
