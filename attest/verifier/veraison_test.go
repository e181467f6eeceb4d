package verifier

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

func newSession(t *testing.T, baseURL, query string) (string, Session) {
	t.Helper()
	r := do(t, http.MethodPost, baseURL+"/challenge-response/v1/newSession"+query, "", nil, "Accept", MediaTypeSession)
	if r.status != http.StatusCreated {
		t.Fatalf("newSession%s: %d %s", query, r.status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != MediaTypeSession {
		t.Fatalf("Content-Type %q", ct)
	}
	loc := r.header.Get("Location")
	if !strings.HasPrefix(loc, "session/") {
		t.Fatalf("Location %q", loc)
	}
	var s Session
	if err := json.Unmarshal(r.body, &s); err != nil {
		t.Fatal(err)
	}
	return baseURL + "/challenge-response/v1/" + loc, s
}

// TestVeraisonSessionFlow runs Veraison's challenge-response flow: new
// session, evidence carrying the session nonce, the EAR result verified
// with the JWKS, then GET, a refused second submission, DELETE.
func TestVeraisonSessionFlow(t *testing.T) {
	clock := newFakeClock()
	iss, root := devIssuer(t, clock)
	_, ts := testServer(t, Config{Roots: []Root{root}, Clock: clock.Now})

	url, s := newSession(t, ts.URL, "?nonceSize=48")
	nonce, err := base64.StdEncoding.DecodeString(s.Nonce)
	if err != nil || len(nonce) != 48 {
		t.Fatalf("session nonce %q: %v", s.Nonce, err)
	}
	if s.Status != "waiting" || s.Expiry != clock.Now().Add(DefaultSessionTTL).Format(time.RFC3339Nano) ||
		len(s.Accept) == 0 || s.Accept[0] != MediaTypeNitroEvidence || s.Result != nil {
		t.Fatalf("new session %+v", s)
	}
	get := func() Session {
		r := do(t, http.MethodGet, url, "", nil, "Accept", MediaTypeSession)
		if r.status != http.StatusOK {
			t.Fatalf("GET session: %d %s", r.status, r.body)
		}
		var s Session
		if err := json.Unmarshal(r.body, &s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	if g := get(); g.Status != "waiting" || g.Nonce != s.Nonce {
		t.Fatalf("GET %+v", g)
	}

	doc := issue(t, iss, nonce)
	// Wrong Accept: 406; wrong evidence type: 415 with Accept listing the types.
	wantProblem(t, do(t, http.MethodPost, url, MediaTypeNitroEvidence, doc, "Accept", "application/json"), http.StatusNotAcceptable)
	r := do(t, http.MethodPost, url, "application/json", doc, "Accept", MediaTypeSession)
	wantProblem(t, r, http.StatusUnsupportedMediaType)
	if !strings.Contains(r.header.Get("Accept"), MediaTypeNitroEvidence) {
		t.Errorf("415 Accept header %q", r.header.Get("Accept"))
	}
	// Unparseable evidence: 400, and the session still waits.
	wantProblem(t, do(t, http.MethodPost, url, MediaTypeNitroEvidence, []byte{0x84, 0x01}, "Accept", MediaTypeSession), http.StatusBadRequest)

	r = do(t, http.MethodPost, url, MediaTypeNitroEvidence, doc, "Accept", MediaTypeSession)
	if r.status != http.StatusOK {
		t.Fatalf("POST evidence: %d %s", r.status, r.body)
	}
	var done Session
	if err := json.Unmarshal(r.body, &done); err != nil {
		t.Fatal(err)
	}
	if done.Status != "complete" || done.Result == nil || done.Evidence == nil ||
		done.Evidence.Type != MediaTypeNitroEvidence || done.Evidence.Value != base64.StdEncoding.EncodeToString(doc) {
		t.Fatalf("completed session %+v", done)
	}
	ear, err := parseEAR(t, ts.URL, *done.Result, clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	if ear.Nonce != base64.RawURLEncoding.EncodeToString(nonce) {
		t.Errorf("eat_nonce %q, want the session nonce", ear.Nonce)
	}
	if st := ear.Submods[SubmodName].Status; st != StatusWarning { // dev root: hardware 32
		t.Errorf("status %s", st)
	}
	if g := get(); g.Status != "complete" || g.Result == nil || *g.Result != *done.Result {
		t.Errorf("GET after completion %+v", g)
	}
	wantProblem(t, do(t, http.MethodPost, url, MediaTypeNitroEvidence, doc, "Accept", MediaTypeSession), http.StatusConflict)

	if r := do(t, http.MethodDelete, url, "", nil); r.status != http.StatusNoContent {
		t.Fatalf("DELETE: %d %s", r.status, r.body)
	}
	wantProblem(t, do(t, http.MethodGet, url, "", nil, "Accept", MediaTypeSession), http.StatusNotFound)
	wantProblem(t, do(t, http.MethodDelete, url, "", nil), http.StatusNotFound)
}

func TestVeraisonSessionWrongNonceAndExpiry(t *testing.T) {
	clock := newFakeClock()
	iss, root := devIssuer(t, clock)
	_, ts := testServer(t, Config{Roots: []Root{root}, Clock: clock.Now})
	mine := []byte("0123456789abcdef")
	url, s := newSession(t, ts.URL, "?nonce="+base64.RawURLEncoding.EncodeToString(mine))
	if got, _ := base64.StdEncoding.DecodeString(s.Nonce); !bytes.Equal(got, mine) {
		t.Fatalf("session nonce %q, want the supplied one", s.Nonce)
	}
	r := do(t, http.MethodPost, url, MediaTypeNitroEvidence, issue(t, iss, []byte("some other nonce")), "Accept", MediaTypeSession)
	var done Session
	if r.status != http.StatusOK || json.Unmarshal(r.body, &done) != nil || done.Result == nil {
		t.Fatalf("%d %s", r.status, r.body)
	}
	ear, err := parseEAR(t, ts.URL, *done.Result, clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	sub := ear.Submods[SubmodName]
	if sub.Status != StatusContraindicated || sub.TrustVector.InstanceIdentity != ClaimUntrustworthy {
		t.Fatalf("wrong nonce: %+v", sub)
	}

	url, _ = newSession(t, ts.URL, "")
	clock.Advance(DefaultSessionTTL + time.Second)
	wantProblem(t, do(t, http.MethodPost, url, MediaTypeNitroEvidence, issue(t, iss, nil), "Accept", MediaTypeSession), http.StatusNotFound)
}

func TestVeraisonErrors(t *testing.T) {
	_, ts := testServer(t, Config{MaxSessions: 2})
	ns := ts.URL + "/challenge-response/v1/newSession"
	acc := []string{"Accept", MediaTypeSession}
	wantProblem(t, do(t, http.MethodPost, ns, "", nil), http.StatusNotAcceptable)
	wantProblem(t, do(t, http.MethodPost, ns, "", nil, "Accept", "application/json"), http.StatusNotAcceptable)
	for _, q := range []string{"?nonce=AAAAAAAAAAA&nonceSize=8", "?nonce=AAAA", "?nonce=!!", "?nonceSize=7", "?nonceSize=65", "?nonceSize=x", "?foo=1", "?policy=nope"} {
		wantProblem(t, do(t, http.MethodPost, ns+q, "", nil, acc...), http.StatusBadRequest)
	}
	wantProblem(t, do(t, http.MethodGet, ts.URL+"/challenge-response/v1/session/not-a-uuid", "", nil, acc...), http.StatusBadRequest)
	wantProblem(t, do(t, http.MethodGet, ts.URL+"/challenge-response/v1/session/5e7e1045-2677-45c0-9d2d-1cc44fa68b74", "", nil, acc...), http.StatusNotFound)
	newSession(t, ts.URL, "")
	url, _ := newSession(t, ts.URL, "")
	wantProblem(t, do(t, http.MethodPost, ns, "", nil, acc...), http.StatusTooManyRequests)
	wantProblem(t, do(t, http.MethodPost, url, MediaTypeNitroEvidence, nil, acc...), http.StatusBadRequest)
	wantProblem(t, do(t, http.MethodPut, url, "", nil, acc...), http.StatusMethodNotAllowed)
}

func TestVeraisonDiscovery(t *testing.T) {
	_, ts := testServer(t, Config{})
	r := do(t, http.MethodGet, ts.URL+"/.well-known/veraison/verification", "", nil, "Accept", MediaTypeDiscovery)
	if r.status != http.StatusOK || r.header.Get("Content-Type") != MediaTypeDiscovery || r.header.Get("Cache-Control") != "max-age=60" || r.header.Get("Expires") == "" {
		t.Fatalf("%d %v %s", r.status, r.header, r.body)
	}
	var d Discovery
	if err := json.Unmarshal(r.body, &d); err != nil {
		t.Fatal(err)
	}
	var ks JWKS
	if err := json.Unmarshal(do(t, http.MethodGet, ts.URL+"/.well-known/jwks.json", "", nil).body, &ks); err != nil || len(ks.Keys) != 1 {
		t.Fatal(err, ks)
	}
	if d.EARVerificationKey != ks.Keys[0] || d.ServiceState != "READY" || d.AttestationSchemes[0] != AttestationScheme ||
		d.APIEndpoints["newChallengeResponseSession"] != "/challenge-response/v1/newSession" || len(d.MediaTypes) == 0 {
		t.Fatalf("discovery %+v", d)
	}
	if ct := do(t, http.MethodGet, ts.URL+"/.well-known/veraison/verification", "", nil).header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("plain Accept: Content-Type %q", ct)
	}
}
