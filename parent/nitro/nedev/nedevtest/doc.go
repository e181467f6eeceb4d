// Package nedevtest is a simulated nitro_enclaves driver for tests: [Sim]
// implements the [nedev.Device] seam and enforces the real driver's rules
// (state machine, CPU pool and full cores, hugepage-backed 2 MiB-aligned
// memory on the pool's NUMA node, region limits, minimum size, CID rules),
// counts open file descriptors, injects any error on demand and ends
// enclaves (EPOLLHUP) when a test asks it to. Its errors are built by
// [nedev.NewIoctlError], like the real device's.
package nedevtest
