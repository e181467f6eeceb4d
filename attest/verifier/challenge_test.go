package verifier

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

func newChallenge(t *testing.T, baseURL string, body []byte) ([]byte, Challenge) {
	t.Helper()
	ct := ""
	if body != nil {
		ct = "application/json"
	}
	r := do(t, http.MethodPost, baseURL+"/v1/challenges", ct, body)
	if r.status != http.StatusCreated {
		t.Fatalf("POST /v1/challenges: %d %s", r.status, r.body)
	}
	var c Challenge
	if err := json.Unmarshal(r.body, &c); err != nil {
		t.Fatal(err)
	}
	n, err := hex.DecodeString(c.Nonce)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := base64.StdEncoding.DecodeString(c.NonceBase64); !bytes.Equal(b, n) {
		t.Fatalf("nonce_base64 %q does not encode nonce %s", c.NonceBase64, c.Nonce)
	}
	return n, c
}

func challengeCheck(t *testing.T, vr VerifyResponse) Check {
	t.Helper()
	c, ok := checkNamed(vr.Checks, "challenge")
	if !ok {
		t.Fatalf("no challenge check in %+v", vr.Checks)
	}
	return c
}

// TestChallenges: a challenge is accepted once; replays, nonces never
// issued and expired ones are rejected; a document without nonce fails.
func TestChallenges(t *testing.T) {
	clock := newFakeClock()
	iss, root := devIssuer(t, clock)
	_, ts := testServer(t, Config{Roots: []Root{root}, Clock: clock.Now, ChallengeTTL: time.Minute})
	url := ts.URL + "/v1/verify?challenge=true"

	nonce, c := newChallenge(t, ts.URL, nil)
	if len(nonce) != DefaultChallengeSize || c.TTLSeconds != 60 || c.ExpiresAt != clock.Now().Add(time.Minute).Format(time.RFC3339Nano) {
		t.Fatalf("challenge %+v", c)
	}
	doc := issue(t, iss, nonce)
	got := verifyOK(t, url, "application/cbor", doc)
	if cc := challengeCheck(t, got); !cc.OK {
		t.Fatalf("fresh challenge rejected: %+v", cc)
	}
	// A development root is not AWS hardware: the best verdict is warning.
	if got.Verdict != StatusWarning || got.TrustVector.Hardware != ClaimUnsafe || got.TrustVector.InstanceIdentity != ClaimTrustworthyInstance {
		t.Fatalf("verdict %s vector %+v", got.Verdict, got.TrustVector)
	}

	tests := []struct {
		name   string
		doc    func() []byte
		detail string
	}{
		{"replay", func() []byte { return doc }, "already used"},
		{"replay-new-document", func() []byte { return issue(t, iss, nonce) }, "already used"},
		{"never-issued", func() []byte { return issue(t, iss, bytes.Repeat([]byte{7}, 32)) }, "not issued"},
		{"no-nonce", func() []byte { return issue(t, iss, nil) }, "no nonce"},
		{"expired", func() []byte {
			n, _ := newChallenge(t, ts.URL, []byte(`{"size": 16}`))
			d := issue(t, iss, n)
			clock.Advance(time.Minute + time.Second)
			return d
		}, "expired"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := verifyOK(t, url, "application/cbor", tt.doc())
			cc := challengeCheck(t, got)
			if cc.OK || !strings.Contains(cc.Detail, tt.detail) {
				t.Fatalf("challenge check %+v, want a failure saying %q", cc, tt.detail)
			}
			if got.Verdict != StatusContraindicated || got.TrustVector.InstanceIdentity != ClaimUntrustworthy {
				t.Fatalf("verdict %s vector %+v", got.Verdict, got.TrustVector)
			}
		})
	}

	// A document whose signature fails does not consume the challenge.
	n, _ := newChallenge(t, ts.URL, nil)
	good := issue(t, iss, n)
	bad := bytes.Clone(good)
	bad[len(bad)-1] ^= 1
	if got := verifyOK(t, url, "application/cbor", bad); got.Verdict != StatusContraindicated {
		t.Fatalf("bad signature: %s", got.Verdict)
	}
	if got := verifyOK(t, url, "application/cbor", good); !challengeCheck(t, got).OK {
		t.Fatal("challenge consumed by a document that failed verification")
	}
}

