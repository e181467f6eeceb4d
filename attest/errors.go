package attest

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors. Every error returned by this package wraps exactly the
// sentinels that describe the failure class; test with errors.Is.
var (
	// ErrMalformed: the input is not a well-formed attestation document
	// (CBOR, COSE_Sign1 structure or payload syntax of nitro-reference §4.2).
	ErrMalformed = errors.New("attest: malformed attestation document")
	// ErrTooLarge: the input exceeds [MaxDocumentSize].
	ErrTooLarge = errors.New("attest: attestation document too large")
	// ErrUnsupportedAlgorithm: the COSE algorithm is not ES384, or a
	// certificate's key or signature algorithm is not ECDSA P-384/SHA-384.
	ErrUnsupportedAlgorithm = errors.New("attest: unsupported algorithm")
	// ErrChain: the certificate chain is broken (unparsable certificate,
	// wrong signature, basicConstraints, pathLen or keyUsage violation).
	ErrChain = errors.New("attest: invalid certificate chain")
	// ErrUntrustedRoot: cabundle[0] is not byte-equal to a trusted root.
	ErrUntrustedRoot = errors.New("attest: untrusted root certificate")
	// ErrExpired: a certificate of the chain expired before the check time.
	ErrExpired = errors.New("attest: certificate expired")
	// ErrNotYetValid: a certificate of the chain is not valid yet at the check time.
	ErrNotYetValid = errors.New("attest: certificate not yet valid")
	// ErrSignature: the COSE_Sign1 signature does not verify with the leaf key.
	ErrSignature = errors.New("attest: invalid document signature")

	// ErrPCRMismatch: policy — a PCR differs from the expected value.
	ErrPCRMismatch = errors.New("attest: pcr mismatch")
	// ErrDebug: policy — the enclave runs in debug mode and debug is not allowed.
	ErrDebug = errors.New("attest: debug-mode enclave")
	// ErrNonce: policy — the nonce differs from the expected one.
	ErrNonce = errors.New("attest: nonce mismatch")
	// ErrStale: policy — the document is older than the allowed age, or
	// dated in the future beyond the allowed clock skew.
	ErrStale = errors.New("attest: stale attestation document")
	// ErrUserData: policy — user_data rejected by the matcher.
	ErrUserData = errors.New("attest: user_data rejected")
	// ErrPublicKey: policy — public_key rejected by the matcher.
	ErrPublicKey = errors.New("attest: public_key rejected")
)

// CertificateError reports a problem with one certificate of the chain.
// Index counts in chain order: 0 is the leaf (the document's certificate),
// 1 the last cabundle entry, …, len(cabundle) the root (cabundle[0]).
type CertificateError struct {
	Index   int
	Subject string // empty when the certificate could not be parsed
	Err     error  // wraps a sentinel such as ErrExpired or ErrChain
}

// Error names the certificate by chain index and subject, then the cause.
func (e *CertificateError) Error() string {
	s := fmt.Sprintf("certificate %d", e.Index)
	if e.Subject != "" {
		s += " (" + e.Subject + ")"
	}
	return s + ": " + e.Err.Error()
}

// Unwrap returns the underlying error.
func (e *CertificateError) Unwrap() error { return e.Err }

// PCRMismatchError reports one PCR that differs from the policy. Got is nil
// when the document does not contain the PCR.
type PCRMismatchError struct {
	Index int
	Want  []byte
	Got   []byte
}

// Error gives the index, the document's value (or "absent") and the expected value.
func (e *PCRMismatchError) Error() string {
	got := "absent"
	if e.Got != nil {
		got = hex.EncodeToString(e.Got)
	}
	return fmt.Sprintf("attest: pcr mismatch: PCR%d = %s, want %s", e.Index, got, hex.EncodeToString(e.Want))
}

// Unwrap returns [ErrPCRMismatch].
func (e *PCRMismatchError) Unwrap() error { return ErrPCRMismatch }

// PolicyError lists every policy check that failed. Each failure wraps one
// policy sentinel, so errors.Is(err, ErrNonce) etc. work on a *PolicyError.
type PolicyError struct {
	Failures []error
}

// Error joins every failure with "; ".
func (e *PolicyError) Error() string {
	msgs := make([]string, len(e.Failures))
	for i, f := range e.Failures {
		msgs[i] = f.Error()
	}
	return "attest: policy rejected the document: " + strings.Join(msgs, "; ")
}

// Unwrap returns the individual failures.
func (e *PolicyError) Unwrap() []error { return e.Failures }
