package eif

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"io"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/veraison/go-cose"

	"github.com/cloister/cloister/internal/cborx"
)

// COSE algorithm identifiers nitro-cli uses, chosen by the key's curve.
const (
	AlgES256 = -7  // P-256, SHA-256
	AlgES384 = -35 // P-384, SHA-384
	AlgES512 = -36 // P-521, SHA-512
)

// SignatureSection is the decoded content of a signature section: the
// first (and only) PcrSignature of nitro's Vec<PcrSignature>.
type SignatureSection struct {
	CertificatePEM []byte // the signing certificate file as given to the signer
	COSESign1      []byte // untagged COSE_Sign1 over PcrInfo{0, PCR0}
}

type pcrSignatureCBOR struct {
	SigningCertificate []uint64 `cbor:"signing_certificate"`
	Signature          []uint64 `cbor:"signature"`
}

// EncodeSignatureSection encodes s exactly as nitro's serde_cbor does: an
// array holding one map {"signing_certificate": [uint…], "signature": [uint…]}.
func EncodeSignatureSection(s SignatureSection) []byte {
	b := cborx.AppendHead(nil, cborx.MajorArray, 1)
	b = cborx.AppendHead(b, cborx.MajorMap, 2)
	b = cborx.AppendText(b, "signing_certificate")
	b = cborUintArray(b, s.CertificatePEM)
	b = cborx.AppendText(b, "signature")
	b = cborUintArray(b, s.COSESign1)
	return b
}

// DecodeSignatureSection decodes an untrusted signature section with strict
// CBOR limits. It requires an array of exactly one map with exactly the two
// fields, each a non-empty array of byte values.
func DecodeSignatureSection(b []byte) (SignatureSection, error) {
	if len(b) > MaxSignatureSize {
		return SignatureSection{}, fmt.Errorf("%w: %d bytes", ErrTooLarge, len(b))
	}
	var v []pcrSignatureCBOR
	if err := decodeStrict(b, &v); err != nil {
		return SignatureSection{}, fmt.Errorf("%w: %w", ErrSignature, err)
	}
	if len(v) != 1 {
		return SignatureSection{}, fmt.Errorf("%w: %d signatures, want 1", ErrSignature, len(v))
	}
	cert, err := uintsToBytes("signing_certificate", v[0].SigningCertificate)
	if err != nil {
		return SignatureSection{}, fmt.Errorf("%w: %w", ErrSignature, err)
	}
	sig, err := uintsToBytes("signature", v[0].Signature)
	if err != nil {
		return SignatureSection{}, fmt.Errorf("%w: %w", ErrSignature, err)
	}
	if len(cert) == 0 || len(sig) == 0 {
		return SignatureSection{}, fmt.Errorf("%w: empty certificate or signature", ErrSignature)
	}
	return SignatureSection{CertificatePEM: cert, COSESign1: sig}, nil
}

// PCRInfoPayload returns serde_cbor(PcrInfo{register_index, register_value}),
// the payload nitro signs: {"register_index": i, "register_value": [uint…]}.
func PCRInfoPayload(index int32, value []byte) []byte {
	b := cborx.AppendHead(nil, cborx.MajorMap, 2)
	b = cborx.AppendText(b, "register_index")
	b = cborx.AppendInt(b, int64(index))
	b = cborx.AppendText(b, "register_value")
	return cborUintArray(b, value)
}

type curveParams struct {
	alg  cose.Algorithm
	hash crypto.Hash
	size int // bytes of r and of s
}

func paramsFor(pub any) (curveParams, error) {
	k, ok := pub.(*ecdsa.PublicKey)
	if !ok {
		return curveParams{}, fmt.Errorf("%w: %T (nitro-cli signs with EC keys only)", ErrKey, pub)
	}
	switch k.Curve {
	case elliptic.P256():
		return curveParams{AlgES256, crypto.SHA256, 32}, nil
	case elliptic.P384():
		return curveParams{AlgES384, crypto.SHA384, 48}, nil
	case elliptic.P521():
		return curveParams{AlgES512, crypto.SHA512, 66}, nil
	}
	return curveParams{}, fmt.Errorf("%w: curve %s", ErrKey, k.Curve.Params().Name)
}

// protectedHeader returns the protected header nitro's cose crate writes for
// alg, {1: alg}, as the content of its byte string.
func protectedHeader(alg cose.Algorithm) []byte {
	b := cborx.AppendHead(nil, cborx.MajorMap, 1)
	b = cborx.AppendHead(b, cborx.MajorUint, uint64(cose.HeaderLabelAlgorithm))
	return cborx.AppendInt(b, int64(alg))
}

// hashSigner gives a crypto.Signer the hash it signs with: go-cose calls
// Sign with nil SignerOpts, which signers backed by an HSM or a KMS may
// refuse. (go-cose uses an *ecdsa.PrivateKey directly, without this.)
type hashSigner struct {
	crypto.Signer
	hash crypto.Hash
}

