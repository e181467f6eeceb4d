package verifier

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/internal/testenv"
)

// replicas starts n verifiers, each with its own connection pool to one
// database and the same signing key, as n pods behind a load balancer.
func replicas(t testing.TB, n int, cfg Config) []string {
	t.Helper()
	dsn := testenv.Postgres(t, "verifier")
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var urls []string
	for range n {
		st, err := OpenPostgresStore(context.Background(), dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(st.Close)
		c := cfg
		c.Store, c.SigningKey = st, key
		_, ts := testServer(t, c)
		urls = append(urls, ts.URL)
	}
	return urls
}

// TestPostgresReplicasChallenge: a challenge issued by replica A is
// consumed once through replica B; a replay through either is refused;
// both publish one JWKS, so a token from either checks against the other's.
func TestPostgresReplicasChallenge(t *testing.T) {
	clock := newFakeClock()
	iss, root := devIssuer(t, clock)
	r := replicas(t, 2, Config{Roots: []Root{root}, NoAWSRoot: true, Clock: clock.Now, ChallengeTTL: time.Minute})
	a, b := r[0], r[1]

	nonce, _ := newChallenge(t, a, nil)
	doc := issue(t, iss, nonce)
	got := verifyOK(t, b+"/v1/verify?challenge=true", "application/cbor", doc)
	if cc := challengeCheck(t, got); !cc.OK {
		t.Fatalf("challenge of replica A refused by replica B: %+v", cc)
	}
	if _, err := parseEAR(t, a, got.Token, clock.Now()); err != nil {
		t.Fatalf("token of replica B against replica A's JWKS: %v", err)
	}
	ja := do(t, http.MethodGet, a+"/.well-known/jwks.json", "", nil)
	jb := do(t, http.MethodGet, b+"/.well-known/jwks.json", "", nil)
	if diff := cmp.Diff(string(ja.body), string(jb.body)); diff != "" {
		t.Errorf("the replicas publish different JWKS (-A +B):\n%s", diff)
	}

	tests := []struct {
		name, via string
		doc       func() []byte
		detail    string
	}{
		{"replay-through-B", b, func() []byte { return doc }, "already used"},
		{"replay-through-A", a, func() []byte { return doc }, "already used"},
		{"replay-new-document-through-A", a, func() []byte { return issue(t, iss, nonce) }, "already used"},
		{"never-issued", b, func() []byte { return issue(t, iss, []byte("never issued by anyone")) }, "not issued"},
		{"expired", b, func() []byte {
			n, _ := newChallenge(t, a, []byte(`{"size": 16}`))
			d := issue(t, iss, n)
			clock.Advance(time.Minute + time.Second)
			return d
		}, "expired"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := verifyOK(t, tt.via+"/v1/verify?challenge=true", "application/cbor", tt.doc())
			cc := challengeCheck(t, got)
			if cc.OK || !strings.Contains(cc.Detail, tt.detail) {
				t.Fatalf("challenge check %+v, want a failure saying %q", cc, tt.detail)
			}
			if got.Verdict != StatusContraindicated {
				t.Fatalf("verdict %s", got.Verdict)
			}
		})
	}
}

// TestPostgresReplicasConcurrentConsume: one document sent at once to
// both replicas, many times, is accepted exactly once.
func TestPostgresReplicasConcurrentConsume(t *testing.T) {
	clock := newFakeClock()
	iss, root := devIssuer(t, clock)
	r := replicas(t, 2, Config{Roots: []Root{root}, NoAWSRoot: true, Clock: clock.Now})
	for round := range 3 {
		nonce, _ := newChallenge(t, r[round%2], nil)
		doc := issue(t, iss, nonce)
		const n = 16
		var wg sync.WaitGroup
		oks := make(chan bool, n)
		for i := range n {
			wg.Go(func() {
				vr := verifyOK(t, r[i%2]+"/v1/verify?challenge=true", "application/cbor", doc)
				oks <- challengeCheck(t, vr).OK
			})
		}
		wg.Wait()
		close(oks)
		accepted := 0
		for ok := range oks {
			if ok {
				accepted++
			}
		}
		if accepted != 1 {
			t.Fatalf("round %d: the challenge was accepted %d times out of %d, want exactly once", round, accepted, n)
		}
	}
}

