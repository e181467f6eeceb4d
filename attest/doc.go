// Package attest parses, verifies and issues AWS Nitro Enclaves attestation
// documents (nitro-reference §4).
//
// The package is split by concern, like Google's go-sev-guest:
//
//   - [ParseUnverified] decodes a COSE_Sign1 document with strict CBOR,
//     checks the NSM's COSE profile and the syntax of the payload, then
//     hands the bytes to go-cose (github.com/veraison/go-cose), which must
//     decode the same message. Its result is untrusted.
//   - [Verifier.Verify] answers "did Nitro hardware say this?": certificate
//     chain up to a pinned root (the embedded AWS Nitro Enclaves Root-G1
//     and/or configured roots), validity of every certificate at a given
//     time, and the ES384 signature, verified by go-cose. Only Verify
//     constructs a [Verified].
//   - [Policy.Evaluate] answers "is what it said acceptable?": PCRs, debug
//     mode, nonce, user_data, public_key and age. It reports every failing
//     check, not just the first.
//   - [Issuer] creates byte-compatible documents, signed with go-cose by a
//     generated development chain; Cloister's NSM emulator uses it in the microVM and
//     sandbox worlds. Its documents never verify under the AWS root.
//
// Errors wrap the exported sentinels (ErrMalformed, ErrSignature,
// ErrExpired, …) for errors.Is, and carry detail in *CertificateError,
// *PCRMismatchError and *PolicyError for errors.As.
package attest
