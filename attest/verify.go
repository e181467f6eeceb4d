package attest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/veraison/go-cose"
)

// DefaultCacheSize is the number of verified intermediate chains, and
// separately of verified leaf certificates, a [Verifier] keeps by default.
const DefaultCacheSize = 1024

// VerifierConfig configures a [Verifier]. The zero value trusts only the
// embedded AWS root and caches [DefaultCacheSize] chains.
type VerifierConfig struct {
	Roots     []*x509.Certificate // trusted roots in addition to the AWS root
	NoAWSRoot bool                // do not trust the embedded AWS root
	// CacheSize bounds each of the two caches (verified intermediate chains,
	// verified leaf certificates): 0 means DefaultCacheSize, a negative
	// value disables caching.
	CacheSize int
}

// Verifier verifies attestation documents against a fixed set of pinned
// roots. It caches the results of certificate-signature checks, never of
// validity-period checks. It is safe for concurrent use.
type Verifier struct {
	roots  map[[32]byte]*x509.Certificate // SHA-256(DER) -> root
	chains *lru[[32]byte, []*x509.Certificate]
	leaves *lru[[32]byte, leafEntry]
}

// NewVerifier returns a Verifier trusting the AWS root (unless NoAWSRoot)
// and cfg.Roots. It fails when no root would be trusted or a root is nil.
func NewVerifier(cfg VerifierConfig) (*Verifier, error) {
	size := cfg.CacheSize
	if size == 0 {
		size = DefaultCacheSize
	}
	v := &Verifier{
		roots:  make(map[[32]byte]*x509.Certificate),
		chains: newLRU[[32]byte, []*x509.Certificate](size),
		leaves: newLRU[[32]byte, leafEntry](size),
	}
	if !cfg.NoAWSRoot {
		v.roots[sha256.Sum256(awsRoot.Raw)] = awsRoot
	}
	for i, r := range cfg.Roots {
		if r == nil || len(r.Raw) == 0 {
			return nil, fmt.Errorf("attest: root %d is nil or has no DER", i)
		}
		v.roots[sha256.Sum256(r.Raw)] = r
	}
	if len(v.roots) == 0 {
		return nil, errors.New("attest: no trusted root: set Roots or clear NoAWSRoot")
	}
	return v, nil
}

// Verify is a one-shot [NewVerifier] + [Verifier.Verify].
func Verify(doc []byte, at time.Time, cfg VerifierConfig) (*Verified, error) {
	v, err := NewVerifier(cfg)
	if err != nil {
		return nil, err
	}
	return v.Verify(doc, at)
}

// Verify checks that doc is an attestation document signed through a chain
// that ends in a trusted root, with every certificate valid at time at. It
// returns a [Verified] only when every check passes:
//
//  1. [ParseUnverified]: size, strict CBOR, COSE_Sign1 shape, ES384 protected
//     header, empty unprotected header, 96-byte signature, payload syntax.
//  2. The root is pinned: cabundle[0] must be byte-equal to a trusted root
//     ([ErrUntrustedRoot]).
//  3. The chain is [certificate, cabundle[n-1], …, cabundle[1], cabundle[0]].
//     No cabundle entry may repeat another, and every certificate must parse
//     and have no unhandled critical extension ([ErrChain]), carry an ECDSA
//     P-384 key and be signed with ecdsa-with-SHA384
//     ([ErrUnsupportedAlgorithm]), and be valid at at, the root included
//     ([ErrExpired], [ErrNotYetValid]).
//  4. Every certificate above the leaf has basicConstraints CA:TRUE, a
//     keyUsage with keyCertSign, and a pathLen (when present) not smaller
//     than the number of CA certificates below it; the leaf is not a CA, has
//     no pathLen and has keyUsage digitalSignature; each certificate's
//     issuer name equals the next one's subject and its signature verifies
//     with the next one's key ([ErrChain]). The root's self-signature is not
//     checked: the root is trusted by its exact bytes. No CRL is consulted.
//  5. go-cose verifies the COSE signature r‖s of the message ParseUnverified
//     checked, with the leaf key, over SHA-384 of the Sig_structure
//     ["Signature1", protected, empty bstr, payload] ([ErrSignature]).
//
// Failures of steps 2–4 are *CertificateError values naming the
// certificate. Results of signature checks in steps 3–4 are cached (keyed by
// the SHA-256 of the exact DER bytes); validity periods are checked on every
// call.
func (v *Verifier) Verify(doc []byte, at time.Time) (*Verified, error) {
	u, err := ParseUnverified(doc)
	if err != nil {
		return nil, err
	}
	chain, leafKey, err := v.verifyChain(u.Document.Certificate, u.Document.CABundle, at)
	if err != nil {
		return nil, err
	}
	if err := u.msg.Verify(nil, leafKey); err != nil {
		return nil, fmt.Errorf("%w: COSE_Sign1 signature does not verify with the leaf key: %v", ErrSignature, err)
	}
	return &Verified{doc: u.Document, chain: chain, raw: u.raw}, nil
}

