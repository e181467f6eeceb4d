package verifier

import (
	"crypto/x509"
	"encoding/base64"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/cloister/cloister/attest"
)

// EAR constants (draft-ietf-rats-ear, nitro-reference §13.a3).
const (
	// EATProfile is the eat_profile of every token: Veraison's EAR profile.
	EATProfile = "tag:github.com,2023:veraison/ear"
	// SubmodName is the submodule under which the appraisal of a Nitro
	// attestation document appears in submods.
	SubmodName = "aws-nitro"
	// VerifierDeveloper is ear.verifier-id.developer.
	VerifierDeveloper = "https://github.com/cloister/cloister"
)

// Trust tiers (ear.status and the verdict of a response).
const (
	StatusNone            = "none"            // no claim was made (never returned by this verifier)
	StatusAffirming       = "affirming"       // every claim in 2..31: verified, policy satisfied, AWS hardware
	StatusWarning         = "warning"         // worst claim in 32..95: e.g. debug allowed, non-AWS root
	StatusContraindicated = "contraindicated" // worst claim in 96..127: a check failed
)

// AR4SI trustworthiness claim values used by this verifier.
const (
	ClaimNone                 int8 = 0  // no claim
	ClaimTrustworthyInstance  int8 = 2  // instance-identity: chain and signature verified
	ClaimApproved             int8 = 2  // configuration / executables: as the policy requires
	ClaimGenuineHardware      int8 = 2  // hardware: chain ends in the AWS Nitro root
	ClaimUnsafe               int8 = 32 // configuration: debug mode allowed by policy; hardware: non-AWS root
	ClaimUntrustworthy        int8 = 96 // instance-identity: freshness or binding failed; executables/configuration: contraindicated
	ClaimUnrecognized         int8 = 97 // instance-identity / hardware: chain ends in no trusted root
	ClaimCryptoValidationFail int8 = 99 // chain, validity period or signature failed
)

// TrustVector is the EAR trustworthiness vector (AR4SI). Zero members mean
// "no claim" and are omitted.
type TrustVector struct {
	InstanceIdentity int8 `json:"instance-identity,omitempty"`
	Configuration    int8 `json:"configuration,omitempty"`
	Executables      int8 `json:"executables,omitempty"`
	FileSystem       int8 `json:"file-system,omitempty"`
	Hardware         int8 `json:"hardware,omitempty"`
	RuntimeOpaque    int8 `json:"runtime-opaque,omitempty"`
	StorageOpaque    int8 `json:"storage-opaque,omitempty"`
	SourcedData      int8 `json:"sourced-data,omitempty"`
}

// tier maps an AR4SI value to its trust tier.
func tier(v int8) int {
	switch {
	case v >= 96:
		return 96
	case v >= 32:
		return 32
	case v >= 2:
		return 2
	}
	return 0
}

// Status derives ear.status from the vector: the worst tier of any claim
// ("none" when no claim is made).
func (tv TrustVector) Status() string {
	worst := 0
	for _, v := range []int8{tv.InstanceIdentity, tv.Configuration, tv.Executables, tv.FileSystem,
		tv.Hardware, tv.RuntimeOpaque, tv.StorageOpaque, tv.SourcedData} {
		worst = max(worst, tier(v))
	}
	switch worst {
	case 96:
		return StatusContraindicated
	case 32:
		return StatusWarning
	case 2:
		return StatusAffirming
	}
	return StatusNone
}

// VerifierID is ear.verifier-id.
type VerifierID struct {
	Build     string `json:"build"`
	Developer string `json:"developer"`
}

// NitroEvidence is the verified content of the document, carried in
// ear.veraison.annotated-evidence. Byte strings are lower-case hex.
type NitroEvidence struct {
	ModuleID  string            `json:"module_id"`
	Digest    string            `json:"digest"`
	Timestamp string            `json:"timestamp"`
	PCRs      map[string]string `json:"pcrs"`
	UserData  *string           `json:"user_data"`
	Nonce     *string           `json:"nonce"`
	PublicKey *string           `json:"public_key"`
	Debug     bool              `json:"debug"`
}

