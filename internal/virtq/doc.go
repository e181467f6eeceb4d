// Package virtq implements the device side of a virtio split virtqueue
// (virtio 1.x "split ring") over an abstract guest memory.
//
// The driver (the guest) is untrusted: every index, length and address it
// writes into the descriptor table or the available ring is checked before
// use (no range may wrap the address space or leave guest memory), chains
// are bounded (no loops, no nested indirect tables, at most MaxSegments
// buffers) and a malformed chain marks the queue broken instead of
// panicking or spinning. Package virtqtest plays the driver, well-behaved or
// malicious.
//
// Guest memory is reached through the Memory interface: SliceMemory backs it
// with a byte slice (tests, fuzzing, the simulated driver in virtqtest) and
// the vhost-user back-end backs it with the front-end's shared memory
// regions. The 16-bit ring indexes shared with the driver are accessed with
// 32-bit atomic operations on the aligned word containing them, which gives
// the acquire/release ordering the virtio specification requires.
package virtq
