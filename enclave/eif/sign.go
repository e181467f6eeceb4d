package eif

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	"math/big"
	"time"
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
	b := cborHead(nil, 4, 1)
	b = cborHead(b, 5, 2)
	b = cborText(b, "signing_certificate")
	b = cborUintArray(b, s.CertificatePEM)
	b = cborText(b, "signature")
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
	b := cborHead(nil, 5, 2)
	b = cborText(b, "register_index")
	b = cborInt(b, int64(index))
	b = cborText(b, "register_value")
	return cborUintArray(b, value)
}

type curveParams struct {
	alg  int64
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

func protectedHeader(alg int64) []byte {
	return cborInt(cborHead(cborHead(nil, 5, 1), 0, 1), alg)
}

func sigStructure(protected, payload []byte) []byte {
	b := cborHead(nil, 4, 4)
	b = cborText(b, "Signature1")
	b = cborBytes(b, protected)
	b = cborBytes(b, nil)
	return cborBytes(b, payload)
}

// SignCOSE returns an untagged COSE_Sign1 of payload made the way nitro's
// cose crate makes it: protected {1: alg} with alg by curve (ES256, ES384,
// ES512), unprotected {}, signature r‖s each left-padded to the curve size,
// over Sig_structure ["Signature1", protected, h”, payload] hashed with
// SHA-256/384/512. key must be an ECDSA signer on P-256, P-384 or P-521.
func SignCOSE(payload []byte, key crypto.Signer) ([]byte, error) {
	p, err := paramsFor(key.Public())
	if err != nil {
		return nil, err
	}
	prot := protectedHeader(p.alg)
	h := p.hash.New()
	h.Write(sigStructure(prot, payload))
	der, err := key.Sign(rand.Reader, h.Sum(nil), p.hash)
	if err != nil {
		return nil, fmt.Errorf("eif: sign: %w", err)
	}
	var rs struct{ R, S *big.Int }
	if rest, err := asn1.Unmarshal(der, &rs); err != nil || len(rest) != 0 || rs.R == nil || rs.S == nil {
		return nil, fmt.Errorf("%w: signer did not return an ASN.1 ECDSA signature", ErrKey)
	}
	if rs.R.Sign() <= 0 || rs.S.Sign() <= 0 || rs.R.BitLen() > 8*p.size || rs.S.BitLen() > 8*p.size {
		return nil, fmt.Errorf("%w: signature values out of range", ErrKey)
	}
	sig := make([]byte, 2*p.size)
	rs.R.FillBytes(sig[:p.size])
	rs.S.FillBytes(sig[p.size:])
	b := cborHead(nil, 4, 4)
	b = cborBytes(b, prot)
	b = cborHead(b, 5, 0)
	b = cborBytes(b, payload)
	return cborBytes(b, sig), nil
}

type coseSign1CBOR struct {
	_           struct{} `cbor:",toarray"`
	Protected   []byte
	Unprotected map[int64]any
	Payload     []byte
	Signature   []byte
}

// VerifyCOSE checks an untrusted COSE_Sign1 (tagged with 18 or untagged)
// under pub and returns its payload. It checks the structure with strict
// CBOR limits, that the protected header's alg (label 1) is the one
// nitro's curve mapping gives for pub, the signature length, and the
// ECDSA signature over the Sig_structure.
func VerifyCOSE(msg []byte, pub any) ([]byte, error) {
	p, err := paramsFor(pub)
	if err != nil {
		return nil, err
	}
	if len(msg) > 0 && msg[0] == 0xd2 { // tag 18
		msg = msg[1:]
	}
	var m coseSign1CBOR
	if err := decodeStrict(msg, &m); err != nil {
		return nil, fmt.Errorf("%w: COSE_Sign1: %w", ErrSignature, err)
	}
	var prot map[int64]any
	if err := decodeStrict(m.Protected, &prot); err != nil {
		return nil, fmt.Errorf("%w: protected header: %w", ErrSignature, err)
	}
	alg, ok := prot[1].(int64)
	if !ok {
		if u, isU := prot[1].(uint64); isU && u < 1<<62 {
			alg, ok = int64(u), true
		}
	}
	if !ok || alg != p.alg {
		return nil, fmt.Errorf("%w: protected alg %v, want %d for the certificate's key", ErrSignatureVerify, prot[1], p.alg)
	}
	if len(m.Signature) != 2*p.size {
		return nil, fmt.Errorf("%w: signature of %d bytes, want %d", ErrSignatureVerify, len(m.Signature), 2*p.size)
	}
	h := p.hash.New()
	h.Write(sigStructure(m.Protected, m.Payload))
	r := new(big.Int).SetBytes(m.Signature[:p.size])
	s := new(big.Int).SetBytes(m.Signature[p.size:])
	if !ecdsa.Verify(pub.(*ecdsa.PublicKey), h.Sum(nil), r, s) {
		return nil, fmt.Errorf("%w: COSE signature does not verify under the certificate's key", ErrSignatureVerify)
	}
	return m.Payload, nil
}

// signatureSection builds the signature section data for pcr0.
func signatureSection(certPEM []byte, cert *x509.Certificate, key crypto.Signer, pcr0 PCR) ([]byte, error) {
	if err := matchKey(cert, key); err != nil {
		return nil, err
	}
	cose, err := SignCOSE(PCRInfoPayload(0, pcr0[:]), key)
	if err != nil {
		return nil, err
	}
	b := EncodeSignatureSection(SignatureSection{CertificatePEM: certPEM, COSESign1: cose})
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
