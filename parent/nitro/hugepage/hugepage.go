package hugepage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
)

// Page sizes.
const (
	MiB = 1 << 20
	GiB = 1 << 30
)

// DefaultPageSizes are the sizes nitro-cli tries, largest first. Sizes the
// platform lacks simply fail to map (x86_64 has 2 MiB and 1 GiB).
var DefaultPageSizes = []uint64{16 * GiB, 2 * GiB, 1 * GiB, 512 * MiB, 256 * MiB, 32 * MiB, 16 * MiB, 8 * MiB, 2 * MiB}

// Errors.
var (
	// ErrInsufficient means the reserved hugepages cannot hold the request.
	ErrInsufficient = errors.New("hugepage: not enough free hugepages")
	// ErrImageTooLarge means the image does not fit in the mapped memory
	// after the load offset.
	ErrImageTooLarge = errors.New("hugepage: image does not fit in enclave memory")
	// ErrCopy means reading the image into enclave memory failed.
	ErrCopy = errors.New("hugepage: copying the image into enclave memory failed")
)

// Mapping is one hugetlb mapping of exactly one page.
type Mapping interface {
	// Addr is the user-space address of the mapping.
	Addr() uint64
	// Size is the mapping's length in bytes (= its page size).
	Size() uint64
	// Bytes is the mapped memory.
	Bytes() []byte
	// Unmap releases the mapping; calling it twice is an error.
	Unmap() error
}

// Mapper maps hugetlb pages.
type Mapper interface {
	// Map maps one private anonymous hugetlb page of pageSize bytes. It
	// fails when no free page of that size is left (or the size is not
	// supported).
	Map(pageSize uint64) (Mapping, error)
}

// Regions are the mappings of one enclave, sorted by size, largest first.
type Regions []Mapping

// Total returns the regions' combined size.
func (r Regions) Total() uint64 {
	var n uint64
	for _, m := range r {
		n += m.Size()
	}
	return n
}

// Unmap releases every region and returns the first error.
func (r Regions) Unmap() error {
	var first error
	for _, m := range r {
		if err := m.Unmap(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Allocate maps at least want bytes of hugepages with nitro-cli's strategy:
//  1. for each size in sizes (largest first) map pages while the remainder
//     is at least that size, moving to the next size at the first failure;
//  2. if memory is still missing, map pages smallest size first until the
//     remainder is covered (this may overshoot);
//  3. sort the pages largest first and unmap those not needed to reach want.
//
// On failure, including ctx cancellation, everything mapped is unmapped and
// ErrInsufficient (or ctx.Err()) is returned.
func Allocate(ctx context.Context, m Mapper, sizes []uint64, want uint64) (Regions, error) {
	if want == 0 {
		return nil, fmt.Errorf("%w: no memory requested", ErrInsufficient)
	}
	sorted := append([]uint64(nil), sizes...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] > sorted[j] })
	var regs Regions
	var have uint64
	fail := func(err error) (Regions, error) {
		_ = regs.Unmap()
		return nil, err
	}
	for _, size := range sorted {
		for want-have >= size && have < want {
			if err := ctx.Err(); err != nil {
				return fail(err)
			}
			mp, err := m.Map(size)
			if err != nil {
				break
			}
			regs = append(regs, mp)
			have += size
		}
	}
	for i := len(sorted) - 1; i >= 0 && have < want; i-- {
		for have < want {
			if err := ctx.Err(); err != nil {
				return fail(err)
			}
			mp, err := m.Map(sorted[i])
			if err != nil {
				break
			}
			regs = append(regs, mp)
			have += sorted[i]
		}
	}
	if have < want {
		return fail(fmt.Errorf("%w: %d MiB of %d MiB could be mapped; reserve more hugepages (memory_mib in the daemon config, or /sys/kernel/mm/hugepages/hugepages-*/nr_hugepages) or request less memory",
			ErrInsufficient, have/MiB, (want+MiB-1)/MiB))
	}
	sort.SliceStable(regs, func(i, j int) bool { return regs[i].Size() > regs[j].Size() })
	var keep int
	var sum uint64
	for keep < len(regs) && sum < want {
		sum += regs[keep].Size()
		keep++
	}
	if err := regs[keep:].Unmap(); err != nil {
		_ = regs[:keep].Unmap()
		return nil, fmt.Errorf("hugepage: unmap surplus pages: %w", err)
	}
	return regs[:keep], nil
}

// CopyImage copies size bytes from src (read sequentially from offset 0)
// into the regions viewed as one contiguous space, starting at offset. It
// fails with ErrImageTooLarge when offset+size exceeds the regions and with
// ErrCopy when src fails or ends early.
func (r Regions) CopyImage(offset uint64, src io.Reader, size uint64) error {
	total := r.Total()
	if offset > total || size > total-offset {
		return fmt.Errorf("%w: %d bytes at offset %d MiB need %d MiB, the enclave has %d MiB; request more memory",
			ErrImageTooLarge, size, offset/MiB, (offset+size+MiB-1)/MiB, total/MiB)
	}
	skip, left := offset, size
	var copied uint64
	for _, m := range r {
		if left == 0 {
			break
		}
		n := m.Size()
		if skip >= n {
			skip -= n
			continue
		}
		dst := m.Bytes()[skip:]
		skip = 0
		if uint64(len(dst)) > left {
			dst = dst[:left]
		}
		if _, err := io.ReadFull(src, dst); err != nil {
			return fmt.Errorf("%w: after %d of %d bytes: %v", ErrCopy, copied, size, err)
		}
		copied += uint64(len(dst))
		left -= uint64(len(dst))
	}
	return nil
}
