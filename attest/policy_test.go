package attest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func issueVerified(t *testing.T, req IssueRequest) *Verified {
	t.Helper()
	iss := testIssuer(t)
	doc, err := iss.Issue(req)
	if err != nil {
		t.Fatal(err)
	}
	v, err := Verify(doc, time.Now(), VerifierConfig{NoAWSRoot: true, Roots: []*x509.Certificate{iss.Root()}})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestPolicy(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaDER, _ := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecDER, _ := x509.MarshalPKIXPublicKey(&ecKey.PublicKey)

	ts := time.Now().Add(-time.Minute).Truncate(time.Millisecond)
	prod := issueVerified(t, IssueRequest{PCRs: pcrs16(), Nonce: []byte("nonce-1"), UserData: []byte("ud"), PublicKey: rsaDER, Timestamp: ts})
	debug := issueVerified(t, IssueRequest{PCRs: map[int][]byte{0: make([]byte, 48), 1: make([]byte, 48), 2: make([]byte, 48)}, Timestamp: ts})
	now := ts.Add(time.Minute)

	tests := []struct {
		name   string
		v      *Verified
		p      Policy
		now    time.Time
		want   []error  // sentinels of the failures, in order
		checks []string // names of the checks reported
	}{
		{"zero policy", prod, Policy{}, now, nil, []string{"debug"}},
		{"everything matches", prod, Policy{
			PCRs: map[int][]byte{0: pcrs16()[0], 15: pcrs16()[15]}, Nonce: []byte("nonce-1"),
			UserData: ExpectUserData([]byte("ud")), PublicKey: RequireRSAPublicKey(2048), MaxAge: 5 * time.Minute,
		}, now, nil, []string{"debug", "pcr0", "pcr15", "nonce", "user_data", "public_key", "max_age"}},
		{"debug rejected", debug, Policy{}, now, []error{ErrDebug}, []string{"debug"}},
		{"debug allowed", debug, Policy{AllowDebug: true}, now, nil, []string{"debug"}},
		{"pcr mismatch", prod, Policy{PCRs: map[int][]byte{3: make([]byte, 48)}}, now, []error{ErrPCRMismatch}, []string{"debug", "pcr3"}},
		{"pcr absent", prod, Policy{PCRs: map[int][]byte{20: make([]byte, 48)}}, now, []error{ErrPCRMismatch}, []string{"debug", "pcr20"}},
		{"pcr wrong length", prod, Policy{PCRs: map[int][]byte{0: pcrs16()[0][:32]}}, now, []error{ErrPCRMismatch}, []string{"debug", "pcr0"}},
		{"nonce differs", prod, Policy{Nonce: []byte("nonce-2")}, now, []error{ErrNonce}, []string{"debug", "nonce"}},
		{"nonce prefix", prod, Policy{Nonce: []byte("nonce")}, now, []error{ErrNonce}, []string{"debug", "nonce"}},
		{"nonce absent", debug, Policy{AllowDebug: true, Nonce: []byte{}}, now, []error{ErrNonce}, []string{"debug", "nonce"}},
		{"user_data differs", prod, Policy{UserData: ExpectUserData([]byte("UD"))}, now, []error{ErrUserData}, []string{"debug", "user_data"}},
		{"user_data absent", debug, Policy{AllowDebug: true, UserData: ExpectUserData([]byte("ud"))}, now, []error{ErrUserData}, []string{"debug", "user_data"}},
		{"user_data expected absent", prod, Policy{UserData: ExpectUserData(nil)}, now, []error{ErrUserData}, []string{"debug", "user_data"}},
		{"public_key too small", prod, Policy{PublicKey: RequireRSAPublicKey(3072)}, now, []error{ErrPublicKey}, []string{"debug", "public_key"}},
		{"public_key absent", debug, Policy{AllowDebug: true, PublicKey: RequireRSAPublicKey(2048)}, now, []error{ErrPublicKey}, []string{"debug", "public_key"}},
		{"public_key exact", prod, Policy{PublicKey: ExpectPublicKey(rsaDER)}, now, nil, []string{"debug", "public_key"}},
		{"public_key not exact", prod, Policy{PublicKey: ExpectPublicKey(ecDER)}, now, []error{ErrPublicKey}, []string{"debug", "public_key"}},
		{"stale", prod, Policy{MaxAge: 30 * time.Second}, now, []error{ErrStale}, []string{"debug", "max_age"}},
		{"future beyond skew", prod, Policy{MaxAge: time.Hour}, ts.Add(-MaxClockSkew - time.Second), []error{ErrStale}, []string{"debug", "max_age"}},
		{"future within skew", prod, Policy{MaxAge: time.Hour}, ts.Add(-MaxClockSkew + time.Second), nil, []string{"debug", "max_age"}},
		{"every failure", debug, Policy{
			PCRs: map[int][]byte{0: pcrs16()[0], 1: pcrs16()[1], 2: make([]byte, 48)}, Nonce: []byte("n"),
			UserData: ExpectUserData([]byte("x")), PublicKey: RequireRSAPublicKey(2048), MaxAge: time.Second,
		}, now, []error{ErrDebug, ErrPCRMismatch, ErrPCRMismatch, ErrNonce, ErrUserData, ErrPublicKey, ErrStale},
			[]string{"debug", "pcr0", "pcr1", "pcr2", "nonce", "user_data", "public_key", "max_age"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.p.Report(tc.v, tc.now)
			var names []string
			for _, c := range r.Checks {
				names = append(names, c.Name)
				if c.OK != (c.Err == nil) || c.OK != (c.Detail == "") {
					t.Errorf("check %+v inconsistent", c)
				}
			}
			if diff := cmp.Diff(tc.checks, names); diff != "" {
				t.Errorf("checks (-want +got):\n%s", diff)
			}
			err := tc.p.Evaluate(tc.v, tc.now)
			if len(tc.want) == 0 {
				if err != nil || !r.OK {
					t.Fatalf("Evaluate = %v, report OK %v; want success", err, r.OK)
				}
				return
			}
			var pe *PolicyError
			if !errors.As(err, &pe) || r.OK {
				t.Fatalf("Evaluate = %v; want *PolicyError", err)
			}
			if len(pe.Failures) != len(tc.want) {
				t.Fatalf("failures %v, want %v", pe.Failures, tc.want)
			}
			for i, w := range tc.want {
				if !errors.Is(pe.Failures[i], w) || !errors.Is(err, w) {
					t.Errorf("failure %d = %v, want %v", i, pe.Failures[i], w)
				}
			}
		})
	}
}

func TestPCRMismatchDetail(t *testing.T) {
	v := issueVerified(t, IssueRequest{PCRs: pcrs16()})
	want := bytes.Repeat([]byte{0xee}, 48)
	err := Policy{PCRs: map[int][]byte{4: want, 30: want}}.Evaluate(v, time.Now())
	var pm *PCRMismatchError
	if !errors.As(err, &pm) {
		t.Fatalf("%v is not a PCRMismatchError", err)
	}
	if diff := cmp.Diff(&PCRMismatchError{Index: 4, Want: want, Got: pcrs16()[4]}, pm); diff != "" {
		t.Error(diff)
	}
	var pe *PolicyError
	errors.As(err, &pe)
	var absent *PCRMismatchError
	if len(pe.Failures) != 2 || !errors.As(pe.Failures[1], &absent) || absent.Got != nil || absent.Index != 30 {
		t.Errorf("second failure %v", pe.Failures)
	}
}

func TestPolicyNilVerified(t *testing.T) {
	if err := (Policy{}).Evaluate(nil, time.Now()); !errors.Is(err, ErrMalformed) {
		t.Errorf("Evaluate(nil) = %v", err)
	}
}

func TestVerifiedCopies(t *testing.T) {
	v := issueVerified(t, IssueRequest{PCRs: pcrs16(), UserData: []byte("abc")})
	d := v.Document()
	d.PCRs[0][0] ^= 0xff
	d.UserData[0] = 'X'
	d.CABundle[0][0] ^= 0xff
	if v.Document().PCRs[0][0] != 1 || v.Document().UserData[0] != 'a' || v.Document().CABundle[0][0] == d.CABundle[0][0] {
		t.Error("Document() is not a deep copy")
	}
	r := v.Raw()
	r[0] = 0
	if v.Raw()[0] != 0x84 {
		t.Error("Raw() is not a copy")
	}
	c := v.Claims()
	if c.PublicKey != nil || c.UserData == nil || *c.UserData != "616263" || len(c.PCRs) != 16 || c.PCRs["15"] == "" || len(c.Certificates) != 5 {
		t.Errorf("claims %+v", c)
	}
}