// PolicyClaims is ear.veraison.policy-claims: the checks that failed (the
// response of POST /v1/verify lists every check) and the first problem.
// Absent when every check passed.
type PolicyClaims struct {
	Failed  []Check `json:"failed"`
	Problem string  `json:"problem"`
}

// KeyAttestation is ear.veraison.key-attestation: the document's
// public_key when it is a DER SubjectPublicKeyInfo.
type KeyAttestation struct {
	AKPub string `json:"akpub"` // base64url SPKI
}

// Appraisal is the EAR appraisal of one submodule.
type Appraisal struct {
	Status         string          `json:"ear.status"`
	TrustVector    TrustVector     `json:"ear.trustworthiness-vector"`
	PolicyID       string          `json:"ear.appraisal-policy-id"`
	Evidence       *NitroEvidence  `json:"ear.veraison.annotated-evidence,omitempty"`
	PolicyClaims   *PolicyClaims   `json:"ear.veraison.policy-claims,omitempty"`
	KeyAttestation *KeyAttestation `json:"ear.veraison.key-attestation,omitempty"`
}

// EAR is the claims set of a token issued by the verifier. It implements
// jwt.Claims, so relying parties can parse tokens with
// jwt.ParseWithClaims(token, &verifier.EAR{}, keyFunc).
type EAR struct {
	Profile    string               `json:"eat_profile"`
	IssuedAt   int64                `json:"iat"`
	Expiry     int64                `json:"exp"`
	Issuer     string               `json:"iss,omitempty"`
	ID         string               `json:"jti,omitempty"`
	VerifierID VerifierID           `json:"ear.verifier-id"`
	Nonce      string               `json:"eat_nonce,omitempty"` // base64url (no padding), 8..64 bytes
	Submods    map[string]Appraisal `json:"submods"`
}

var _ jwt.Claims = (*EAR)(nil)

// GetExpirationTime returns exp.
func (e *EAR) GetExpirationTime() (*jwt.NumericDate, error) {
	return jwt.NewNumericDate(time.Unix(e.Expiry, 0)), nil
}

// GetIssuedAt returns iat.
func (e *EAR) GetIssuedAt() (*jwt.NumericDate, error) {
	return jwt.NewNumericDate(time.Unix(e.IssuedAt, 0)), nil
}

// GetNotBefore returns nil: EAR tokens carry no nbf.
func (e *EAR) GetNotBefore() (*jwt.NumericDate, error) { return nil, nil }

// GetIssuer returns iss.
func (e *EAR) GetIssuer() (string, error) { return e.Issuer, nil }

// GetSubject returns "": EAR tokens carry no sub.
func (e *EAR) GetSubject() (string, error) { return "", nil }

// GetAudience returns nil: EAR tokens carry no aud.
func (e *EAR) GetAudience() (jwt.ClaimStrings, error) { return nil, nil }

// nitroEvidence converts a document's claims for the token.
func nitroEvidence(c attest.Claims) *NitroEvidence {
	return &NitroEvidence{
		ModuleID: c.ModuleID, Digest: c.Digest, Timestamp: c.Timestamp, PCRs: c.PCRs,
		UserData: c.UserData, Nonce: c.Nonce, PublicKey: c.PublicKey, Debug: c.Debug,
	}
}

// keyAttestation returns the key-attestation claim when pub is a DER SPKI.
func keyAttestation(pub []byte) *KeyAttestation {
	if pub == nil {
		return nil
	}
	if _, err := x509.ParsePKIXPublicKey(pub); err != nil {
		return nil
	}
	return &KeyAttestation{AKPub: base64.RawURLEncoding.EncodeToString(pub)}
}

// eatNonce returns the eat_nonce for a document nonce: base64url when it
// is 8..64 bytes (EAT's bounds), else "".
func eatNonce(n []byte) string {
	if len(n) < 8 || len(n) > 64 {
		return ""
	}
	return base64.RawURLEncoding.EncodeToString(n)
}
