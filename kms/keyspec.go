package kms

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/big"
	"slices"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	k1ecdsa "github.com/decred/dcrd/dcrec/secp256k1/v4/ecdsa"
)

// Key specs, key usages and algorithms, with AWS's names.
const (
	specSymmetric = symmetricDefault
	specRSA2048   = "RSA_2048"
	specRSA3072   = "RSA_3072"
	specRSA4096   = "RSA_4096"
	specP256      = "ECC_NIST_P256"
	specP384      = "ECC_NIST_P384"
	specP521      = "ECC_NIST_P521"
	specP256K1    = "ECC_SECG_P256K1"
	specHMAC224   = "HMAC_224"
	specHMAC256   = "HMAC_256"
	specHMAC384   = "HMAC_384"
	specHMAC512   = "HMAC_512"

	usageEncrypt   = encryptDecrypt
	usageSign      = "SIGN_VERIFY"
	usageMAC       = "GENERATE_VERIFY_MAC"
	usageAgreement = "KEY_AGREEMENT"

	algOAEPSHA1   = "RSAES_OAEP_SHA_1"
	algOAEPSHA256 = "RSAES_OAEP_SHA_256"
	algECDH       = "ECDH"
)

// specInfo is what AWS allows for one KeySpec.
type specInfo struct {
	// usages are the KeyUsage values the spec may have.
	usages []string
	// signing, encryption, mac and agreement list the algorithms per usage.
	signing, encryption, mac, agreement []string
	// asymmetric: the key is a key pair (GetPublicKey works).
	asymmetric bool
	// dataKeyPair: the spec is also a GenerateDataKeyPair KeyPairSpec.
	dataKeyPair bool
}

var (
	rsaSigning = []string{"RSASSA_PSS_SHA_256", "RSASSA_PSS_SHA_384", "RSASSA_PSS_SHA_512",
		"RSASSA_PKCS1_V1_5_SHA_256", "RSASSA_PKCS1_V1_5_SHA_384", "RSASSA_PKCS1_V1_5_SHA_512"}
	rsaEncryption = []string{algOAEPSHA1, algOAEPSHA256}
	ecdhOnly      = []string{algECDH}
)

// keySpecs is the table of supported KeySpec values (AWS's, minus SM2,
// ML-DSA and Ed25519, which are refused as UnsupportedOperationException).
var keySpecs = map[string]specInfo{
	specSymmetric: {usages: []string{usageEncrypt}, encryption: []string{symmetricDefault}},
	specRSA2048:   {usages: []string{usageEncrypt, usageSign}, signing: rsaSigning, encryption: rsaEncryption, asymmetric: true, dataKeyPair: true},
	specRSA3072:   {usages: []string{usageEncrypt, usageSign}, signing: rsaSigning, encryption: rsaEncryption, asymmetric: true, dataKeyPair: true},
	specRSA4096:   {usages: []string{usageEncrypt, usageSign}, signing: rsaSigning, encryption: rsaEncryption, asymmetric: true, dataKeyPair: true},
	specP256:      {usages: []string{usageSign, usageAgreement}, signing: []string{"ECDSA_SHA_256"}, agreement: ecdhOnly, asymmetric: true, dataKeyPair: true},
	specP384:      {usages: []string{usageSign, usageAgreement}, signing: []string{"ECDSA_SHA_384"}, agreement: ecdhOnly, asymmetric: true, dataKeyPair: true},
	specP521:      {usages: []string{usageSign, usageAgreement}, signing: []string{"ECDSA_SHA_512"}, agreement: ecdhOnly, asymmetric: true, dataKeyPair: true},
	specP256K1:    {usages: []string{usageSign}, signing: []string{"ECDSA_SHA_256"}, asymmetric: true, dataKeyPair: true},
	specHMAC224:   {usages: []string{usageMAC}, mac: []string{"HMAC_SHA_224"}},
	specHMAC256:   {usages: []string{usageMAC}, mac: []string{"HMAC_SHA_256"}},
	specHMAC384:   {usages: []string{usageMAC}, mac: []string{"HMAC_SHA_384"}},
	specHMAC512:   {usages: []string{usageMAC}, mac: []string{"HMAC_SHA_512"}},
}

