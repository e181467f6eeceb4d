// Package enclave is the SDK an application imports to run inside a Cloister
// enclave. The same code works in all three worlds an enclave can run in:
//
//   - a real AWS Nitro enclave (AF_VSOCK and /dev/nsm),
//   - a QEMU microVM run by the Cloister daemon (AF_VSOCK through the
//     daemon's vhost-user-vsock device; the security module is emulated by
//     the parent and reached over vsock),
//   - the Cloister process sandbox (vsock emulated over Unix sockets in a
//     directory the parent bind-mounts; emulated security module).
//
// The world is detected automatically and can be overridden.
//
// Connectivity: [Listen] accepts connections from the parent instance,
// [DialParent] connects to a port on the parent (CID 3).
//
// Security module: [OpenSession] returns a [Session] for attestation
// documents, PCRs and randomness.
package enclave
