//go:build !linux

package hugepage

import "errors"

// Mmap is the real [Mapper]; hugetlb mappings exist only on Linux.
type Mmap struct{}

// Map fails: hugetlb mappings exist only on Linux.
func (Mmap) Map(pageSize uint64) (Mapping, error) {
	return nil, errors.New("hugepage: hugetlb mappings are only available on Linux")
}
