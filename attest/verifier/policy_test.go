package verifier

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParsePolicyFile(t *testing.T) {
	yamlFile := `
default: prod
policies:
  prod:
    pcrs:
      0: "22f9e1c949208da55eb01b9b9fc88f87454f77ba133f0d82320b509621c92482152a99d0a12335b97178c02d6f977d01"
    max_age: 5m
    challenge: true
    user_data: {sha256: "` + strings.Repeat("ab", 32) + `"}
    public_key: {absent: true}
    roots: [aws]
  dev:
    allow_debug: true
    max_age: 90
`
	jsonFile := `{"default": "prod", "policies": {
  "prod": {"pcrs": {"0": "22f9e1c949208da55eb01b9b9fc88f87454f77ba133f0d82320b509621c92482152a99d0a12335b97178c02d6f977d01"},
           "max_age": "5m", "challenge": true, "user_data": {"sha256": "` + strings.Repeat("ab", 32) + `"},
           "public_key": {"absent": true}, "roots": ["aws"]},
  "dev": {"allow_debug": true, "max_age": 90}}}`
	want := &PolicyFile{Default: "prod", Policies: map[string]PolicySpec{
		"prod": {
			PCRs:      map[string]string{"0": "22f9e1c949208da55eb01b9b9fc88f87454f77ba133f0d82320b509621c92482152a99d0a12335b97178c02d6f977d01"},
			MaxAge:    Duration(5 * time.Minute),
			Challenge: true,
			UserData:  &Expectation{SHA256: strings.Repeat("ab", 32)},
			PublicKey: &Expectation{Absent: true},
			Roots:     []string{"aws"},
		},
		"dev": {AllowDebug: true, MaxAge: Duration(90 * time.Second)},
	}}
	for name, src := range map[string]string{"yaml": yamlFile, "json": jsonFile} {
		got, err := ParsePolicyFile([]byte(src))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if d := cmp.Diff(want, got); d != "" {
			t.Errorf("%s (-want +got):\n%s", name, d)
		}
		if _, err := New(Config{Policies: got}); err != nil {
			t.Errorf("%s: New: %v", name, err)
		}
	}
}

