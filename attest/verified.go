package attest

import (
	"crypto/x509"
	"encoding/hex"
	"slices"
	"strconv"
	"time"
)

// Verified is an attestation document whose signature and certificate chain
// have been verified by [Verifier.Verify], the only constructor. It says
// nothing about policy: see [Policy.Evaluate].
type Verified struct {
	doc   Document
	chain []*x509.Certificate
	raw   []byte
}

// Document returns a deep copy of the verified payload.
func (v *Verified) Document() Document { return v.doc.Clone() }

// Chain returns the verified certificate chain, leaf first and root last.
// The certificates are shared with the Verifier's cache: do not modify them.
func (v *Verified) Chain() []*x509.Certificate { return slices.Clone(v.chain) }

// Debug reports whether the document comes from a debug-mode enclave: PCR0,
// PCR1 and PCR2 are all zero bytes (an absent one counts as zero).
func (v *Verified) Debug() bool {
	for i := 0; i <= 2; i++ {
		for _, b := range v.doc.PCRs[i] {
			if b != 0 {
				return false
			}
		}
	}
	return true
}

// Raw returns a copy of the document bytes without a leading tag 18.
func (v *Verified) Raw() []byte { return slices.Clone(v.raw) }

// Claims is the JSON view of a verified document (used by `cloister verify
// --json` and the verifier service). Byte strings are lower-case hex; absent
// optional fields are null; times are RFC 3339 in UTC.
type Claims struct {
	ModuleID     string             `json:"module_id"`
	Timestamp    string             `json:"timestamp"`
	Digest       string             `json:"digest"`
	PCRs         map[string]string  `json:"pcrs"` // decimal index -> hex
	UserData     *string            `json:"user_data"`
	Nonce        *string            `json:"nonce"`
	PublicKey    *string            `json:"public_key"`
	Debug        bool               `json:"debug"`
	Certificates []CertificateClaim `json:"certificates"` // leaf first, root last
	Policy       *PolicyReport      `json:"policy,omitempty"`
}

// CertificateClaim describes one certificate of the verified chain.
type CertificateClaim struct {
	Subject   string `json:"subject"`
	NotBefore string `json:"not_before"`
	NotAfter  string `json:"not_after"`
}

// Claims returns the JSON view of v (Policy is left nil).
func (v *Verified) Claims() Claims {
	c := Claims{
		ModuleID:  v.doc.ModuleID,
		Timestamp: v.doc.Timestamp.UTC().Format(time.RFC3339Nano),
		Digest:    v.doc.Digest,
		PCRs:      make(map[string]string, len(v.doc.PCRs)),
		UserData:  optHex(v.doc.UserData),
		Nonce:     optHex(v.doc.Nonce),
		PublicKey: optHex(v.doc.PublicKey),
		Debug:     v.Debug(),
	}
	for i, p := range v.doc.PCRs {
		c.PCRs[strconv.Itoa(i)] = hex.EncodeToString(p)
	}
	for _, cert := range v.chain {
		c.Certificates = append(c.Certificates, CertificateClaim{
			Subject:   cert.Subject.String(),
			NotBefore: cert.NotBefore.UTC().Format(time.RFC3339),
			NotAfter:  cert.NotAfter.UTC().Format(time.RFC3339),
		})
	}
	return c
}

func optHex(b []byte) *string {
	if b == nil {
		return nil
	}
	s := hex.EncodeToString(b)
	return &s
}