// leafEntry is a verified leaf certificate and the go-cose ES384 verifier
// of its key (made once: go-cose checks the key on every NewVerifier).
type leafEntry struct {
	cert *x509.Certificate
	cose cose.Verifier
}

// chainKey hashes the cabundle: each entry as a 4-byte length and its DER.
func chainKey(bundle [][]byte) [32]byte {
	h := sha256.New()
	var n [4]byte
	for _, c := range bundle {
		binary.BigEndian.PutUint32(n[:], uint32(len(c)))
		h.Write(n[:])
		h.Write(c)
	}
	var k [32]byte
	h.Sum(k[:0])
	return k
}

// verifyChain returns [leaf, interm_n, …, interm_1, root] and the go-cose
// verifier of the leaf's key.
func (v *Verifier) verifyChain(leafDER []byte, bundle [][]byte, at time.Time) ([]*x509.Certificate, cose.Verifier, error) {
	ck := chainKey(bundle)
	upper, ok := v.chains.get(ck)
	if ok {
		for i, c := range upper {
			if err := checkValidity(c, i+1, at); err != nil {
				return nil, nil, err
			}
		}
	} else {
		var err error
		if upper, err = v.verifyUpper(bundle, at); err != nil {
			return nil, nil, err
		}
		v.chains.put(ck, upper)
	}

	h := sha256.New()
	h.Write(ck[:])
	h.Write(leafDER)
	var lk [32]byte
	h.Sum(lk[:0])
	leaf, ok := v.leaves.get(lk)
	if ok {
		if err := checkValidity(leaf.cert, 0, at); err != nil {
			return nil, nil, err
		}
	} else {
		var err error
		if leaf, err = verifyLeaf(leafDER, upper[0], at); err != nil {
			return nil, nil, err
		}
		v.leaves.put(lk, leaf)
	}
	chain := make([]*x509.Certificate, 0, len(upper)+1)
	chain = append(chain, leaf.cert)
	return append(chain, upper...), leaf.cose, nil
}

// verifyUpper checks the cabundle part of the chain and returns it in chain
// order [interm_n, …, interm_1, root]; cabundle[j] has chain index n-j, so
// the root has index n = len(bundle).
func (v *Verifier) verifyUpper(bundle [][]byte, at time.Time) ([]*x509.Certificate, error) {
	n := len(bundle)
	root, ok := v.roots[sha256.Sum256(bundle[0])]
	if !ok || !bytes.Equal(root.Raw, bundle[0]) {
		subj := ""
		if c, err := x509.ParseCertificate(bundle[0]); err == nil {
			subj = c.Subject.String()
		}
		return nil, &CertificateError{Index: n, Subject: subj,
			Err: fmt.Errorf("%w: cabundle[0] is not a pinned root", ErrUntrustedRoot)}
	}
	seen := make(map[[32]byte]bool, n)
	for j, der := range bundle {
		h := sha256.Sum256(der)
		if seen[h] {
			return nil, &CertificateError{Index: n - j, Err: fmt.Errorf("%w: cabundle[%d] repeats an earlier entry", ErrChain, j)}
		}
		seen[h] = true
	}
	upper := make([]*x509.Certificate, n) // chain order
	upper[n-1] = root
	for j := 1; j < n; j++ {
		idx := n - j // chain index
		c, err := x509.ParseCertificate(bundle[j])
		if err != nil {
			return nil, &CertificateError{Index: idx, Err: fmt.Errorf("%w: cabundle[%d]: %w", ErrChain, j, err)}
		}
		upper[idx-1] = c
	}
	// Cheap checks first (algorithms, validity, constraints), signatures last.
	for i, c := range upper {
		if err := checkAlgorithms(c, i+1); err != nil {
			return nil, err
		}
	}
	for i, c := range upper {
		if err := checkValidity(c, i+1, at); err != nil {
			return nil, err
		}
	}
	for i, c := range upper {
		if err := checkCA(c, i+1); err != nil {
			return nil, err
		}
	}
	for i := 0; i < len(upper)-1; i++ {
		if err := checkSignedBy(upper[i], upper[i+1], i+1); err != nil {
			return nil, err
		}
	}
	return upper, nil
}

