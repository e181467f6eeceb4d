package attestedtls

import (
	"encoding/hex"
	"errors"
	"fmt"
)

// Error classes of Client.Handshake, for errors.Is.
var (
	// ErrHandshake: the TLS handshake failed.
	ErrHandshake = errors.New("attestedtls: TLS handshake failed")
	// ErrEndpoint: the attestation endpoint did not answer a document
	// (status other than 200, a body over attest.MaxDocumentSize, the
	// connection closed or extra bytes after the answer).
	ErrEndpoint = errors.New("attestedtls: attestation endpoint failed")
	// ErrVerify: the document does not verify (malformed, untrusted root,
	// expired certificate, bad signature); the attest sentinel is wrapped
	// too.
	ErrVerify = errors.New("attestedtls: attestation document does not verify")
	// ErrReplay: the document's nonce is not the one the client just sent
	// (a stale or replayed document).
	ErrReplay = errors.New("attestedtls: attestation document is not fresh (nonce mismatch)")
	// ErrKeyMismatch: the document's user_data is not the binding of the
	// TLS peer's public key (the document belongs to another key).
	ErrKeyMismatch = errors.New("attestedtls: attestation document is bound to another TLS key")
	// ErrPolicy: the configured attest.Policy rejects the document; the
	// *attest.PolicyError is wrapped too.
	ErrPolicy = errors.New("attestedtls: attestation document rejected by policy")
)

// ReplayError reports a document whose nonce is not the client's.
type ReplayError struct {
	Sent []byte // the nonce the client sent
	Got  []byte // the document's nonce (nil when absent)
}

// Error gives both nonces in hex.
func (e *ReplayError) Error() string {
	got := "none"
	if e.Got != nil {
		got = hex.EncodeToString(e.Got)
	}
	return fmt.Sprintf("%v: sent %s, document has %s", ErrReplay, hex.EncodeToString(e.Sent), got)
}

// Unwrap returns ErrReplay.
func (e *ReplayError) Unwrap() error { return ErrReplay }

// KeyMismatchError reports a document whose user_data is not the binding
// of the TLS peer's key.
type KeyMismatchError struct {
	Want []byte // KeyBinding of the peer's SubjectPublicKeyInfo
	Got  []byte // the document's user_data (nil when absent)
}

// Error gives the expected binding and the document's user_data in hex.
func (e *KeyMismatchError) Error() string {
	got := "none"
	if e.Got != nil {
		got = hex.EncodeToString(e.Got)
	}
	return fmt.Sprintf("%v: the TLS key's binding is %s, document user_data is %s", ErrKeyMismatch, hex.EncodeToString(e.Want), got)
}

// Unwrap returns ErrKeyMismatch.
func (e *KeyMismatchError) Unwrap() error { return ErrKeyMismatch }
