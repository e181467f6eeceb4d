package verifier

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/cloister/cloister/attest"
)

type manifestEntry struct {
	File      string            `json:"file"`
	Expected  string            `json:"expected_result"`
	VerifyAt  time.Time         `json:"verify_at"`
	ModuleID  string            `json:"module_id"`
	Debug     bool              `json:"debug_mode"`
	Nonzero   map[string]string `json:"nonzero_pcrs"`
	UserData  *string           `json:"user_data"`
	Nonce     *string           `json:"nonce"`
	PublicKey *string           `json:"public_key"`
}

func loadManifest(t testing.TB) []manifestEntry {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m []manifestEntry
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if len(m) == 0 {
		t.Fatal("empty manifest")
	}
	return m
}

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fakeClock is a settable clock for Config.Clock and attest.IssuerConfig.Clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// testServer starts cfg's Server on a loopback httptest server.
func testServer(t testing.TB, cfg Config) (*Server, *httptest.Server) {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s)
	t.Cleanup(ts.Close)
	return s, ts
}

// devIssuer returns an attest.Issuer on clock and the Root to trust it.
func devIssuer(t testing.TB, clock *fakeClock) (*attest.Issuer, Root) {
	t.Helper()
	iss, err := attest.NewIssuer(attest.IssuerConfig{Clock: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	return iss, Root{Name: "dev", Cert: iss.Root()}
}

func issue(t testing.TB, iss *attest.Issuer, nonce []byte) []byte {
	t.Helper()
	pcr := bytes.Repeat([]byte{0xab}, 48)
	doc, err := iss.Issue(attest.IssueRequest{PCRs: map[int][]byte{0: pcr, 1: pcr, 2: pcr}, Nonce: nonce})
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

type httpResult struct {
	status int
	header http.Header
	body   []byte
}

func do(t testing.TB, method, url, contentType string, body []byte, hdr ...string) httpResult {
	t.Helper()
	return doWith(t, http.DefaultClient, method, url, contentType, body, hdr...)
}

// doWith is do through client. A "Host" pair in hdr sets the request's
// Host header.
func doWith(t testing.TB, client *http.Client, method, url, contentType string, body []byte, hdr ...string) httpResult {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "Host" {
			req.Host = hdr[i+1]
			continue
		}
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return httpResult{status: resp.StatusCode, header: resp.Header, body: b}
}

// clientFrom returns an HTTP client whose connections leave from the
// loopback address ip (127.0.0.1, 127.0.0.2, ...: Linux routes all of
// 127.0.0.0/8 to lo), so that a server sees it as a distinct client.
func clientFrom(t testing.TB, ip string) *http.Client {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 10 * time.Second}
	tr := &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 1}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// verifyOK posts and decodes a 200 VerifyResponse.
func verifyOK(t testing.TB, url, contentType string, body []byte) VerifyResponse {
	t.Helper()
	r := do(t, http.MethodPost, url, contentType, body)
	if r.status != http.StatusOK {
		t.Fatalf("POST %s: status %d: %s", url, r.status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q", ct)
	}
	var vr VerifyResponse
	if err := json.Unmarshal(r.body, &vr); err != nil {
		t.Fatalf("decode response: %v: %s", err, r.body)
	}
	return vr
}

// wantProblem checks a problem+json response with the given status.
func wantProblem(t testing.TB, r httpResult, status int) Problem {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d: %s", r.status, status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("Content-Type %q, want application/problem+json (body %s)", ct, r.body)
	}
	var p Problem
	if err := json.Unmarshal(r.body, &p); err != nil {
		t.Fatalf("problem body: %v: %s", err, r.body)
	}
	if p.Status != status || p.Detail == "" || !strings.HasPrefix(p.Type, ProblemTypePrefix) {
		t.Fatalf("bad problem document %+v", p)
	}
	return p
}

// jwksKeyFunc fetches baseURL's JWKS over HTTP and returns a jwt.Keyfunc
// that looks keys up by kid in it, and nowhere else.
func jwksKeyFunc(t testing.TB, baseURL string) jwt.Keyfunc {
	t.Helper()
	r := do(t, http.MethodGet, baseURL+"/.well-known/jwks.json", "", nil)
	if r.status != http.StatusOK {
		t.Fatalf("JWKS: status %d", r.status)
	}
	var set struct {
		Keys []map[string]string `json:"keys"`
	}
	if err := json.Unmarshal(r.body, &set); err != nil {
		t.Fatal(err)
	}
	keys := map[string]*ecdsa.PublicKey{}
	for _, k := range set.Keys {
		var curve elliptic.Curve
		switch k["crv"] {
		case "P-256":
			curve = elliptic.P256()
		case "P-384":
			curve = elliptic.P384()
		default:
			t.Fatalf("JWK crv %q", k["crv"])
		}
		x, err1 := base64.RawURLEncoding.DecodeString(k["x"])
		y, err2 := base64.RawURLEncoding.DecodeString(k["y"])
		if err1 != nil || err2 != nil || k["kty"] != "EC" || k["kid"] == "" {
			t.Fatalf("bad JWK %v", k)
		}
		pub, err := ecdsa.ParseUncompressedPublicKey(curve, append(append([]byte{4}, x...), y...))
		if err != nil {
			t.Fatalf("JWK %v: %v", k, err)
		}
		keys[k["kid"]] = pub
	}
	return func(tok *jwt.Token) (any, error) {
		kid, _ := tok.Header["kid"].(string)
		k, ok := keys[kid]
		if !ok {
			return nil, fmt.Errorf("kid %q not in the JWKS", kid)
		}
		return k, nil
	}
}

// parseEAR verifies tok with the JWKS at baseURL using golang-jwt.
func parseEAR(t testing.TB, baseURL, tok string, now time.Time) (*EAR, error) {
	t.Helper()
	var ear EAR
	_, err := jwt.ParseWithClaims(tok, &ear, jwksKeyFunc(t, baseURL),
		jwt.WithValidMethods([]string{"ES256", "ES384"}), jwt.WithExpirationRequired(),
		jwt.WithTimeFunc(func() time.Time { return now }))
	if err != nil {
		return nil, err
	}
	if ear.Profile != EATProfile {
		return nil, errors.New("wrong eat_profile " + ear.Profile)
	}
	return &ear, nil
}

func checkNamed(checks []Check, name string) (Check, bool) {
	for _, c := range checks {
		if c.Name == name {
			return c, true
		}
	}
	return Check{}, false
}
