// Package allocator prepares a Nitro parent instance for enclaves, as
// nitro-cli's nitro-enclaves-allocator service does: it fills the
// nitro_enclaves CPU pool (ne_cpus) with full cores of one NUMA node —
// never CPU 0 or its hyperthread siblings — and reserves the enclave memory
// as hugepages on that node, largest page size first, rolling the hugepage
// counts back when the memory cannot be reserved.
//
// Every file access goes through the [Sysfs] seam rooted at a directory, so
// tests run against a fake /sys tree in a temporary directory.
package allocator
