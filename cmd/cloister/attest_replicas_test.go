package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloister/cloister/attest"
	"github.com/cloister/cloister/internal/testenv"
)

// TestAttestServeReplicas runs two `cloister attest serve --store
// postgres://…` on one database with one --signing-key: a challenge issued
// by replica A is consumed once through replica B, and a replay through
// either is refused; both publish the same JWKS.
func TestAttestServeReplicas(t *testing.T) {
	dsn := testenv.Postgres(t, "attest_cli")
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "ear.pem")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	iss, err := attest.NewIssuer(attest.IssuerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	rootFile := filepath.Join(dir, "dev-root.pem")
	if err := os.WriteFile(rootFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: iss.Root().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"--store", dsn, "--signing-key", keyFile, "--root", rootFile}
	a, _, _ := startAttestServe(t, args...)
	b, _, _ := startAttestServe(t, args...)

	resp, err := http.Post(a+"/v1/challenges", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Nonce string `json:"nonce"`
	}
	err = json.NewDecoder(resp.Body).Decode(&c)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("challenge from A: %d %v", resp.StatusCode, err)
	}
	nonce, err := hex.DecodeString(c.Nonce)
	if err != nil {
		t.Fatal(err)
	}
	pcr := make([]byte, 48)
	doc, err := iss.Issue(attest.IssueRequest{PCRs: map[int][]byte{0: pcr, 1: pcr, 2: pcr}, Nonce: nonce})
	if err != nil {
		t.Fatal(err)
	}
	challenge := func(base string) (bool, string) {
		t.Helper()
		resp, err := http.Post(base+"/v1/verify?challenge=true", "application/cbor", strings.NewReader(string(doc)))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var vr struct {
			Checks []struct {
				Name   string `json:"name"`
				OK     bool   `json:"ok"`
				Detail string `json:"detail"`
			} `json:"checks"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&vr); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("verify through %s: %d %v", base, resp.StatusCode, err)
		}
		for _, ch := range vr.Checks {
			if ch.Name == "challenge" {
				return ch.OK, ch.Detail
			}
		}
		t.Fatalf("no challenge check: %+v", vr.Checks)
		return false, ""
	}
	if ok, detail := challenge(b); !ok {
		t.Fatalf("A's challenge refused by B: %s", detail)
	}
	for name, base := range map[string]string{"A": a, "B": b} {
		if ok, detail := challenge(base); ok || !strings.Contains(detail, "already used") {
			t.Errorf("replay through %s: ok=%v %q, want refused as already used", name, ok, detail)
		}
	}
	jwks := func(base string) string {
		resp, err := http.Get(base + "/.well-known/jwks.json")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var v any
		if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
			t.Fatal(err)
		}
		out, _ := json.Marshal(v)
		return string(out)
	}
	if ja, jb := jwks(a), jwks(b); ja != jb {
		t.Errorf("replicas publish different JWKS:\nA %s\nB %s", ja, jb)
	}
}
