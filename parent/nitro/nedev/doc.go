// Package nedev is the Linux nitro_enclaves driver ABI (/dev/nitro_enclaves):
// the ioctl numbers and argument structs of include/uapi/linux/nitro_enclaves.h,
// the driver's error codes 256–275 turned into sentinel errors that say what
// went wrong and how to fix it, and a [Device] seam with two implementations:
//
//   - [Open] talks to the real driver with ioctl(2) and poll(2);
//   - nedevtest.Sim, for tests, is a simulated driver that enforces the
//     same rules (state machine, CPU pool and full cores, hugepage-backed
//     2 MiB-aligned memory on the pool's NUMA node, region limits, minimum
//     size, CID rules), counts open file descriptors, injects any error on
//     demand and ends enclaves (EPOLLHUP) when a test asks it to.
//
// Every driver error, real or simulated, passes through one function
// ([NewIoctlError]) that builds an [*IoctlError], so callers see identical
// errors from both.
package nedev