func (s hashSigner) Sign(r io.Reader, digest []byte, _ crypto.SignerOpts) ([]byte, error) {
	return s.Signer.Sign(r, digest, s.hash)
}

// SignCOSE returns an untagged COSE_Sign1 of payload made the way nitro's
// cose crate makes it: protected {1: alg} with alg by curve (ES256, ES384,
// ES512), unprotected {}, signature r‖s each left-padded to the curve size,
// over Sig_structure ["Signature1", protected, h”, payload] hashed with
// SHA-256/384/512. key must be an ECDSA signer on P-256, P-384 or P-521.
// Signing and encoding are go-cose's; the result is checked with
// [VerifyCOSE] before it is returned, so a signer that returns a bad
// signature fails with [ErrKey].
func SignCOSE(payload []byte, key crypto.Signer) ([]byte, error) {
	p, err := paramsFor(key.Public())
	if err != nil {
		return nil, err
	}
	ck := key
	if _, ok := key.(*ecdsa.PrivateKey); !ok {
		ck = hashSigner{Signer: key, hash: p.hash}
	}
	signer, err := cose.NewSigner(p.alg, ck)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKey, err)
	}
	msg := cose.UntaggedSign1Message{
		Headers: cose.Headers{
			Protected: cose.ProtectedHeader{cose.HeaderLabelAlgorithm: p.alg},
			// The exact bytes nitro writes, rather than go-cose's encoding
			// of the map (the same bytes today), so the layout cannot drift.
			RawProtected: cborx.AppendBytes(nil, protectedHeader(p.alg)),
		},
		Payload: payload,
	}
	if err := msg.Sign(rand.Reader, nil, signer); err != nil {
		return nil, fmt.Errorf("%w: sign: %w", ErrKey, err)
	}
	out, err := msg.MarshalCBOR()
	if err != nil {
		return nil, fmt.Errorf("eif: sign: encode COSE_Sign1: %w", err)
	}
	if _, err := VerifyCOSE(out, key.Public()); err != nil {
		return nil, fmt.Errorf("%w: the signer's signature does not verify: %v", ErrKey, err)
	}
	return out, nil
}

// VerifyCOSE checks an untrusted COSE_Sign1 (tagged with 18 or untagged)
// under pub and returns its payload. Before go-cose sees the message it
// checks nitro's profile with internal/cborx's strict decoder: an array of
// exactly 4 items (shortest head, nothing after it); the protected header a
// byte string holding exactly {1: alg}, alg being the one nitro's curve
// mapping gives for pub ([ErrSignatureVerify] for another algorithm or extra
// entries); the unprotected header the empty map; the payload a byte
// string; the signature a byte string of twice the curve size
// ([ErrSignatureVerify]). go-cose then decodes the message and verifies the
// ECDSA signature over the Sig_structure ([ErrSignatureVerify]). Malformed
// input fails with [ErrSignature].
func VerifyCOSE(msg []byte, pub any) ([]byte, error) {
	p, err := paramsFor(pub)
	if err != nil {
		return nil, err
	}
	data, _ := cborx.StripTag(msg, cose.CBORTagSign1Message)
	if len(data) == 0 || data[0] != 0x84 { // array(4), shortest head: go-cose requires it
		return nil, fmt.Errorf("%w: COSE_Sign1 is not an array of 4 items", ErrSignature)
	}
	var arr []cbor.RawMessage
	if err := cborx.Decode(data, &arr); err != nil {
		return nil, fmt.Errorf("%w: COSE_Sign1: %w", ErrSignature, err)
	}
	if len(arr) != 4 {
		return nil, fmt.Errorf("%w: COSE_Sign1 has %d items, want 4", ErrSignature, len(arr))
	}
	var prot, payload, sig []byte
	for _, f := range []struct {
		raw  cbor.RawMessage
		dst  *[]byte
		what string
	}{{arr[0], &prot, "protected header"}, {arr[2], &payload, "payload"}, {arr[3], &sig, "signature"}} {
		if cborx.Major(f.raw) != cborx.MajorBytes {
			return nil, fmt.Errorf("%w: COSE_Sign1 %s is not a byte string", ErrSignature, f.what)
		}
		if err := cborx.Decode(f.raw, f.dst); err != nil {
			return nil, fmt.Errorf("%w: COSE_Sign1 %s: %w", ErrSignature, f.what, err)
		}
	}
	var protMap map[any]any
	if cborx.Major(prot) != cborx.MajorMap {
		return nil, fmt.Errorf("%w: protected header is not a CBOR map", ErrSignature)
	}
	if err := cborx.Decode(prot, &protMap); err != nil {
		return nil, fmt.Errorf("%w: protected header: %w", ErrSignature, err)
	}
	if want := protectedHeader(p.alg); !bytes.Equal(prot, want) {
		return nil, fmt.Errorf("%w: protected header is not {1: %d}, the algorithm for the certificate's key", ErrSignatureVerify, int64(p.alg))
	}
	if !bytes.Equal(arr[1], []byte{0xa0}) {
		return nil, fmt.Errorf("%w: unprotected header is not the empty map", ErrSignature)
	}
	if len(sig) != 2*p.size {
		return nil, fmt.Errorf("%w: signature of %d bytes, want %d", ErrSignatureVerify, len(sig), 2*p.size)
	}

	var m cose.UntaggedSign1Message
	if err := m.UnmarshalCBOR(data); err != nil {
		return nil, fmt.Errorf("%w: COSE_Sign1: %w", ErrSignature, err)
	}
	if !bytes.Equal(m.Payload, payload) || !bytes.Equal(m.Signature, sig) {
		return nil, fmt.Errorf("%w: go-cose decodes the COSE_Sign1 differently", ErrSignature)
	}
	v, err := cose.NewVerifier(p.alg, pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKey, err)
	}
	if err := m.Verify(nil, v); err != nil {
		return nil, fmt.Errorf("%w: COSE signature does not verify under the certificate's key: %w", ErrSignatureVerify, err)
	}
	return payload, nil
}

