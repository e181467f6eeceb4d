// Package eif reads, writes, measures and signs Enclave Image Format (EIF)
// files, byte-compatible with AWS nitro-cli (aws-nitro-enclaves-image-format):
//
//   - [Marshal], [Write] and the streaming [Writer] produce the exact layout
//     nitro-cli writes: a 548-byte big-endian header (version 4), then
//     Kernel | Cmdline | Metadata | Ramdisk… | [Signature], each a 12-byte
//     section header followed by its data, no padding, with nitro's CRC-32.
//   - [Read] and [Open] parse untrusted files: every offset, size, count and
//     order rule is checked and reported with a sentinel error; nothing is
//     allocated beyond the file's size and malformed input never panics.
//   - [Measure] computes PCR0/1/2/8 with nitro-cli's formulas; [Measurer]
//     does it incrementally while an image is streamed. [PCRFromReader],
//     [PCR8FromCertificate], [PCR3ForRoleARN], [PCR4ForInstanceID] and
//     [Extend] cover the other registers and `nitro-cli pcr`.
//   - [Sign] adds nitro's signature section (a COSE_Sign1 over PCR0 with an
//     EC key) and [VerifySignature] checks one; COSE signing and
//     verification are go-cose's (github.com/veraison/go-cose), behind a
//     strict check of nitro's COSE profile ([VerifyCOSE]).
//   - [BuildInfo] and [Describe] produce nitro-cli's JSON output for
//     build-enclave/sign-eif and describe-eif.
//
// Images without a kernel: when no enclave kernel is available, Cloister's
// builder writes the marker [NoKernelMarker] as the kernel section. Such an
// image is structurally valid and has well-defined measurements (useful for
// the process sandbox, which has no kernel of its own), but it cannot boot:
// [IsNoKernel] lets the Nitro and microVM back ends refuse it clearly.
package eif