// TestPolicyValidation: New rejects every invalid policy with an error
// naming the policy and the field.
func TestPolicyValidation(t *testing.T) {
	hex48 := strings.Repeat("00", 48)
	tests := []struct {
		name, file, want string
	}{
		{"no-policies", "default: x\n", "no policies"},
		{"unknown-field", "policies:\n  p:\n    pcr: {}\n", `line 3: field pcr not found`},
		{"empty", "", "empty"},
		{"yaml-syntax", "policies: [\n", "policy file"},
		{"pcr-index", "policies:\n  p:\n    pcrs: {32: " + hex48 + "}\n", `policy "p": pcrs: index "32"`},
		{"pcr-index-text", "policies:\n  p:\n    pcrs: {x: " + hex48 + "}\n", `index "x"`},
		{"pcr-hex", "policies:\n  p:\n    pcrs: {0: zz}\n", "PCR0: want 32, 48 or 64 bytes of hex"},
		{"pcr-size", "policies:\n  p:\n    pcrs: {0: '0011'}\n", "PCR0"},
		{"max-age-negative", "policies:\n  p:\n    max_age: -1m\n", "max_age"},
		{"max-age-syntax", "policies:\n  p:\n    max_age: soon\n", "duration"},
		{"nonce-and-challenge", "policies:\n  p:\n    nonce: '00112233'\n    challenge: true\n", "exclusive"},
		{"nonce-hex", "policies:\n  p:\n    nonce: xyz\n", "nonce"},
		{"expectation-two", "policies:\n  p:\n    user_data: {equals: '00', absent: true}\n", "user_data: set exactly one"},
		{"expectation-none", "policies:\n  p:\n    public_key: {}\n", "public_key: set exactly one"},
		{"expectation-sha-size", "policies:\n  p:\n    user_data: {sha256: '0011'}\n", "sha256: want 32 bytes"},
		{"unknown-root", "policies:\n  p:\n    roots: [dev]\n", `roots: "dev" is not a configured root`},
		{"default-missing", "default: q\npolicies:\n  p: {}\n", `default policy "q" is not defined`},
		{"bad-name", "policies:\n  'a b': {}\n", "name must be"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pf, err := ParsePolicyFile([]byte(tt.file))
			if err == nil {
				_, err = New(Config{Policies: pf})
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

// TestInlinePolicies applies inline and named policies to a real document.
func TestInlinePolicies(t *testing.T) {
	clock := newFakeClock()
	_, root := devIssuer(t, clock)
	pf, err := ParsePolicyFile([]byte(`
policies:
  veracruz:
    pcrs: {0: "22f9e1c949208da55eb01b9b9fc88f87454f77ba133f0d82320b509621c92482152a99d0a12335b97178c02d6f977d01"}
    user_data: {equals: "7c37108079b3e8a36d8a7970de1d6d4ff1461e0e35d9557c4d789df5e0576620"}
`))
	if err != nil {
		t.Fatal(err)
	}
	_, ts := testServer(t, Config{AllowTimeOverride: true, Policies: pf, Roots: []Root{root}})
	raw := readTestdata(t, "veracruz-go-1.cbor")
	userData, _ := hex.DecodeString("7c37108079b3e8a36d8a7970de1d6d4ff1461e0e35d9557c4d789df5e0576620")
	sum := sha256.Sum256(userData)
	const at = "2022-11-09T23:00:00Z"
	tests := []struct {
		name    string
		policy  string // JSON
		nonce   string
		verdict string
		failed  []string
		vector  TrustVector
	}{
		{"named", `"veracruz"`, "", StatusAffirming, nil, TrustVector{InstanceIdentity: 2, Configuration: 2, Executables: 2, Hardware: 2}},
		{"pcr-match", `{"pcrs": {"0": "22f9e1c949208da55eb01b9b9fc88f87454f77ba133f0d82320b509621c92482152a99d0a12335b97178c02d6f977d01"}}`,
			"", StatusAffirming, nil, TrustVector{InstanceIdentity: 2, Configuration: 2, Executables: 2, Hardware: 2}},
		{"pcr-mismatch", `{"pcrs": {"0": "` + strings.Repeat("11", 48) + `", "8": "` + strings.Repeat("00", 48) + `"}}`,
			"", StatusContraindicated, []string{"pcr0"}, TrustVector{InstanceIdentity: 2, Configuration: 2, Executables: 96, Hardware: 2}},
		{"pcr-absent", `{"pcrs": {"20": "` + strings.Repeat("00", 48) + `"}}`,
			"", StatusContraindicated, []string{"pcr20"}, TrustVector{InstanceIdentity: 2, Configuration: 2, Executables: 96, Hardware: 2}},
		{"user-data-sha256", `{"user_data": {"sha256": "` + hex.EncodeToString(sum[:]) + `"}}`, "", StatusAffirming, nil,
			TrustVector{InstanceIdentity: 2, Configuration: 2, Hardware: 2}},
		{"user-data-wrong", `{"user_data": {"equals": "00"}}`, "", StatusContraindicated, []string{"user_data"},
			TrustVector{InstanceIdentity: 96, Configuration: 2, Hardware: 2}},
		{"public-key-absent", `{"public_key": {"absent": true}}`, "", StatusAffirming, nil, TrustVector{InstanceIdentity: 2, Configuration: 2, Hardware: 2}},
		{"nonce-ok", `{}`, "c678c86135de539d183acff58886d98dfb9823041af9f934bf909ac0f8d96245", StatusAffirming, nil,
			TrustVector{InstanceIdentity: 2, Configuration: 2, Hardware: 2}},
		{"nonce-wrong", `{}`, "c678", StatusContraindicated, []string{"nonce"}, TrustVector{InstanceIdentity: 96, Configuration: 2, Hardware: 2}},
		{"max-age", `{"max_age": "1m"}`, "", StatusContraindicated, []string{"max_age"}, TrustVector{InstanceIdentity: 96, Configuration: 2, Hardware: 2}},
		{"max-age-ok", `{"max_age": 600}`, "", StatusAffirming, nil, TrustVector{InstanceIdentity: 2, Configuration: 2, Hardware: 2}},
		{"roots-aws", `{"roots": ["aws"]}`, "", StatusAffirming, nil, TrustVector{InstanceIdentity: 2, Configuration: 2, Hardware: 2}},
		{"roots-fingerprint", `{"roots": ["sha256:641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"]}`, "", StatusAffirming, nil,
			TrustVector{InstanceIdentity: 2, Configuration: 2, Hardware: 2}},
		{"roots-dev-only", `{"roots": ["dev"]}`, "", StatusContraindicated, []string{"certificate_chain"}, TrustVector{InstanceIdentity: 97, Hardware: 97}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body, _ := json.Marshal(VerifyRequest{Evidence: hex.EncodeToString(raw), Policy: json.RawMessage(tt.policy), Nonce: tt.nonce, Time: at})
			got := verifyOK(t, ts.URL+"/v1/verify", "application/json", body)
			var failed []string
			for _, c := range got.Checks {
				if !c.OK {
					failed = append(failed, c.Name)
				}
			}
			if got.Verdict != tt.verdict || !cmp.Equal(failed, tt.failed) || got.TrustVector != tt.vector {
				t.Fatalf("verdict %s failed %v vector %+v; want %s %v %+v (checks %+v)", got.Verdict, failed, got.TrustVector, tt.verdict, tt.failed, tt.vector, got.Checks)
			}
			if strings.HasPrefix(tt.policy, "{") && !strings.HasPrefix(got.Policy, "policy:cloister/inline-") {
				t.Errorf("inline policy id %q", got.Policy)
			}
		})
	}

	for name, pol := range map[string]string{
		"unknown-name":  `"nope"`,
		"bad-inline":    `{"pcrs": {"0": "zz"}}`,
		"unknown-field": `{"pcr": {}}`,
		"unknown-root":  `{"roots": ["elsewhere"]}`,
		"wrong-type":    `[1]`,
	} {
		t.Run(name, func(t *testing.T) {
			body, _ := json.Marshal(VerifyRequest{Evidence: hex.EncodeToString(raw), Policy: json.RawMessage(pol), Time: at})
			wantProblem(t, do(t, http.MethodPost, ts.URL+"/v1/verify", "application/json", body), http.StatusBadRequest)
		})
	}
	// No default policy: a request must name one.
	body, _ := json.Marshal(VerifyRequest{Evidence: hex.EncodeToString(raw), Time: at})
	p := wantProblem(t, do(t, http.MethodPost, ts.URL+"/v1/verify", "application/json", body), http.StatusBadRequest)
	if !strings.Contains(p.Detail, "veracruz") {
		t.Errorf("detail %q does not list the policies", p.Detail)
	}
}

func TestInlinePolicyID(t *testing.T) {
	a := inlinePolicyID(PolicySpec{AllowDebug: true, Roots: []string{"b", "a"}})
	b := inlinePolicyID(PolicySpec{AllowDebug: true, Roots: []string{"a", "b"}})
	c := inlinePolicyID(PolicySpec{Roots: []string{"a", "b"}})
	if a != b || a == c {
		t.Fatalf("ids %s %s %s", a, b, c)
	}
}
