package verifier

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/cloister/cloister/attest"
)

// TestRealDocumentsHTTP sends every real document of testdata/manifest.json
// through HTTP, in every accepted encoding, verified at its verify_at, and
// checks the verdict, the claims (against attest's own JSON view), the
// checks, and that the token verifies with only the JWKS fetched over HTTP.
func TestRealDocumentsHTTP(t *testing.T) {
	_, ts := testServer(t, Config{AllowTimeOverride: true})
	for _, e := range loadManifest(t) {
		t.Run(e.File, func(t *testing.T) {
			raw := readTestdata(t, e.File)
			at := e.VerifyAt.UTC().Format(time.RFC3339Nano)
			q := "?time=" + url.QueryEscape(at)
			env, _ := json.Marshal(VerifyRequest{Evidence: base64.StdEncoding.EncodeToString(raw), Time: at})
			envURL, _ := json.Marshal(VerifyRequest{Evidence: base64.RawURLEncoding.EncodeToString(raw), Time: at})
			encodings := []struct {
				name, ct, query string
				body            []byte
			}{
				{"cbor", "application/cbor", q, raw},
				{"tag18", MediaTypeNitroEvidence, q, append([]byte{0xd2}, raw...)},
				{"octet-stream", "application/octet-stream", q, raw},
				{"hex", "text/plain", q, []byte(hex.EncodeToString(raw) + "\n")},
				{"base64", "text/plain; charset=utf-8", q, []byte(base64.StdEncoding.EncodeToString(raw))},
				{"json", "application/json", "", env},
				{"json-b64url", "application/json", "", envURL},
			}
			var want VerifyResponse
			wantVerdict := map[string]string{
				"valid": StatusAffirming, "valid-debug": StatusContraindicated, "bad-signature": StatusContraindicated,
			}[e.Expected]
			if wantVerdict == "" {
				t.Fatalf("unknown expected_result %q", e.Expected)
			}
			for i, enc := range encodings {
				got := verifyOK(t, ts.URL+"/v1/verify"+enc.query, enc.ct, enc.body)
				if got.Verdict != wantVerdict {
					t.Fatalf("%s: verdict %s, want %s (checks %+v)", enc.name, got.Verdict, wantVerdict, got.Checks)
				}
				if got.VerifiedAt != at && !e.VerifyAt.Equal(mustTime(t, got.VerifiedAt)) {
					t.Errorf("%s: verified_at %s, want %s", enc.name, got.VerifiedAt, at)
				}
				ear, err := parseEAR(t, ts.URL, got.Token, time.Now())
				if err != nil {
					t.Fatalf("%s: token does not verify with the JWKS: %v", enc.name, err)
				}
				sub, ok := ear.Submods[SubmodName]
				if !ok || sub.Status != got.Verdict || sub.TrustVector != got.TrustVector || sub.PolicyID != "policy:cloister/default" {
					t.Fatalf("%s: token appraisal %+v does not match the response (%s, %+v)", enc.name, sub, got.Verdict, got.TrustVector)
				}
				if i == 0 {
					want = got
					continue
				}
				// Every encoding gives the same answer (token aside).
				got.Token, want.Token = "", ""
				if d := cmp.Diff(want, got); d != "" {
					t.Fatalf("%s differs from cbor (-cbor +%s):\n%s", enc.name, enc.name, d)
				}
			}

			switch e.Expected {
			case "bad-signature":
				if want.Claims != nil {
					t.Error("claims given for a document whose signature fails")
				}
				c, ok := checkNamed(want.Checks, "signature")
				if !ok || c.OK || !strings.Contains(c.Detail, "signature") {
					t.Errorf("checks %+v: want a failed signature check", want.Checks)
				}
				if want.TrustVector.InstanceIdentity != ClaimCryptoValidationFail {
					t.Errorf("trust vector %+v: want instance-identity 99", want.TrustVector)
				}
				return
			case "valid-debug":
				c, ok := checkNamed(want.Checks, "debug")
				if !ok || c.OK {
					t.Errorf("checks %+v: want a failed debug check", want.Checks)
				}
				if want.TrustVector.Configuration != ClaimUntrustworthy {
					t.Errorf("trust vector %+v: want configuration 96", want.TrustVector)
				}
			case "valid":
				if want.TrustVector != (TrustVector{InstanceIdentity: 2, Configuration: 2, Hardware: 2}) {
					t.Errorf("trust vector %+v", want.TrustVector)
				}
			}

			// The claims are exactly `cloister verify --json`'s object.
			v, err := attest.Verify(raw, e.VerifyAt, attest.VerifierConfig{})
			if err != nil {
				t.Fatal(err)
			}
			wc := v.Claims()
			rep := attest.Policy{}.Report(v, e.VerifyAt)
			wc.Policy = &rep
			if d := cmp.Diff(&wc, want.Claims, cmpopts.IgnoreFields(attest.Check{}, "Err")); d != "" {
				t.Errorf("claims differ from attest's (-attest +service):\n%s", d)
			}
			if want.Claims.ModuleID != e.ModuleID {
				t.Errorf("module_id %s, want %s", want.Claims.ModuleID, e.ModuleID)
			}
			for i, p := range e.Nonzero {
				if want.Claims.PCRs[i] != p {
					t.Errorf("PCR%s = %s, want %s", i, want.Claims.PCRs[i], p)
				}
			}

			// With debug allowed, a debug document is a warning.
			if e.Debug {
				pol, _ := json.Marshal(VerifyRequest{Evidence: base64.StdEncoding.EncodeToString(raw), Time: at,
					Policy: json.RawMessage(`{"allow_debug": true}`)})
				got := verifyOK(t, ts.URL+"/v1/verify", "application/json", pol)
				if got.Verdict != StatusWarning || got.TrustVector.Configuration != ClaimUnsafe {
					t.Errorf("allow_debug: verdict %s, vector %+v; want warning, configuration 32", got.Verdict, got.TrustVector)
				}
			}

			// Four hours later the leaf certificate has expired.
			late := e.VerifyAt.Add(4 * time.Hour).Format(time.RFC3339Nano)
			got := verifyOK(t, ts.URL+"/v1/verify?time="+url.QueryEscape(late), "application/cbor", raw)
			c, _ := checkNamed(got.Checks, "certificate_chain")
			if got.Verdict != StatusContraindicated || c.OK || !strings.Contains(c.Detail, "expired") || got.Claims != nil {
				t.Errorf("4h later: verdict %s, checks %+v; want contraindicated with an expired chain", got.Verdict, got.Checks)
			}
		})
	}
}

