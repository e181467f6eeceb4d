// Package cms builds and parses the CMS (RFC 5652) EnvelopedData that AWS KMS
// returns as CiphertextForRecipient when a request carries an attested
// Recipient.
//
// The shape is fixed by AWS: a BER ContentInfo (id-envelopedData) holding
// EnvelopedData version 2 with one KeyTransRecipientInfo version 2 whose rid
// is [0] subjectKeyIdentifier = SHA-256 of the recipient's DER
// SubjectPublicKeyInfo, key transport RSAES-OAEP (SHA-256, MGF1-SHA-256),
// and AES-256-CBC content encryption with PKCS#7 padding. [Encrypt] emits
// that layout byte for byte in structure (the key service uses it);
// [Parse] and [Decrypt] accept both the constructed/indefinite and the
// primitive encryptedContent forms seen in real AWS output (the enclave
// client uses them). Parsing is bounded and never panics on hostile input.
package cms