// awsOnlySpecs are KeySpec values AWS defines that Cloister does not
// implement.
var awsOnlySpecs = []string{"SM2", "ML_DSA_44", "ML_DSA_65", "ML_DSA_87", "ECC_NIST_EDWARDS25519"}

// allSigningAlgorithms and friends are every value of AWS's enums, so an
// unknown value is a ValidationException and a known but unsuitable one is
// InvalidKeyUsageException.
var (
	allSigningAlgorithms = append(slices.Clone(rsaSigning), "ECDSA_SHA_256", "ECDSA_SHA_384", "ECDSA_SHA_512",
		"SM2DSA", "ML_DSA_SHAKE_256", "ED25519_SHA_512", "ED25519_PH_SHA_512")
	allEncryptionAlgorithms = []string{symmetricDefault, algOAEPSHA1, algOAEPSHA256, "SM2PKE"}
	allMacAlgorithms        = []string{"HMAC_SHA_224", "HMAC_SHA_256", "HMAC_SHA_384", "HMAC_SHA_512"}
)

// algorithms returns the per-usage algorithm lists DescribeKey and
// GetPublicKey report for a key (only the list of its usage).
func algorithms(spec, usage string) (signing, encryption, mac, agreement []string) {
	si := keySpecs[spec]
	switch usage {
	case usageSign:
		return si.signing, nil, nil, nil
	case usageEncrypt:
		return nil, si.encryption, nil, nil
	case usageMAC:
		return nil, nil, si.mac, nil
	case usageAgreement:
		return nil, nil, nil, si.agreement
	}
	return nil, nil, nil, nil
}

// hmacKeySize is the key length AWS uses for an HMAC key spec.
func hmacKeySize(spec string) int {
	switch spec {
	case specHMAC224:
		return 28
	case specHMAC256:
		return 32
	case specHMAC384:
		return 48
	}
	return 64
}

// hashFor returns the hash of a signing or MAC algorithm name.
func hashFor(alg string) crypto.Hash {
	switch {
	case alg == "HMAC_SHA_224":
		return crypto.SHA224
	case len(alg) >= 3 && alg[len(alg)-3:] == "256":
		return crypto.SHA256
	case len(alg) >= 3 && alg[len(alg)-3:] == "384":
		return crypto.SHA384
	case len(alg) >= 3 && alg[len(alg)-3:] == "512":
		return crypto.SHA512
	}
	return 0
}

func newHash(h crypto.Hash) func() hash.Hash {
	switch h {
	case crypto.SHA224:
		return sha256.New224
	case crypto.SHA256:
		return sha256.New
	case crypto.SHA384:
		return sha512.New384
	}
	return sha512.New
}

// newMaterial makes fresh key material for spec: 32 random bytes for
// SYMMETRIC_DEFAULT, the spec's key length for HMAC, a PKCS#8 DER private
// key for key pairs.
func newMaterial(rand io.Reader, spec string) ([]byte, error) {
	switch spec {
	case specSymmetric:
		b := make([]byte, 32)
		_, err := io.ReadFull(rand, b)
		return b, err
	case specHMAC224, specHMAC256, specHMAC384, specHMAC512:
		b := make([]byte, hmacKeySize(spec))
		_, err := io.ReadFull(rand, b)
		return b, err
	}
	priv, err := generateKeyPair(rand, spec)
	if err != nil {
		return nil, err
	}
	return marshalPrivate(priv)
}

// generateKeyPair makes a key pair: *rsa.PrivateKey, *ecdsa.PrivateKey or
// *secp256k1.PrivateKey.
func generateKeyPair(rand io.Reader, spec string) (crypto.PrivateKey, error) {
	switch spec {
	case specRSA2048:
		return rsa.GenerateKey(rand, 2048)
	case specRSA3072:
		return rsa.GenerateKey(rand, 3072)
	case specRSA4096:
		return rsa.GenerateKey(rand, 4096)
	case specP256:
		return ecdsa.GenerateKey(elliptic.P256(), rand)
	case specP384:
		return ecdsa.GenerateKey(elliptic.P384(), rand)
	case specP521:
		return ecdsa.GenerateKey(elliptic.P521(), rand)
	case specP256K1:
		return secp256k1.GeneratePrivateKeyFromRand(rand)
	}
	return nil, fmt.Errorf("kms: no key pair for key spec %s", spec)
}

