package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// runAttestServeCLI runs `cloister attest serve args...` in-process until ctx
// ends and returns the exit status main would use.
func runAttestServeCLI(ctx context.Context, args ...string) (code int, stderr string, err error) {
	root := newRootCmd()
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetArgs(append([]string{"attest", "serve"}, args...))
	err = root.ExecuteContext(ctx)
	if err != nil {
		code = 2
		var ee *exitError
		if errors.As(err, &ee) {
			code = ee.code
		}
	}
	return code, errb.String(), err
}

func TestAttestServeConfigErrors(t *testing.T) {
	dir := t.TempDir()
	badPolicy := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(badPolicy, []byte("policies:\n  prod:\n    pcrs: {0: nothex}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	badKey := filepath.Join(dir, "key.pem")
	if err := os.WriteFile(badKey, []byte("not a key"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"bad-policy", []string{"--policy-file", badPolicy}, 1, `policy "prod": pcrs: PCR0`},
		{"missing-policy-file", []string{"--policy-file", filepath.Join(dir, "nope.yaml")}, 1, "no such file"},
		{"missing-root", []string{"--root", filepath.Join(dir, "nope.pem")}, 1, "give --root aws or a readable PEM file"},
		{"bad-key", []string{"--signing-key", badKey}, 1, "signing key"},
		{"tls-half", []string{"--tls-cert", badKey}, 2, "--tls-cert and --tls-key go together"},
		{"log-format", []string{"--log-format", "xml"}, 2, "--log-format"},
		{"bad-addr", []string{"--addr", "127.0.0.1:notaport"}, 1, "listen"},
		{"bad-proxy", []string{"--trusted-proxy", "proxy.example"}, 2, "--trusted-proxy"},
		{"bad-burst", []string{"--client-burst", "0"}, 2, "--client-burst"},
		{"bad-prefix", []string{"--client-ipv6-prefix", "129"}, 1, "IPv6 prefix /129"},
		{"bad-issuer", []string{"--issuer", "verifier.example"}, 1, "absolute http(s) URL"},
		{"bad-store", []string{"--store", "mysql://db/x"}, 2, "--store"},
		{"store-without-key", []string{"--store", "postgres://127.0.0.1:1/x"}, 2, "--store needs --signing-key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, err := runAttestServeCLI(context.Background(), tt.args...)
			if code != tt.code || err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("exit %d, error %v; want exit %d and an error containing %q", code, err, tt.code, tt.want)
			}
		})
	}
}

// startAttestServe runs `cloister attest serve --addr 127.0.0.1:PORT
// args...` until it is ready and returns its URL, a function that stops it
// and the channel its result arrives on.
func startAttestServe(t *testing.T, args ...string) (string, context.CancelFunc, <-chan error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	done := make(chan error, 1)
	go func() {
		_, _, err := runAttestServeCLI(ctx, append([]string{"--addr", addr}, args...)...)
		done <- err
	}()
	base := "http://" + addr
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("server not ready: %v", err)
		}
		select {
		case err := <-done:
			t.Fatalf("server exited: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	return base, cancel, done
}

// TestAttestServeMatchesVerify serves on loopback and checks that the
// service's claims for a real document are exactly `cloister verify
// --json`'s output, then stops the server by cancelling its context.
func TestAttestServeMatchesVerify(t *testing.T) {
	base, cancel, done := startAttestServe(t, "--allow-time-override", "--root", "aws")
	doc := filepath.Join(verifyTestdata, "veracruz-go-1.cbor")
	const at = "2022-11-09T23:00:00Z"
	cliOut, code, err := runVerifyCLI(t, nil, "--json", "--at", at, doc)
	if code != 0 {
		t.Fatalf("verify: exit %d: %v", code, err)
	}
	raw, err := os.ReadFile(doc)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(base+"/v1/verify?time="+at, "application/cbor", bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /v1/verify: %d %v %s", resp.StatusCode, err, body)
	}
	var svc struct {
		Verdict string          `json:"verdict"`
		Claims  json.RawMessage `json:"claims"`
	}
	if err := json.Unmarshal(body, &svc); err != nil {
		t.Fatal(err)
	}
	var a, b any
	if err := json.Unmarshal([]byte(cliOut), &a); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(svc.Claims, &b); err != nil {
		t.Fatal(err)
	}
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	if !bytes.Equal(ja, jb) || svc.Verdict != "affirming" {
		t.Fatalf("service claims differ from `cloister verify --json` (verdict %s):\nverify: %s\nserver: %s", svc.Verdict, ja, jb)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve after cancel: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("server did not stop")
	}
}

// attestPost posts an empty body to url from the loopback address ip and
// returns the status and Retry-After.
func attestPost(t *testing.T, ip, url string, hdr ...string) (int, string) {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 10 * time.Second}
	tr := &http.Transport{DialContext: d.DialContext}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequest(http.MethodPost, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := (&http.Client{Transport: tr, Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("Retry-After")
}

// TestAttestServeLimitsAndIssuer runs the command with per-client limits:
// a client flooding POST /v1/challenges from 127.0.0.1 is refused after
// its share while 127.0.0.2 still gets challenges and sessions; and a
// request naming another Host still sees the issuer derived from --addr.
func TestAttestServeLimitsAndIssuer(t *testing.T) {
	base, _, _ := startAttestServe(t, "--max-challenges-per-client", "3", "--max-sessions-per-client", "2", "--client-rate", "-1")
	for i := range 3 {
		if code, _ := attestPost(t, "127.0.0.1", base+"/v1/challenges"); code != http.StatusCreated {
			t.Fatalf("challenge %d: %d", i, code)
		}
	}
	if code, retry := attestPost(t, "127.0.0.1", base+"/v1/challenges"); code != http.StatusTooManyRequests || retry == "" {
		t.Fatalf("fourth challenge of a client allowed 3: %d, Retry-After %q", code, retry)
	}
	if code, _ := attestPost(t, "127.0.0.2", base+"/v1/challenges"); code != http.StatusCreated {
		t.Fatalf("another client: %d", code)
	}
	session := base + "/challenge-response/v1/newSession"
	accept := []string{"Accept", "application/vnd.veraison.challenge-response-session+json"}
	for range 2 {
		attestPost(t, "127.0.0.1", session, accept...)
	}
	if code, _ := attestPost(t, "127.0.0.1", session, accept...); code != http.StatusTooManyRequests {
		t.Fatalf("third session of a client allowed 2: %d", code)
	}
	if code, _ := attestPost(t, "127.0.0.2", session, accept...); code != http.StatusCreated {
		t.Fatalf("another client's session: %d", code)
	}

	req, err := http.NewRequest(http.MethodGet, base+"/.well-known/openid-configuration", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "evil.example"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var oc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	err = json.NewDecoder(resp.Body).Decode(&oc)
	resp.Body.Close()
	if err != nil || oc.Issuer != base || oc.JWKSURI != base+"/.well-known/jwks.json" {
		t.Fatalf("with Host: evil.example: issuer %q, jwks_uri %q (%v); want %s", oc.Issuer, oc.JWKSURI, err, base)
	}
}
