// Package secret is the reusable core of the kms-secret example: a parent
// seals a secret with the key service so that only an enclave running one
// exact image can unseal it, and hands the sealed secret to the enclave,
// which decrypts it through attestation.
//
// Parent side:
//   - [KeyPolicy] and [CreateKey] create a KMS key whose policy lets the
//     enclave's principal call Decrypt only with a Recipient attestation
//     document whose PCR0 (kms:RecipientAttestation:ImageSha384) is the
//     image's;
//   - [Seal] encrypts the secret under that key;
//   - [Unseal] sends the sealed secret, the key service's address and the
//     enclave's credentials to the enclave over a stream (vsock through the
//     daemon) and returns the enclave's answer.
//
// Enclave side:
//   - [Serve] answers such requests, one per connection, with a decrypt
//     function — in the example [kmsclient.Client.Decrypt] with the enclave's
//     attested Recipient;
//
// The wire protocol between parent and enclave is one JSON [Request] line
// answered by one JSON [Response] line.
package secret
