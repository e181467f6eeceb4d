// Package nsmemu is an emulated Nitro Security Module, served by the
// Cloister daemon to each microVM or sandbox enclave on vsock port
// 0x4E534D of the parent (nsm.Port), using the framing of package nsm.
//
// It behaves like the Nitro module as documented by AWS's nsm-api and its
// nsm-check test and as implemented by QEMU's virtio-nsm device: 32
// SHA-384 PCRs, 0–15 locked at boot with the enclave's measurements,
// 16–31 zero, extendable (SHA-384(old ‖ data)) and lockable; DescribeNSM
// version 1.0.0; GetRandom answers 256 bytes. Attestation documents carry
// exactly the locked PCRs and are signed by an attest.Issuer under the
// host's development root, so attest.Verify accepts them only when that
// root is trusted — never under the AWS root. A debug-mode enclave reports
// PCR0, 1, 2 and 8 as zeros, as Nitro does.
//
// Undecodable requests get InvalidOperation (as QEMU); see
// [Emulator.Handle] for every outcome.
package nsmemu
