// Package hugepage backs Nitro enclave memory with hugetlb pages the way
// nitro-cli does: one mmap(MAP_HUGETLB|MAP_HUGE_<size>) per page, largest
// page sizes first, the remainder filled smallest-first, surplus pages
// freed (see [Allocate]). The [Mapper] seam has the real implementation
// ([Mmap]) and a fake for tests (hugepagetest.Fake) with per-size page
// accounting that also answers the simulated driver's questions about the
// mappings (nedevtest.MemoryInfo).
package hugepage
