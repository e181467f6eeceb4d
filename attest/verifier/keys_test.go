package verifier

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func jwks(t *testing.T, baseURL string) JWKS {
	t.Helper()
	r := do(t, http.MethodGet, baseURL+"/.well-known/jwks.json", "", nil)
	if r.status != http.StatusOK || r.header.Get("Content-Type") != "application/jwk-set+json" {
		t.Fatalf("JWKS: %d %v", r.status, r.header)
	}
	var ks JWKS
	if err := json.Unmarshal(r.body, &ks); err != nil {
		t.Fatal(err)
	}
	return ks
}

func tokenFor(t *testing.T, baseURL string) string {
	t.Helper()
	raw := readTestdata(t, "anjuna-1-prod.cbor")
	return verifyOK(t, baseURL+"/v1/verify?time=2021-03-17T23:00:00Z", "application/cbor", raw).Token
}

// TestKeyRotation: generated keys rotate; a retired key stays published
// until the tokens it signed have expired, then disappears.
func TestKeyRotation(t *testing.T) {
	clock := newFakeClock()
	_, ts := testServer(t, Config{Clock: clock.Now, AllowTimeOverride: true, KeyRotation: time.Hour, TokenTTL: 10 * time.Minute})
	ks := jwks(t, ts.URL)
	if len(ks.Keys) != 1 || ks.Keys[0].Alg != "ES256" || ks.Keys[0].Crv != "P-256" || ks.Keys[0].Use != "sig" {
		t.Fatalf("initial JWKS %+v", ks)
	}
	oldKid := ks.Keys[0].Kid
	oldTok := tokenFor(t, ts.URL)

	clock.Advance(59 * time.Minute)
	if ks := jwks(t, ts.URL); len(ks.Keys) != 1 || ks.Keys[0].Kid != oldKid {
		t.Fatalf("rotated early: %+v", ks)
	}
	clock.Advance(time.Minute)
	ks = jwks(t, ts.URL)
	if len(ks.Keys) != 2 || ks.Keys[1].Kid != oldKid || ks.Keys[0].Kid == oldKid {
		t.Fatalf("after rotation: %+v", ks)
	}
	newTok := tokenFor(t, ts.URL)
	for _, tok := range []string{oldTok, newTok} {
		if _, err := parseEAR(t, ts.URL, tok, clock.Now().Add(-time.Hour)); err != nil {
			t.Fatalf("token does not verify with the JWKS after rotation: %v", err)
		}
	}
	var h struct {
		Kid string `json:"kid"`
	}
	p, _ := jwt.NewParser().DecodeSegment(strings.Split(newTok, ".")[0])
	if err := json.Unmarshal(p, &h); err != nil || h.Kid != ks.Keys[0].Kid {
		t.Fatalf("new token kid %q, want %q", h.Kid, ks.Keys[0].Kid)
	}
	// The old key stays while its last token (signed before the rotation)
	// may be valid: token TTL plus a minute.
	clock.Advance(11 * time.Minute)
	if ks := jwks(t, ts.URL); len(ks.Keys) != 2 {
		t.Fatalf("retired key removed while a token it signed may be valid: %+v", ks)
	}
	clock.Advance(time.Second)
	if ks := jwks(t, ts.URL); len(ks.Keys) != 1 || ks.Keys[0].Kid == oldKid {
		t.Fatalf("retired key still published after its tokens expired: %+v", ks)
	}
	if _, err := parseEAR(t, ts.URL, oldTok, clock.Now().Add(-2*time.Hour)); err == nil {
		t.Fatal("token of a removed key verified")
	}
}

func TestFixedSigningKeyES384(t *testing.T) {
	clock := newFakeClock()
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := LoadSigningKeyPEM(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	if err != nil {
		t.Fatal(err)
	}
	_, ts := testServer(t, Config{Clock: clock.Now, AllowTimeOverride: true, SigningKey: loaded, KeyRotation: time.Minute})
	kid := jwks(t, ts.URL).Keys[0].Kid
	clock.Advance(time.Hour)
	ks := jwks(t, ts.URL)
	if len(ks.Keys) != 1 || ks.Keys[0].Kid != kid || ks.Keys[0].Alg != "ES384" || ks.Keys[0].Crv != "P-384" {
		t.Fatalf("configured key rotated or wrong: %+v", ks)
	}
	tok := tokenFor(t, ts.URL)
	if _, err := parseEAR(t, ts.URL, tok, clock.Now()); err != nil {
		t.Fatal(err)
	}
	// The ES384 token also verifies with the key given in configuration.
	if _, err := jwt.Parse(tok, func(*jwt.Token) (any, error) { return &k.PublicKey, nil },
		jwt.WithValidMethods([]string{"ES384"}), jwt.WithTimeFunc(clock.Now)); err != nil {
		t.Fatal(err)
	}
	r := do(t, http.MethodGet, ts.URL+"/.well-known/openid-configuration", "", nil)
	var oc OpenIDConfiguration
	if err := json.Unmarshal(r.body, &oc); err != nil || oc.Issuer != ts.URL || oc.JWKSURI != ts.URL+"/.well-known/jwks.json" ||
		len(oc.SigningAlgs) != 1 || oc.SigningAlgs[0] != "ES384" {
		t.Fatalf("openid configuration %+v (%v)", oc, err)
	}
}

func TestLoadSigningKeyPEM(t *testing.T) {
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	sec1, _ := x509.MarshalECPrivateKey(p256)
	if k, err := LoadSigningKeyPEM(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1})); err != nil || !k.Equal(p256) {
		t.Fatalf("SEC 1 P-256: %v", err)
	}
	p521, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	sec1, _ = x509.MarshalECPrivateKey(p521)
	for name, in := range map[string][]byte{
		"p521":    pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}),
		"empty":   nil,
		"garbage": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2, 3}}),
		"cert":    pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1}}),
	} {
		if _, err := LoadSigningKeyPEM(in); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestIssuerConfigured(t *testing.T) {
	_, ts := testServer(t, Config{Issuer: "https://verifier.example/", AllowTimeOverride: true})
	ear, err := parseEAR(t, ts.URL, tokenFor(t, ts.URL), time.Now())
	if err != nil || ear.Issuer != "https://verifier.example" {
		t.Fatalf("iss %v %v", ear, err)
	}
	if _, err := New(Config{Issuer: "verifier.example"}); err == nil {
		t.Fatal("relative issuer accepted")
	}
}