// ASN.1 object identifiers for secp256k1 keys (RFC 5480, SEC 2).
var (
	oidECPublicKey = asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}
	oidSecp256k1   = asn1.ObjectIdentifier{1, 3, 132, 0, 10}
)

type pkcs8 struct {
	Version    int
	Algo       pkix.AlgorithmIdentifier
	PrivateKey []byte
}

// ecPrivateKey is RFC 5915's ECPrivateKey.
type ecPrivateKey struct {
	Version       int
	PrivateKey    []byte
	NamedCurveOID asn1.ObjectIdentifier `asn1:"optional,explicit,tag:0"`
	PublicKey     asn1.BitString        `asn1:"optional,explicit,tag:1"`
}

type spki struct {
	Algorithm pkix.AlgorithmIdentifier
	PublicKey asn1.BitString
}

func secp256k1Algorithm() pkix.AlgorithmIdentifier {
	param, _ := asn1.Marshal(oidSecp256k1)
	return pkix.AlgorithmIdentifier{Algorithm: oidECPublicKey, Parameters: asn1.RawValue{FullBytes: param}}
}

// marshalPrivate encodes a private key as PKCS#8 DER (what AWS returns as
// PrivateKeyPlaintext); secp256k1 keys, which crypto/x509 does not know,
// are encoded by hand in the same shape OpenSSL uses.
func marshalPrivate(priv crypto.PrivateKey) ([]byte, error) {
	k, ok := priv.(*secp256k1.PrivateKey)
	if !ok {
		return x509.MarshalPKCS8PrivateKey(priv)
	}
	pub := k.PubKey().SerializeUncompressed()
	inner, err := asn1.Marshal(ecPrivateKey{Version: 1, PrivateKey: k.Serialize(), PublicKey: asn1.BitString{Bytes: pub, BitLength: 8 * len(pub)}})
	if err != nil {
		return nil, err
	}
	return asn1.Marshal(pkcs8{Algo: secp256k1Algorithm(), PrivateKey: inner})
}

// parsePrivate decodes key material of a key-pair spec, checking that it is
// the spec's kind of key.
func parsePrivate(spec string, der []byte) (crypto.Signer, error) {
	if spec == specP256K1 {
		var p pkcs8
		if rest, err := asn1.Unmarshal(der, &p); err != nil || len(rest) != 0 || !p.Algo.Algorithm.Equal(oidECPublicKey) {
			return nil, errors.New("kms: stored secp256k1 key is not PKCS#8")
		}
		var e ecPrivateKey
		if rest, err := asn1.Unmarshal(p.PrivateKey, &e); err != nil || len(rest) != 0 || len(e.PrivateKey) != 32 {
			return nil, errors.New("kms: stored secp256k1 key is not an ECPrivateKey")
		}
		return k1Signer{secp256k1.PrivKeyFromBytes(e.PrivateKey)}, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("kms: stored key pair: %w", err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("kms: stored key pair is a %T", k)
	}
	return s, nil
}

// k1Signer gives a secp256k1 key the crypto.Signer shape (Public only;
// signing goes through signDigest).
type k1Signer struct{ k *secp256k1.PrivateKey }

func (s k1Signer) Public() crypto.PublicKey { return s.k.PubKey() }
func (s k1Signer) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	return nil, errors.New("kms: use signDigest for secp256k1")
}

// marshalPublic encodes a public key as DER SubjectPublicKeyInfo.
func marshalPublic(pub crypto.PublicKey) ([]byte, error) {
	k, ok := pub.(*secp256k1.PublicKey)
	if !ok {
		return x509.MarshalPKIXPublicKey(pub)
	}
	b := k.SerializeUncompressed()
	return asn1.Marshal(spki{Algorithm: secp256k1Algorithm(), PublicKey: asn1.BitString{Bytes: b, BitLength: 8 * len(b)}})
}

