package verifier

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cloister/cloister/attest"
)

// TestMalformedAndOversized: bad input gets a 4xx problem, never a 5xx.
func TestMalformedAndOversized(t *testing.T) {
	_, ts := testServer(t, Config{AllowTimeOverride: true, MaxBodyBytes: 64 << 10})
	raw := readTestdata(t, "veracruz-go-1.cbor")
	truncated := raw[:len(raw)/2]
	trailing := append(bytes.Clone(raw), 0x00)
	big := append([]byte{0x84}, bytes.Repeat([]byte{0}, attest.MaxDocumentSize+1)...)
	env := func(v any) []byte { b, _ := json.Marshal(v); return b }
	tests := []struct {
		name, ct, query string
		body            []byte
		status          int
	}{
		{"empty", "application/cbor", "", nil, 400},
		{"garbage-text", "text/plain", "", []byte("hello, world"), 400},
		{"garbage-binary", "application/octet-stream", "", []byte{0x00, 0xff, 0x13}, 400},
		{"cbor-not-cose", "application/cbor", "", []byte{0x84, 0x01, 0x02, 0x03, 0x04}, 400},
		{"truncated", "application/cbor", "", truncated, 400},
		{"trailing-byte", "application/cbor", "", trailing, 400},
		{"hex-of-garbage", "text/plain", "", []byte(hex.EncodeToString([]byte("not a document"))), 400},
		{"doc-too-large", "application/cbor", "", big, 413},
		{"body-too-large", "application/cbor", "", bytes.Repeat([]byte{0x84}, 65<<10), 413},
		{"base64-too-large", "text/plain", "", bytes.Repeat([]byte("A"), 4*attest.MaxDocumentSize+8), 413},
		{"content-type", "image/png", "", raw, 415},
		{"content-type-syntax", "application/", "", raw, 400},
		{"unknown-query", "application/cbor", "?foo=bar", raw, 400},
		{"repeated-query", "application/cbor", "?policy=default&policy=default", raw, 400},
		{"bad-challenge", "application/cbor", "?challenge=maybe", raw, 400},
		{"bad-time", "application/cbor", "?time=yesterday", raw, 400},
		{"bad-nonce", "application/cbor", "?nonce=xyz", raw, 400},
		{"json-syntax", "application/json", "", []byte(`{"evidence": `), 400},
		{"json-unknown-field", "application/json", "", []byte(`{"evidence": "AA", "extra": 1}`), 400},
		{"json-trailing", "application/json", "", []byte(`{"evidence": "AA"} {}`), 400},
		{"json-empty-evidence", "application/json", "", []byte(`{}`), 400},
		{"json-evidence-type", "application/json", "", []byte(`{"evidence": 5}`), 400},
		{"json-bad-evidence", "application/json", "", env(VerifyRequest{Evidence: "!!!"}), 400},
		{"json-query", "application/json", "?policy=default", env(VerifyRequest{Evidence: base64.StdEncoding.EncodeToString(raw)}), 400},
		{"json-policy-number", "application/json", "", []byte(`{"evidence": "` + base64.StdEncoding.EncodeToString(raw) + `", "policy": 5}`), 400},
		{"json-nonce-too-long", "application/json", "", env(VerifyRequest{Evidence: base64.StdEncoding.EncodeToString(raw), Nonce: strings.Repeat("00", attest.MaxFieldSize+1)}), 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantProblem(t, do(t, http.MethodPost, ts.URL+"/v1/verify"+tt.query, tt.ct, tt.body), tt.status)
		})
	}
}

func TestRoutingProblems(t *testing.T) {
	_, ts := testServer(t, Config{})
	r := do(t, http.MethodGet, ts.URL+"/v1/verify", "", nil)
	wantProblem(t, r, http.StatusMethodNotAllowed)
	if r.header.Get("Allow") != "POST" {
		t.Errorf("Allow %q", r.header.Get("Allow"))
	}
	wantProblem(t, do(t, http.MethodPost, ts.URL+"/healthz", "", nil), http.StatusMethodNotAllowed)
	wantProblem(t, do(t, http.MethodGet, ts.URL+"/nothing/here", "", nil), http.StatusNotFound)
	wantProblem(t, do(t, http.MethodGet, ts.URL+"/v2/verify", "", nil), http.StatusNotFound)
}

