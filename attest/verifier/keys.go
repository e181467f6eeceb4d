package verifier

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// JWK is a public EC signing key as published in the JWKS (RFC 7517/7518).
type JWK struct {
	Kty string `json:"kty"` // "EC"
	Crv string `json:"crv"` // "P-256" or "P-384"
	X   string `json:"x"`   // base64url, fixed length
	Y   string `json:"y"`
	Kid string `json:"kid"` // RFC 7638 thumbprint (base64url SHA-256)
	Alg string `json:"alg"` // "ES256" or "ES384"
	Use string `json:"use"` // "sig"
}

// JWKS is a JSON Web Key Set.
type JWKS struct {
	Keys []JWK `json:"keys"`
}

// LoadSigningKeyPEM parses an ECDSA P-256 or P-384 private key from PEM
// ("EC PRIVATE KEY" SEC 1 or "PRIVATE KEY" PKCS #8).
func LoadSigningKeyPEM(b []byte) (*ecdsa.PrivateKey, error) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, errors.New("verifier: signing key: no \"EC PRIVATE KEY\" or \"PRIVATE KEY\" PEM block")
		}
		var k any
		var err error
		switch blk.Type {
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(blk.Bytes)
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("verifier: signing key: %w", err)
		}
		ek, ok := k.(*ecdsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("verifier: signing key is %T, want ECDSA P-256 or P-384", k)
		}
		if _, err := algFor(ek); err != nil {
			return nil, err
		}
		return ek, nil
	}
}

func algFor(k *ecdsa.PrivateKey) (jwt.SigningMethod, error) {
	switch k.Curve {
	case elliptic.P256():
		return jwt.SigningMethodES256, nil
	case elliptic.P384():
		return jwt.SigningMethodES384, nil
	}
	return nil, fmt.Errorf("verifier: signing key curve %s: want P-256 (ES256) or P-384 (ES384)", k.Curve.Params().Name)
}

type signingKey struct {
	priv    *ecdsa.PrivateKey
	method  jwt.SigningMethod
	header  string // base64url of the JWS header
	jwk     JWK
	created time.Time
	retired time.Time // when a newer key replaced it; zero while current
}

func newSigningKey(priv *ecdsa.PrivateKey, now time.Time) (*signingKey, error) {
	m, err := algFor(priv)
	if err != nil {
		return nil, err
	}
	size := (priv.Curve.Params().BitSize + 7) / 8
	pub, err := priv.PublicKey.Bytes() // uncompressed point 04 || X || Y
	if err != nil {
		return nil, fmt.Errorf("verifier: signing key: %w", err)
	}
	x := base64.RawURLEncoding.EncodeToString(pub[1 : 1+size])
	y := base64.RawURLEncoding.EncodeToString(pub[1+size:])
	crv := priv.Curve.Params().Name
	// RFC 7638 thumbprint: the required members in lexicographic order.
	tp, err := json.Marshal(struct {
		Crv string `json:"crv"`
		Kty string `json:"kty"`
		X   string `json:"x"`
		Y   string `json:"y"`
	}{crv, "EC", x, y})
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(tp)
	kid := base64.RawURLEncoding.EncodeToString(sum[:])
	hdr, err := json.Marshal(struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
		Typ string `json:"typ"`
	}{m.Alg(), kid, "JWT"})
	if err != nil {
		return nil, err
	}
	return &signingKey{
		priv:    priv,
		method:  m,
		header:  base64.RawURLEncoding.EncodeToString(hdr),
		jwk:     JWK{Kty: "EC", Crv: crv, X: x, Y: y, Kid: kid, Alg: m.Alg(), Use: "sig"},
		created: now,
	}, nil
}

// keyRing holds the current signing key and the retired ones whose tokens
// may still be valid. Generated keys are replaced every rotation period; a
// configured key is never rotated.
type keyRing struct {
	mu       sync.Mutex
	keys     []*signingKey // oldest first; the last one is current
	fixed    bool
	rotation time.Duration // <= 0: never
	keep     time.Duration // how long a retired key stays published
	curve    elliptic.Curve
}

func newKeyRing(fixed *ecdsa.PrivateKey, curve elliptic.Curve, rotation, tokenTTL time.Duration, now time.Time) (*keyRing, error) {
	kr := &keyRing{rotation: rotation, keep: tokenTTL + time.Minute, curve: curve}
	var priv *ecdsa.PrivateKey
	if fixed != nil {
		kr.fixed = true
		priv = fixed
	} else {
		var err error
		if priv, err = ecdsa.GenerateKey(curve, rand.Reader); err != nil {
			return nil, fmt.Errorf("verifier: generate signing key: %w", err)
		}
	}
	k, err := newSigningKey(priv, now)
	if err != nil {
		return nil, err
	}
	kr.keys = []*signingKey{k}
	return kr, nil
}

// update rotates and prunes; called with mu held.
func (kr *keyRing) update(now time.Time) error {
	cur := kr.keys[len(kr.keys)-1]
	if !kr.fixed && kr.rotation > 0 && now.Sub(cur.created) >= kr.rotation {
		priv, err := ecdsa.GenerateKey(kr.curve, rand.Reader)
		if err != nil {
			return fmt.Errorf("verifier: rotate signing key: %w", err)
		}
		k, err := newSigningKey(priv, now)
		if err != nil {
			return err
		}
		cur.retired = now
		kr.keys = append(kr.keys, k)
	}
	kept := kr.keys[:0]
	for _, k := range kr.keys {
		if k.retired.IsZero() || now.Sub(k.retired) <= kr.keep {
			kept = append(kept, k)
		}
	}
	clear(kr.keys[len(kept):])
	kr.keys = kept
	return nil
}

// current returns the key to sign with at time now, rotating if due.
func (kr *keyRing) current(now time.Time) (*signingKey, error) {
	kr.mu.Lock()
	defer kr.mu.Unlock()
	if err := kr.update(now); err != nil {
		return nil, err
	}
	return kr.keys[len(kr.keys)-1], nil
}

// jwks returns every published key, newest first.
func (kr *keyRing) jwks(now time.Time) (JWKS, error) {
	kr.mu.Lock()
	defer kr.mu.Unlock()
	if err := kr.update(now); err != nil {
		return JWKS{}, err
	}
	out := JWKS{Keys: make([]JWK, 0, len(kr.keys))}
	for i := len(kr.keys) - 1; i >= 0; i-- {
		out.Keys = append(out.Keys, kr.keys[i].jwk)
	}
	return out, nil
}

// sign returns the compact JWS of claims (a JWT) signed with the current
// key, with header {"alg", "kid", "typ": "JWT"}. The signature is
// golang-jwt's SigningMethodECDSA.Sign; the header is encoded once per key.
func (kr *keyRing) sign(claims jwt.Claims, now time.Time) (string, error) {
	k, err := kr.current(now)
	if err != nil {
		return "", err
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("verifier: encode token claims: %w", err)
	}
	enc := base64.RawURLEncoding
	sigLen := enc.EncodedLen(2 * ((k.priv.Curve.Params().BitSize + 7) / 8))
	buf := make([]byte, 0, len(k.header)+2+enc.EncodedLen(len(payload))+sigLen)
	buf = append(buf, k.header...)
	buf = append(buf, '.')
	buf = enc.AppendEncode(buf, payload)
	sig, err := k.method.Sign(string(buf), k.priv)
	if err != nil {
		return "", fmt.Errorf("verifier: sign token: %w", err)
	}
	buf = append(buf, '.')
	buf = enc.AppendEncode(buf, sig)
	return string(buf), nil
}