// TestChallengePolicy: a policy with challenge: true demands a challenge
// without the request asking.
func TestChallengePolicy(t *testing.T) {
	clock := newFakeClock()
	iss, root := devIssuer(t, clock)
	pf, err := ParsePolicyFile([]byte("default: fresh\npolicies:\n  fresh:\n    challenge: true\n  any: {}\n"))
	if err != nil {
		t.Fatal(err)
	}
	_, ts := testServer(t, Config{Roots: []Root{root}, NoAWSRoot: true, Clock: clock.Now, Policies: pf})
	n, _ := newChallenge(t, ts.URL, nil)
	if got := verifyOK(t, ts.URL+"/v1/verify", "application/cbor", issue(t, iss, n)); !challengeCheck(t, got).OK || got.Policy != "policy:cloister/fresh" {
		t.Fatalf("%+v", got)
	}
	got := verifyOK(t, ts.URL+"/v1/verify", "application/cbor", issue(t, iss, []byte("not a challenge")))
	if challengeCheck(t, got).OK || got.Verdict != StatusContraindicated {
		t.Fatalf("unknown nonce accepted: %+v", got.Checks)
	}
	// The "any" policy does not demand one.
	got = verifyOK(t, ts.URL+"/v1/verify?policy=any", "application/cbor", issue(t, iss, []byte("not a challenge")))
	if _, ok := checkNamed(got.Checks, "challenge"); ok || got.Verdict != StatusWarning {
		t.Fatalf("policy any: %+v", got)
	}
	// Nonce and challenge are exclusive in a request.
	wantProblem(t, do(t, http.MethodPost, ts.URL+"/v1/verify?nonce=00112233", "application/cbor", issue(t, iss, nil)), http.StatusBadRequest)
}

func TestChallengeRequestErrors(t *testing.T) {
	_, ts := testServer(t, Config{MaxChallenges: 3})
	for _, body := range []string{`{"size": 4}`, `{"size": 65}`, `{"bogus": 1}`, `[`, `{"size": "x"}`} {
		wantProblem(t, do(t, http.MethodPost, ts.URL+"/v1/challenges", "application/json", []byte(body)), http.StatusBadRequest)
	}
	for range 3 {
		newChallenge(t, ts.URL, nil)
	}
	r := do(t, http.MethodPost, ts.URL+"/v1/challenges", "", nil)
	wantProblem(t, r, http.StatusTooManyRequests)
	if r.header.Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}
}

func TestChallengeStoreSweep(t *testing.T) {
	clock := newFakeClock()
	cs := newChallengeStore(2, time.Minute)
	if _, ok, err := cs.issue([]byte("a"), clock.Now()); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if _, ok, err := cs.issue([]byte("a"), clock.Now()); ok || err != nil {
		t.Fatal("duplicate nonce accepted", ok, err)
	}
	if _, _, err := cs.issue([]byte("b"), clock.Now()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := cs.issue([]byte("c"), clock.Now()); err != ErrStoreFull {
		t.Fatalf("third nonce in a store of 2: %v", err)
	}
	clock.Advance(time.Minute)
	// Full: every expired entry is swept to make room.
	if _, _, err := cs.issue([]byte("c"), clock.Now()); err != nil {
		t.Fatal(err)
	}
	if n := cs.s.len(); n != 1 {
		t.Fatalf("%d entries after sweep, want 1", n)
	}
	if err := cs.consume([]byte("a"), clock.Now()); err != ErrUnknownChallenge {
		t.Fatalf("swept nonce: %v", err)
	}
	if err := cs.consume([]byte("c"), clock.Now()); err != nil {
		t.Fatal(err)
	}
	if err := cs.consume([]byte("c"), clock.Now()); err != ErrChallengeUsed {
		t.Fatalf("replay: %v", err)
	}
	clock.Advance(time.Minute)
	if err := cs.consume([]byte("c"), clock.Now()); err != ErrChallengeExpired {
		t.Fatalf("expired: %v", err)
	}
}