// signatureSection builds the signature section data for pcr0.
func signatureSection(certPEM []byte, cert *x509.Certificate, key crypto.Signer, pcr0 PCR) ([]byte, error) {
	if err := matchKey(cert, key); err != nil {
		return nil, err
	}
	msg, err := SignCOSE(PCRInfoPayload(0, pcr0[:]), key)
	if err != nil {
		return nil, err
	}
	b := EncodeSignatureSection(SignatureSection{CertificatePEM: certPEM, COSESign1: msg})
	if len(b) > MaxSignatureSize {
		return nil, fmt.Errorf("%w: signature section would be %d bytes (max %d); use a smaller certificate file", ErrTooLarge, len(b), MaxSignatureSize)
	}
	return b, nil
}

func matchKey(cert *x509.Certificate, key crypto.Signer) error {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	pk, ok := key.Public().(equaler)
	if !ok || !pk.Equal(cert.PublicKey) {
		return fmt.Errorf("%w: the private key does not match the signing certificate", ErrKey)
	}
	return nil
}

// Sign replaces img's signature section (or appends one) with nitro's
// signature over img's PCR0, made with key and carrying certPEM (the
// certificate file bytes, PEM as nitro-cli requires). It checks that the
// key is ECDSA P-256/384/521 and matches the certificate, then updates
// img.Header (offsets, sizes, CRC) as [ComputeHeader] does. On error img
// is unchanged.
func Sign(img *Image, certPEM []byte, key crypto.Signer) error {
	cert, err := ParseCertificate(certPEM)
	if err != nil {
		return err
	}
	secs := make([]Section, 0, len(img.Sections)+1)
	for _, s := range img.Sections {
		if s.Type != SectionSignature {
			secs = append(secs, s)
		}
	}
	unsigned := &Image{Header: img.Header, Sections: secs}
	m, err := Measure(unsigned)
	if err != nil {
		return err
	}
	data, err := signatureSection(certPEM, cert, key, m.PCR0)
	if err != nil {
		return err
	}
	hdr := img.Header
	if hdr.Version != 0 && hdr.Version < 3 {
		hdr.Version = CurrentVersion
	}
	next := &Image{Header: hdr, Sections: append(secs, Section{Type: SectionSignature, Data: data})}
	h, err := ComputeHeader(next)
	if err != nil {
		return err
	}
	img.Header, img.Sections = h, next.Sections
	return nil
}

// VerifySignature checks img's signature section and returns the signing
// certificate. It checks that the section decodes (strict CBOR limits), that
// the certificate parses, that the COSE_Sign1 verifies under the
// certificate's key with nitro's algorithm for its curve, and that the
// payload is exactly serde_cbor(PcrInfo{0, PCR0}) for img's PCR0. When at
// is not zero it also checks that the certificate is valid at that instant
// (run-enclave's E59 check); describe-eif's SignatureCheck passes the zero
// time. It returns ErrNotSigned for an unsigned image.
func VerifySignature(img *Image, at time.Time) (*x509.Certificate, error) {
	sec := img.Section(SectionSignature)
	if sec == nil {
		return nil, ErrNotSigned
	}
	ss, err := DecodeSignatureSection(sec.Data)
	if err != nil {
		return nil, err
	}
	cert, err := ParseCertificate(ss.CertificatePEM)
	if err != nil {
		return nil, err
	}
	payload, err := VerifyCOSE(ss.COSESign1, cert.PublicKey)
	if err != nil {
		return nil, err
	}
	m, err := Measure(img)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(payload, PCRInfoPayload(0, m.PCR0[:])) {
		return nil, fmt.Errorf("%w: signed payload is not PcrInfo{0, PCR0} of this image", ErrSignatureVerify)
	}
	if !at.IsZero() && (at.Before(cert.NotBefore) || at.After(cert.NotAfter)) {
		return nil, fmt.Errorf("%w: %s is outside [%s, %s]", ErrCertificateNotValidTime,
			at.UTC().Format(time.RFC3339), cert.NotBefore.UTC().Format(time.RFC3339), cert.NotAfter.UTC().Format(time.RFC3339))
	}
	return cert, nil
}
