// Package kms is Cloister's key service: an AWS-KMS-compatible HTTP server
// whose decisions can be gated on Nitro Enclave attestation.
//
// [Server] speaks the KMS JSON 1.1 protocol (POST /, X-Amz-Target:
// TrentService.<Op>, SigV4), so the unmodified AWS SDKs, the AWS CLI and
// aws-nitro-enclaves-sdk-c talk to it. Keys are symmetric (SYMMETRIC_DEFAULT),
// RSA, elliptic-curve (NIST and secp256k1) or HMAC, with AWS's key specs,
// usages and algorithms, and live in a [store.Store]; access is decided by
// AWS-style key policies ([policy]) that may use the
// kms:RecipientAttestation:* condition keys, and by grants. A request
// carrying a Recipient (Decrypt, GenerateDataKey, GenerateDataKeyPair,
// DeriveSharedSecret, GenerateRandom) has its attestation document
// verified with [attest] and gets the secret back enveloped to the
// enclave's key as a CMS CiphertextForRecipient ([cms]) instead of in
// plain; a Sign request may carry one in the CloisterAttestation extension
// member (see [SignAttestation]).
//
// The ciphertext blobs are Cloister's own authenticated, versioned format
// (see ciphertext.go): they name the key and material version and bind the
// encryption context. The Cloister-only operation
// TrentService.CloisterExplain is a dry run of a policy decision, or, with
// RequestId, the recorded reasoning of a denied request.
package kms
