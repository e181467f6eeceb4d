// Package nitro is Cloister's backend for real AWS Nitro Enclaves: it
// launches an EIF through the Linux nitro_enclaves driver
// (/dev/nitro_enclaves) exactly as nitro-cli's run-enclave does —
// NE_CREATE_VM, NE_ADD_VCPU per CPU, hugepage memory with the EIF copied at
// the driver's load offset, NE_SET_USER_MEMORY_REGION per page,
// NE_START_ENCLAVE — reads a debug enclave's console from the hypervisor's
// vsock port CID+10000, detects the enclave's end as EPOLLHUP on the enclave
// fd, and rolls everything back when a step fails.
//
// Every host dependency sits behind a seam so the whole sequence runs in
// tests against the simulated driver (nedevtest.Sim), the fake hugepage
// mapper (hugepagetest.Fake) and Unix-socket stand-ins for AF_VSOCK: the device
// ([Config.OpenDevice]), the memory ([Config.Mapper]), vsock ([Config.Vsock])
// and reads of the image ([Config.WrapImage]).
//
// The CPU pool and hugepage reservation that must exist before any launch
// are set up by the sibling package allocator. See docs/nitro.md.
package nitro