func TestHealthReadyMetrics(t *testing.T) {
	s, ts := testServer(t, Config{AllowTimeOverride: true})
	if r := do(t, http.MethodGet, ts.URL+"/healthz", "", nil); r.status != 200 || string(r.body) != "ok\n" {
		t.Fatalf("healthz %d %q", r.status, r.body)
	}
	if r := do(t, http.MethodGet, ts.URL+"/readyz", "", nil); r.status != 200 {
		t.Fatalf("readyz %d", r.status)
	}
	s.SetReady(false)
	wantProblem(t, do(t, http.MethodGet, ts.URL+"/readyz", "", nil), http.StatusServiceUnavailable)
	s.SetReady(true)

	verifyOK(t, ts.URL+"/v1/verify?time=2022-11-09T23:00:00Z", "application/cbor", readTestdata(t, "veracruz-go-1.cbor"))
	verifyOK(t, ts.URL+"/v1/verify?time=2022-11-09T23:00:00Z", "application/cbor", readTestdata(t, "veracruz-go-2-badsig.cbor"))
	do(t, http.MethodPost, ts.URL+"/v1/verify", "text/plain", []byte("junk"))
	m := string(do(t, http.MethodGet, ts.URL+"/metrics", "", nil).body)
	for _, want := range []string{
		`cloister_verifier_verdicts_total{reason="ok",verdict="affirming"} 1`,
		`cloister_verifier_verdicts_total{reason="signature",verdict="contraindicated"} 1`,
		`cloister_verifier_requests_total{code="200",method="POST",route="/v1/verify"} 2`,
		`cloister_verifier_requests_total{code="400",method="POST",route="/v1/verify"} 1`,
		`cloister_verifier_request_duration_seconds_count{route="/v1/verify"} 3`,
		`cloister_verifier_appraisal_duration_seconds_count 2`,
		`cloister_verifier_challenges 0`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// TestOpenAPI: the served document is the embedded one, which equals
// docs/verifier-api.yaml, and names every route the server has.
func TestOpenAPI(t *testing.T) {
	_, ts := testServer(t, Config{})
	r := do(t, http.MethodGet, ts.URL+"/openapi.yaml", "", nil)
	if r.status != 200 || !bytes.Equal(r.body, OpenAPI()) || !bytes.HasPrefix(r.body, []byte("openapi: 3.")) {
		t.Fatalf("openapi.yaml: %d, %d bytes", r.status, len(r.body))
	}
	docs, err := os.ReadFile(filepath.Join("..", "..", "docs", "verifier-api.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(docs, OpenAPI()) {
		t.Fatal("docs/verifier-api.yaml differs from attest/verifier/openapi.yaml: copy one onto the other")
	}
	for _, path := range []string{
		"/v1/verify:", "/v1/challenges:", "/challenge-response/v1/newSession:", "/challenge-response/v1/session/{id}:",
		"/.well-known/jwks.json:", "/.well-known/openid-configuration:", "/.well-known/veraison/verification:",
		"/healthz:", "/readyz:", "/metrics:", "/openapi.yaml:", "  /:",
	} {
		if !bytes.Contains(r.body, []byte("\n  "+strings.TrimPrefix(path, "  "))) {
			t.Errorf("openapi.yaml does not describe %s", strings.TrimSuffix(path, ":"))
		}
	}
}

func TestPageAssets(t *testing.T) {
	_, ts := testServer(t, Config{})
	for path, ct := range map[string]string{
		"/":             "text/html; charset=utf-8",
		"/ui/app.js":    "text/javascript; charset=utf-8",
		"/ui/style.css": "text/css; charset=utf-8",
	} {
		r := do(t, http.MethodGet, ts.URL+path, "", nil)
		if r.status != 200 || r.header.Get("Content-Type") != ct || !strings.Contains(r.header.Get("Content-Security-Policy"), "default-src 'none'") {
			t.Errorf("%s: %d %v", path, r.status, r.header)
		}
		if bytes.Contains(r.body, []byte("http://")) || bytes.Contains(r.body, []byte("https://")) {
			t.Errorf("%s references an external asset", path)
		}
	}
}

// TestServeTLS serves over TLS on loopback and shuts down on cancel.
func TestServeTLS(t *testing.T) {
	s, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- s.Serve(ctx, ln, &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}})
	}()
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 10 * time.Second}
	resp, err := client.Get("https://" + ln.Addr().String() + "/.well-known/openid-configuration")
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	var oc OpenIDConfiguration
	err = json.NewDecoder(resp.Body).Decode(&oc)
	resp.Body.Close()
	if err != nil || oc.Issuer != "https://"+ln.Addr().String() {
		t.Errorf("issuer over TLS %q (%v)", oc.Issuer, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve after cancel: %v", err)
	}
	if s.ready.Load() {
		t.Error("still ready after shutdown")
	}
}