func mustTime(t *testing.T, s string) time.Time {
	t.Helper()
	tm, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatal(err)
	}
	return tm
}

// TestTokenClaims checks the EAR content of a token for a real document.
func TestTokenClaims(t *testing.T) {
	_, ts := testServer(t, Config{AllowTimeOverride: true, Build: "cloister test"})
	raw := readTestdata(t, "veracruz-go-1.cbor")
	got := verifyOK(t, ts.URL+"/v1/verify?time=2022-11-09T23:00:00Z", "application/cbor", raw)
	before := time.Now()
	ear, err := parseEAR(t, ts.URL, got.Token, before)
	if err != nil {
		t.Fatal(err)
	}
	nonce, _ := hex.DecodeString("c678c86135de539d183acff58886d98dfb9823041af9f934bf909ac0f8d96245")
	if ear.Nonce != base64.RawURLEncoding.EncodeToString(nonce) {
		t.Errorf("eat_nonce %q", ear.Nonce)
	}
	if ear.VerifierID != (VerifierID{Build: "cloister test", Developer: VerifierDeveloper}) {
		t.Errorf("verifier-id %+v", ear.VerifierID)
	}
	if ear.Issuer != ts.URL || ear.Expiry-ear.IssuedAt != int64(DefaultTokenTTL/time.Second) || ear.ID == "" {
		t.Errorf("iss %q iat %d exp %d jti %q", ear.Issuer, ear.IssuedAt, ear.Expiry, ear.ID)
	}
	sub := ear.Submods[SubmodName]
	ev := sub.Evidence
	if ev == nil || ev.ModuleID != "i-04fd167167daacf3b-enc01845e97d0b3eb4e" || len(ev.PCRs) != 16 ||
		ev.UserData == nil || *ev.UserData != "7c37108079b3e8a36d8a7970de1d6d4ff1461e0e35d9557c4d789df5e0576620" ||
		ev.PublicKey != nil || ev.Digest != "SHA384" {
		t.Errorf("annotated evidence %+v", ev)
	}
	if sub.PolicyClaims != nil {
		t.Errorf("policy claims %+v for an affirming appraisal", sub.PolicyClaims)
	}
	// A failing appraisal names its failed checks and problem in the token.
	bad := verifyOK(t, ts.URL+"/v1/verify?time=2022-11-09T23:00:00Z&nonce=00", "application/cbor", raw)
	badEAR, err := parseEAR(t, ts.URL, bad.Token, before)
	if err != nil {
		t.Fatal(err)
	}
	pc := badEAR.Submods[SubmodName].PolicyClaims
	if pc == nil || len(pc.Failed) != 1 || pc.Failed[0].Name != "nonce" || !strings.Contains(pc.Problem, "nonce") {
		t.Errorf("policy claims of a failed nonce check: %+v", pc)
	}
	// The JWS header names the key and algorithm.
	hdr, _ := base64.RawURLEncoding.DecodeString(strings.Split(got.Token, ".")[0])
	var h map[string]string
	if err := json.Unmarshal(hdr, &h); err != nil || h["alg"] != "ES256" || h["kid"] == "" || h["typ"] != "JWT" {
		t.Errorf("JWS header %s", hdr)
	}
	// A token altered in one byte of its payload fails.
	parts := strings.Split(got.Token, ".")
	p, _ := base64.RawURLEncoding.DecodeString(parts[1])
	p = []byte(strings.Replace(string(p), `"affirming"`, `"warning"`, 1))
	forged := parts[0] + "." + base64.RawURLEncoding.EncodeToString(p) + "." + parts[2]
	if _, err := parseEAR(t, ts.URL, forged, before); err == nil {
		t.Error("forged token verified")
	}
}

func TestTimeOverrideDisabled(t *testing.T) {
	_, ts := testServer(t, Config{})
	raw := readTestdata(t, "veracruz-go-1.cbor")
	p := wantProblem(t, do(t, http.MethodPost, ts.URL+"/v1/verify?time=2022-11-09T23:00:00Z", "application/cbor", raw), http.StatusBadRequest)
	if !strings.Contains(p.Detail, "--allow-time-override") {
		t.Errorf("detail %q does not say how to enable it", p.Detail)
	}
	env, _ := json.Marshal(VerifyRequest{Evidence: hex.EncodeToString(raw), Time: "2022-11-09T23:00:00Z"})
	wantProblem(t, do(t, http.MethodPost, ts.URL+"/v1/verify", "application/json", env), http.StatusBadRequest)
	// Without a time, the real clock applies: the 2022 document has expired.
	got := verifyOK(t, ts.URL+"/v1/verify", "application/cbor", raw)
	if got.Verdict != StatusContraindicated {
		t.Errorf("verdict %s for an expired document at the current time", got.Verdict)
	}
}