// TestPostgresReplicasSessions: a Veraison session created on A is read
// and completed through B; a second submission through A is refused, and
// a delete through A is seen by B.
func TestPostgresReplicasSessions(t *testing.T) {
	clock := newFakeClock()
	iss, root := devIssuer(t, clock)
	r := replicas(t, 2, Config{Roots: []Root{root}, NoAWSRoot: true, Clock: clock.Now})
	a, b := r[0], r[1]
	acc := []string{"Accept", MediaTypeSession}

	res := do(t, http.MethodPost, a+"/challenge-response/v1/newSession?nonceSize=32", "", nil, acc...)
	if res.status != http.StatusCreated {
		t.Fatalf("newSession on A: %d %s", res.status, res.body)
	}
	loc := res.header.Get("Location")
	var created Session
	if err := json.Unmarshal(res.body, &created); err != nil {
		t.Fatal(err)
	}
	nonce, err := base64.StdEncoding.DecodeString(created.Nonce)
	if err != nil {
		t.Fatal(err)
	}
	sessURL := func(base string) string { return base + "/challenge-response/v1/" + loc }

	res = do(t, http.MethodGet, sessURL(b), "", nil, acc...)
	var seen Session
	if res.status != http.StatusOK || json.Unmarshal(res.body, &seen) != nil {
		t.Fatalf("GET on B: %d %s", res.status, res.body)
	}
	if diff := cmp.Diff(created, seen); diff != "" {
		t.Errorf("session on B differs from A's (-A +B):\n%s", diff)
	}

	doc := issue(t, iss, nonce)
	res = do(t, http.MethodPost, sessURL(b), MediaTypeNitroEvidence, doc, acc...)
	var done Session
	if res.status != http.StatusOK || json.Unmarshal(res.body, &done) != nil {
		t.Fatalf("evidence through B: %d %s", res.status, res.body)
	}
	if done.Status != "complete" || done.Result == nil {
		t.Fatalf("session after evidence: %+v", done)
	}
	if _, err := parseEAR(t, a, *done.Result, clock.Now()); err != nil {
		t.Fatalf("session token of B against A's JWKS: %v", err)
	}
	wantProblem(t, do(t, http.MethodPost, sessURL(a), MediaTypeNitroEvidence, doc, acc...), http.StatusConflict)

	res = do(t, http.MethodGet, sessURL(a), "", nil, acc...)
	var onA Session
	if res.status != http.StatusOK || json.Unmarshal(res.body, &onA) != nil {
		t.Fatalf("GET on A: %d %s", res.status, res.body)
	}
	if diff := cmp.Diff(done, onA); diff != "" {
		t.Errorf("completed session on A differs from B's answer (-B +A):\n%s", diff)
	}
	if res := do(t, http.MethodDelete, sessURL(a), "", nil); res.status != http.StatusNoContent {
		t.Fatalf("DELETE on A: %d %s", res.status, res.body)
	}
	wantProblem(t, do(t, http.MethodGet, sessURL(b), "", nil, acc...), http.StatusNotFound)
	wantProblem(t, do(t, http.MethodDelete, sessURL(b), "", nil), http.StatusNotFound)
}

// TestPostgresReplicasLimits: the per-client quota and the store's bound
// count across replicas.
func TestPostgresReplicasLimits(t *testing.T) {
	clock := newFakeClock()
	r := replicas(t, 2, Config{Clock: clock.Now, MaxChallengesPerClient: 3, MaxChallenges: 5, ClientRate: -1, ChallengeTTL: time.Minute})
	a, b := r[0], r[1]
	newChallenge(t, a, nil)
	newChallenge(t, b, nil)
	newChallenge(t, a, nil)
	res := do(t, http.MethodPost, b+"/v1/challenges", "", nil)
	p := wantProblem(t, res, http.StatusTooManyRequests)
	if !strings.Contains(p.Detail, "holds 3 challenges") || res.header.Get("Retry-After") != "60" {
		t.Fatalf("4th challenge of one client through B: %+v, Retry-After %q", p, res.header.Get("Retry-After"))
	}
	other := clientFrom(t, "127.0.0.2")
	for _, u := range []string{a, b} {
		if res := doWith(t, other, http.MethodPost, u+"/v1/challenges", "", nil); res.status != http.StatusCreated {
			t.Fatalf("another client: %d %s", res.status, res.body)
		}
	}
	p = wantProblem(t, doWith(t, clientFrom(t, "127.0.0.3"), http.MethodPost, a+"/v1/challenges", "", nil), http.StatusTooManyRequests)
	if !strings.Contains(p.Detail, "too many outstanding") {
		t.Fatalf("6th challenge in a store of 5: %+v", p)
	}
	// Once they have expired, the store makes room (a full store sweeps).
	clock.Advance(time.Minute)
	newChallenge(t, b, nil)
}

// TestPostgresStoreNeedsSigningKey: replicas with generated keys would
// publish different JWKS; New refuses.
func TestPostgresStoreNeedsSigningKey(t *testing.T) {
	st, err := OpenPostgresStore(context.Background(), testenv.Postgres(t, "verifier"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := New(Config{Store: st}); err == nil || !strings.Contains(err.Error(), "signing key") {
		t.Fatalf("New without a signing key: %v", err)
	}
	if _, err := OpenPostgresStore(context.Background(), "postgres://127.0.0.1:1/none?connect_timeout=1"); err == nil {
		t.Fatal("OpenPostgresStore of an unreachable server succeeded")
	}
	if _, err := OpenPostgresStore(context.Background(), "mysql://x"); err == nil {
		t.Fatal("OpenPostgresStore of a bad URL succeeded")
	}
}

// BenchmarkPostgresChallenge is POST /v1/challenges then a verification
// consuming it, through two replicas on one PostgreSQL.
func BenchmarkPostgresChallenge(b *testing.B) {
	clock := newFakeClock()
	iss, root := devIssuer(b, clock)
	r := replicas(b, 2, Config{Roots: []Root{root}, NoAWSRoot: true, Clock: clock.Now, ClientRate: -1, MaxChallengesPerClient: -1})
	for i := 0; b.Loop(); i++ {
		res := do(b, http.MethodPost, r[i%2]+"/v1/challenges", "", nil)
		var c Challenge
		if err := json.Unmarshal(res.body, &c); err != nil {
			b.Fatal(err)
		}
		n, _ := base64.StdEncoding.DecodeString(c.NonceBase64)
		res = do(b, http.MethodPost, r[(i+1)%2]+"/v1/verify?challenge=true", "application/cbor", issue(b, iss, n))
		if res.status != http.StatusOK {
			b.Fatal(res.status)
		}
	}
}