// parsePublic decodes a DER SubjectPublicKeyInfo, secp256k1 included.
func parsePublic(der []byte) (crypto.PublicKey, error) {
	var s spki
	if rest, err := asn1.Unmarshal(der, &s); err == nil && len(rest) == 0 && s.Algorithm.Algorithm.Equal(oidECPublicKey) {
		var curve asn1.ObjectIdentifier
		if _, err := asn1.Unmarshal(s.Algorithm.Parameters.FullBytes, &curve); err == nil && curve.Equal(oidSecp256k1) {
			return secp256k1.ParsePubKey(s.PublicKey.RightAlign())
		}
	}
	return x509.ParsePKIXPublicKey(der)
}

// signDigest signs a digest with AWS's algorithm semantics: PKCS#1 v1.5,
// PSS with a salt as long as the hash, or ECDSA with a DER signature.
func signDigest(rand io.Reader, priv crypto.Signer, alg string, digest []byte) ([]byte, error) {
	h := hashFor(alg)
	switch k := priv.(type) {
	case *rsa.PrivateKey:
		if len(alg) > 9 && alg[:9] == "RSASSA_PS" {
			return rsa.SignPSS(rand, k, h, digest, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
		}
		return rsa.SignPKCS1v15(rand, k, h, digest)
	case *ecdsa.PrivateKey:
		return ecdsa.SignASN1(rand, k, digest)
	case k1Signer:
		return secp256k1ECDSASign(k.k, digest), nil
	}
	return nil, fmt.Errorf("kms: cannot sign with a %T", priv)
}

// verifyDigest checks a signature made by signDigest (or by anyone with
// the same algorithm). ECDSA signatures must be DER; high-S secp256k1
// signatures are accepted, as OpenSSL makes them.
func verifyDigest(pub crypto.PublicKey, alg string, digest, sig []byte) bool {
	h := hashFor(alg)
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if len(alg) > 9 && alg[:9] == "RSASSA_PS" {
			return rsa.VerifyPSS(k, h, digest, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}) == nil
		}
		return rsa.VerifyPKCS1v15(k, h, digest, sig) == nil
	case *ecdsa.PublicKey:
		return ecdsa.VerifyASN1(k, digest, sig)
	case *secp256k1.PublicKey:
		return secp256k1ECDSAVerify(k, digest, sig)
	}
	return false
}

// ecdhShared computes the ECDH shared secret (the x coordinate) between a
// NIST private key and a peer public key on the same curve.
func ecdhShared(priv crypto.Signer, peer crypto.PublicKey) ([]byte, error) {
	k, ok := priv.(*ecdsa.PrivateKey)
	if !ok {
		return nil, errors.New("key agreement needs an elliptic-curve key pair")
	}
	p, ok := peer.(*ecdsa.PublicKey)
	if !ok || p.Curve != k.Curve {
		return nil, fmt.Errorf("the public key is not on the key's curve %s", k.Curve.Params().Name)
	}
	ek, err := k.ECDH()
	if err != nil {
		return nil, err
	}
	ep, err := p.ECDH()
	if err != nil {
		return nil, err
	}
	return ek.ECDH(ep)
}

// secp256k1Order is the group order n of secp256k1.
var secp256k1Order, _ = new(big.Int).SetString("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141", 16)

// secp256k1ECDSASign signs a 32-byte digest (RFC 6979 nonce, low S) and
// returns the DER signature.
func secp256k1ECDSASign(k *secp256k1.PrivateKey, digest []byte) []byte {
	return k1ecdsa.Sign(k, digest).Serialize()
}

// secp256k1ECDSAVerify checks a DER ECDSA signature over digest: r and s
// in 1..n-1, either S half.
func secp256k1ECDSAVerify(pub *secp256k1.PublicKey, digest, sig []byte) bool {
	var rs struct{ R, S *big.Int }
	rest, err := asn1.Unmarshal(sig, &rs)
	if err != nil || len(rest) != 0 {
		return false
	}
	var r, s secp256k1.ModNScalar
	for _, p := range []struct {
		v *big.Int
		m *secp256k1.ModNScalar
	}{{rs.R, &r}, {rs.S, &s}} {
		if p.v.Sign() <= 0 || p.v.Cmp(secp256k1Order) >= 0 {
			return false
		}
		var b [32]byte
		p.v.FillBytes(b[:])
		p.m.SetBytes(&b)
	}
	return k1ecdsa.NewSignature(&r, &s).Verify(digest, pub)
}
