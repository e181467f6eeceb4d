// Package kmsclient is the in-enclave client of AWS KMS and of Cloister's
// key service: Decrypt, GenerateDataKey and GenerateRandom with an attested
// Recipient, so secrets come back enveloped to a key that never leaves the
// enclave.
//
// A [Client] wraps the unmodified AWS SDK KMS client. It generates one
// ephemeral RSA-2048 key pair (lazily, once), has the security module attest
// its DER SubjectPublicKeyInfo as the document's public_key through an
// [Attester] (an enclave.Session via [SessionAttester]), sends
// {AttestationDocument, KeyEncryptionAlgorithm: RSAES_OAEP_SHA_256}, and
// opens the CiphertextForRecipient with the kms/cms package. The same code
// runs against real AWS KMS and against kms.Server.
//
// From inside an enclave the HTTP client's connections go through the
// parent's egress proxy on vsock port 8000 ([ProxyDialer]); the dialer is
// injectable for tests and other set-ups.
package kmsclient