func verifyLeaf(der []byte, issuer *x509.Certificate, at time.Time) (leafEntry, error) {
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return leafEntry{}, &CertificateError{Index: 0, Err: fmt.Errorf("%w: certificate: %w", ErrChain, err)}
	}
	if err := checkAlgorithms(c, 0); err != nil {
		return leafEntry{}, err
	}
	if err := checkValidity(c, 0, at); err != nil {
		return leafEntry{}, err
	}
	fail := func(msg string) error {
		return &CertificateError{Index: 0, Subject: c.Subject.String(), Err: fmt.Errorf("%w: leaf %s", ErrChain, msg)}
	}
	if c.IsCA {
		return leafEntry{}, fail("is a CA certificate")
	}
	if c.MaxPathLen > 0 || c.MaxPathLenZero {
		return leafEntry{}, fail("has a pathLen constraint")
	}
	if c.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		return leafEntry{}, fail("lacks keyUsage digitalSignature")
	}
	if err := checkSignedBy(c, issuer, 0); err != nil {
		return leafEntry{}, err
	}
	cv, err := cose.NewVerifier(cose.AlgorithmES384, c.PublicKey)
	if err != nil {
		return leafEntry{}, &CertificateError{Index: 0, Subject: c.Subject.String(),
			Err: fmt.Errorf("%w: leaf key: %v", ErrUnsupportedAlgorithm, err)}
	}
	return leafEntry{cert: c, cose: cv}, nil
}

func checkAlgorithms(c *x509.Certificate, idx int) error {
	pub, ok := c.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P384() {
		return &CertificateError{Index: idx, Subject: c.Subject.String(),
			Err: fmt.Errorf("%w: key is %s, want ECDSA P-384", ErrUnsupportedAlgorithm, keyName(c))}
	}
	if c.SignatureAlgorithm != x509.ECDSAWithSHA384 {
		return &CertificateError{Index: idx, Subject: c.Subject.String(),
			Err: fmt.Errorf("%w: signed with %s, want ECDSA-SHA384", ErrUnsupportedAlgorithm, c.SignatureAlgorithm)}
	}
	if len(c.UnhandledCriticalExtensions) != 0 {
		return &CertificateError{Index: idx, Subject: c.Subject.String(),
			Err: fmt.Errorf("%w: unhandled critical extension %v", ErrChain, c.UnhandledCriticalExtensions[0])}
	}
	return nil
}

func keyName(c *x509.Certificate) string {
	if pub, ok := c.PublicKey.(*ecdsa.PublicKey); ok {
		return "ECDSA " + pub.Curve.Params().Name
	}
	return c.PublicKeyAlgorithm.String()
}

func checkValidity(c *x509.Certificate, idx int, at time.Time) error {
	switch {
	case at.Before(c.NotBefore):
		return &CertificateError{Index: idx, Subject: c.Subject.String(),
			Err: fmt.Errorf("%w: valid from %s, checked at %s", ErrNotYetValid,
				c.NotBefore.UTC().Format(time.RFC3339), at.UTC().Format(time.RFC3339Nano))}
	case at.After(c.NotAfter):
		return &CertificateError{Index: idx, Subject: c.Subject.String(),
			Err: fmt.Errorf("%w: valid until %s, checked at %s", ErrExpired,
				c.NotAfter.UTC().Format(time.RFC3339), at.UTC().Format(time.RFC3339Nano))}
	}
	return nil
}

// checkCA checks a certificate at chain index idx ≥ 1: it has idx-1 CA
// certificates below it, all of which its pathLen must allow.
func checkCA(c *x509.Certificate, idx int) error {
	fail := func(msg string) error {
		return &CertificateError{Index: idx, Subject: c.Subject.String(), Err: fmt.Errorf("%w: %s", ErrChain, msg)}
	}
	if !c.BasicConstraintsValid || !c.IsCA {
		return fail("issuing certificate is not a CA (basicConstraints)")
	}
	if c.KeyUsage&x509.KeyUsageCertSign == 0 {
		return fail("CA certificate lacks keyUsage keyCertSign")
	}
	if (c.MaxPathLen > 0 || c.MaxPathLenZero) && idx-1 > c.MaxPathLen {
		return fail(fmt.Sprintf("pathLen %d exceeded: %d CA certificates below", c.MaxPathLen, idx-1))
	}
	return nil
}

func checkSignedBy(c, parent *x509.Certificate, idx int) error {
	if !bytes.Equal(c.RawIssuer, parent.RawSubject) {
		return &CertificateError{Index: idx, Subject: c.Subject.String(),
			Err: fmt.Errorf("%w: issuer %q is not the next certificate's subject %q", ErrChain, c.Issuer, parent.Subject)}
	}
	if err := c.CheckSignatureFrom(parent); err != nil {
		return &CertificateError{Index: idx, Subject: c.Subject.String(),
			Err: fmt.Errorf("%w: signature by %q: %w", ErrChain, parent.Subject, err)}
	}
	return nil
}
