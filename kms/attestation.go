package kms

import (
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"strconv"

	"github.com/cloister/cloister/attest"
	"github.com/cloister/cloister/kms/cms"
)

// Attestation documents in requests (Recipient, CloisterAttestation).

// attestedRecipient is a Recipient whose document verified.
type attestedRecipient struct {
	spki []byte
	pcrs map[int][]byte
}

// checkRecipient verifies a Recipient (nil → nil, nil). Shape problems are
// ValidationException: a KeyEncryptionAlgorithm other than
// RSAES_OAEP_SHA_256 (empty means that), an empty or oversized document, a
// document that does not parse, a public_key that is absent or not an RSA
// key of at least 2048 bits. Trust problems are AccessDeniedException: an
// untrusted root, a broken chain, an expired certificate, a bad signature,
// or a timestamp older than MaxAttestationAge (or more than 5 minutes in
// the future). Reusing a document within its age limit is allowed, as on
// AWS. Debug-mode documents are accepted here; their all-zero PCR0/1/2
// simply fail PCR conditions in the policy.
func (s *Server) checkRecipient(c *call, r *RecipientInfo) (*attestedRecipient, error) {
	if r == nil {
		return nil, nil
	}
	if r.KeyEncryptionAlgorithm != "" && r.KeyEncryptionAlgorithm != cms.KeyEncryptionRSAOAEPSHA256 {
		return nil, apiErr(CodeValidation, "Recipient.KeyEncryptionAlgorithm %q is not valid; the only value is RSAES_OAEP_SHA_256", r.KeyEncryptionAlgorithm)
	}
	pol := attest.Policy{PublicKey: attest.RequireRSAPublicKey(MinRecipientRSABits)}
	return s.checkAttestation(c, "Recipient", r.AttestationDocument, pol)
}

// checkSignAttestation verifies the CloisterAttestation member of a Sign
// request (nil → nil, nil) as checkRecipient does, without the RSA public
// key, and requires its user_data to equal digest, the exact bytes to be
// signed: a document made for one message does not get another signed.
func (s *Server) checkSignAttestation(c *call, sa *SignAttestation, digest []byte) (*attestedRecipient, error) {
	if sa == nil {
		return nil, nil
	}
	pol := attest.Policy{UserData: func(u []byte) error {
		if subtle.ConstantTimeCompare(u, digest) != 1 {
			return errors.New("user_data is not the digest being signed")
		}
		return nil
	}}
	return s.checkAttestation(c, "CloisterAttestation", sa.AttestationDocument, pol)
}

// checkAttestation verifies an attestation document and applies pol plus
// the server's age limit (debug documents allowed). Shape problems are
// ValidationException: an empty or oversized document, one that does not
// parse, a public key pol rejects. Trust problems are
// AccessDeniedException: an untrusted root, a broken chain, an expired
// certificate, a bad signature, a timestamp older than MaxAttestationAge
// (or more than 5 minutes in the future), any other check of pol.
func (s *Server) checkAttestation(c *call, member string, docBytes []byte, pol attest.Policy) (*attestedRecipient, error) {
	if len(docBytes) == 0 || len(docBytes) > maxAttestationDoc {
		return nil, apiErr(CodeValidation, "%s.AttestationDocument must be 1 to %d bytes", member, maxAttestationDoc)
	}
	now := s.now()
	v, err := s.attest.Verify(docBytes, now)
	if err != nil {
		if errors.Is(err, attest.ErrMalformed) || errors.Is(err, attest.ErrTooLarge) {
			return nil, apiErr(CodeValidation, "%s.AttestationDocument is not a valid attestation document: %v", member, err)
		}
		c.audit.reason = "attestation rejected: " + err.Error()
		return nil, apiErr(CodeAccessDenied, "User: %s is not authorized: the %s attestation document could not be verified: %v", c.cred.PrincipalARN, member, err)
	}
	doc := v.Document()
	c.audit.pcrs = make(map[string]string, len(doc.PCRs))
	for i, p := range doc.PCRs {
		c.audit.pcrs[strconv.Itoa(i)] = hex.EncodeToString(p)
	}
	pol.AllowDebug, pol.MaxAge = true, s.cfg.MaxAttestationAge
	if err := pol.Evaluate(v, now); err != nil {
		if errors.Is(err, attest.ErrPublicKey) {
			return nil, apiErr(CodeValidation, "%s.AttestationDocument must carry an RSA public key of at least %d bits (DER SubjectPublicKeyInfo): %v", member, MinRecipientRSABits, err)
		}
		c.audit.reason = "attestation rejected: " + err.Error()
		return nil, apiErr(CodeAccessDenied, "User: %s is not authorized: the %s attestation document is not acceptable: %v", c.cred.PrincipalARN, member, err)
	}
	return &attestedRecipient{spki: doc.PublicKey, pcrs: doc.PCRs}, nil
}
