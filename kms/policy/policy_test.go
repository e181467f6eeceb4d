package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const (
	acct  = "111122223333"
	role  = "arn:aws:iam::111122223333:role/data-processing"
	keyID = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
	pcr0  = "aabbccddeeff00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff001122334455"
)

// enclavePolicy is the AWS-documented enclave policy (reference §12.4) plus a
// deny hardening statement.
var enclavePolicy = `{
  "Version": "2012-10-17",
  "Statement": [
    {"Sid": "Admin", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
     "Action": ["kms:Create*", "kms:Describe*", "kms:PutKeyPolicy", "kms:GetKeyPolicy", "kms:Encrypt"], "Resource": "*"},
    {"Sid": "Enable enclave data processing", "Effect": "Allow",
     "Principal": {"AWS": "arn:aws:iam::111122223333:role/data-processing"},
     "Action": ["kms:Decrypt", "kms:DeriveSharedSecret", "kms:GenerateDataKey", "kms:GenerateDataKeyPair", "kms:GenerateRandom"],
     "Resource": "*",
     "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": "` + strings.ToUpper(pcr0) + `"}}},
    {"Sid": "Deny wrong context", "Effect": "Deny", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*",
     "Condition": {"StringNotEquals": {"kms:EncryptionContext:purpose": "data"}}}
  ]
}`

func mustParse(t *testing.T, doc string) *Policy {
	t.Helper()
	p, err := Parse([]byte(doc))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return p
}

func hexBytes(s string) []byte {
	b := make([]byte, len(s)/2)
	for i := range b {
		var v byte
		for _, c := range s[2*i : 2*i+2] {
			v <<= 4
			switch {
			case c >= '0' && c <= '9':
				v |= byte(c - '0')
			default:
				v |= byte(c-'a') + 10
			}
		}
		b[i] = v
	}
	return b
}

func TestEvaluate(t *testing.T) {
	p := mustParse(t, enclavePolicy)
	goodPCRs := map[int][]byte{0: hexBytes(pcr0), 1: make([]byte, 48)}
	badPCRs := map[int][]byte{0: make([]byte, 48)}
	tests := []struct {
		name    string
		action  string
		princ   string
		pcrs    map[int][]byte
		ec      map[string]string
		want    Decision
		wantWhy string
	}{
		{"attested decrypt", "kms:Decrypt", role, goodPCRs, map[string]string{"purpose": "data"}, Allowed, "Enable enclave"},
		{"attested data key", "kms:GenerateDataKey", role, goodPCRs, nil, Allowed, "Enable enclave"},
		{"no attestation", "kms:Decrypt", role, nil, map[string]string{"purpose": "data"}, ImplicitDeny, "no statement"},
		{"wrong PCR0", "kms:Decrypt", role, badPCRs, map[string]string{"purpose": "data"}, ImplicitDeny, "no statement"},
		{"wrong context wins", "kms:Decrypt", role, goodPCRs, map[string]string{"purpose": "other"}, ExplicitDeny, "Deny wrong context"},
		{"missing context denies", "kms:Decrypt", role, goodPCRs, nil, ExplicitDeny, "Deny wrong context"},
		{"other principal", "kms:GenerateDataKey", "arn:aws:iam::999999999999:role/x", goodPCRs, nil, ImplicitDeny, "no statement"},
		{"session of role", "kms:GenerateRandom", "arn:aws:sts::111122223333:assumed-role/data-processing/i-0abc", goodPCRs, nil, Allowed, "Enable enclave"},
		{"admin wildcard action", "kms:CreateAlias", "arn:aws:iam::111122223333:user/alice", nil, nil, Allowed, "Admin"},
		{"admin not decrypt", "kms:Decrypt", "arn:aws:iam::111122223333:user/alice", nil, map[string]string{"purpose": "data"}, ImplicitDeny, "no statement"},
		{"action case-insensitive", "KMS:encrypt", "arn:aws:iam::111122223333:user/alice", nil, nil, Allowed, "Admin"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := Request{PrincipalARN: tc.princ, Action: tc.action, Resource: keyID}
			if tc.pcrs != nil {
				req.SetAttestation(tc.pcrs)
			}
			req.SetEncryptionContext(tc.ec)
			ex := p.Explain(req)
			if ex.Decision != tc.want || !strings.Contains(ex.Reason, tc.wantWhy) {
				t.Fatalf("decision %s (%s), want %s containing %q", ex.Decision, ex.Reason, tc.want, tc.wantWhy)
			}
			if got := p.Evaluate(req); got != tc.want {
				t.Fatalf("Evaluate = %s, Explain = %s", got, tc.want)
			}
		})
	}
}

func TestExplainDetail(t *testing.T) {
	p := mustParse(t, enclavePolicy)
	req := Request{PrincipalARN: role, Action: "kms:Decrypt", Resource: keyID}
	req.SetAttestation(map[int][]byte{0: make([]byte, 48)})
	ex := p.Explain(req)
	st := ex.Statements[1]
	want := []ConditionExplanation{{
		Operator: "StringEqualsIgnoreCase", Key: KeyImageSha384, Values: []string{strings.ToUpper(pcr0)},
		Present: true, RequestValues: []string{strings.Repeat("0", 96)}, Matched: false,
	}}
	if diff := cmp.Diff(want, st.Conditions); diff != "" {
		t.Fatalf("conditions (-want +got):\n%s", diff)
	}
	if !st.Principal.Matched || !st.Action.Matched || !st.Resource.Matched || st.Applies {
		t.Fatalf("statement 1: %+v", st)
	}
	if _, err := json.Marshal(ex); err != nil {
		t.Fatal(err)
	}
}

func TestConditionSemantics(t *testing.T) {
	tests := []struct {
		op, key string
		vals    string // JSON
		ctx     map[string][]string
		want    bool
	}{
		{"StringEquals", "kms:CallerAccount", `"111122223333"`, nil, true},
		{"StringEquals", "kms:EncryptionContext:a", `"x"`, nil, false},
		{"StringNotEquals", "kms:EncryptionContext:a", `"x"`, nil, true},
		{"StringEqualsIfExists", "kms:EncryptionContext:a", `"x"`, nil, true},
		{"StringEqualsIfExists", "kms:EncryptionContext:a", `"x"`, map[string][]string{"kms:EncryptionContext:a": {"y"}}, false},
		{"StringLike", "kms:EncryptionContext:a", `["ab*", "zz"]`, map[string][]string{"kms:encryptioncontext:A": {"abc"}}, true},
		{"StringNotLike", "kms:EncryptionContext:a", `"ab*"`, map[string][]string{"kms:EncryptionContext:a": {"abc"}}, false},
		{"StringEqualsIgnoreCase", "aws:PrincipalArn", `"ARN:AWS:IAM::111122223333:ROLE/DATA-PROCESSING"`, nil, true},
		{"ArnLike", "aws:PrincipalArn", `"arn:aws:iam::*:role/data-*"`, nil, true},
		{"ForAllValues:StringEquals", "kms:EncryptionContextKeys", `["a", "b"]`, map[string][]string{KeyEncryptionContextKeys: {"a"}}, true},
		{"ForAllValues:StringEquals", "kms:EncryptionContextKeys", `["a", "b"]`, map[string][]string{KeyEncryptionContextKeys: {"a", "c"}}, false},
		{"ForAllValues:StringEquals", "kms:EncryptionContextKeys", `["a"]`, nil, true},
		{"ForAnyValue:StringEquals", "kms:EncryptionContextKeys", `["a"]`, nil, false},
		{"ForAnyValue:StringEquals", "kms:EncryptionContextKeys", `["c"]`, map[string][]string{KeyEncryptionContextKeys: {"a", "c"}}, true},
		{"ForAnyValue:StringNotEquals", "kms:EncryptionContextKeys", `["a"]`, map[string][]string{KeyEncryptionContextKeys: {"a"}}, false},
		{"Null", "kms:RecipientAttestation:PCR0", `"true"`, nil, true},
		{"Null", "kms:RecipientAttestation:PCR0", `"false"`, nil, false},
		{"Bool", "aws:SecureTransport", `true`, map[string][]string{"aws:SecureTransport": {"true"}}, true},
		{"Bool", "aws:SecureTransport", `"true"`, nil, false},
	}
	for _, tc := range tests {
		doc := `{"Statement":{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"` + tc.op + `":{"` + tc.key + `":` + tc.vals + `}}}}`
		p := mustParse(t, doc)
		got := p.Evaluate(Request{PrincipalARN: role, Action: "kms:Decrypt", Resource: keyID, Context: tc.ctx}) == Allowed
		if got != tc.want {
			t.Errorf("%s %s %s with %v: applies=%v, want %v", tc.op, tc.key, tc.vals, tc.ctx, got, tc.want)
		}
	}
}

func TestParseRejects(t *testing.T) {
	stmt := func(s string) string { return `{"Version":"2012-10-17","Statement":[` + s + `]}` }
	ok := `{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"}`
	tests := []struct{ name, doc, want string }{
		{"not json", `{`, "unexpected end of input"},
		{"unknown top field", `{"Statement":[` + ok + `],"Foo":1}`, `unknown member "Foo"`},
		{"duplicate Effect", stmt(`{"Effect":"Deny","Principal":"*","Action":"kms:*","Resource":"*","Effect":"Allow"}`), `member "Effect" appears twice at Statement[0].Effect`},
		{"escaped duplicate Effect", stmt(`{"Effect":"Deny","Principal":"*","Action":"kms:*","Resource":"*","\u0045ffect":"Allow"}`), `member "Effect" appears twice`},
		{"Effect and effect", stmt(`{"Effect":"Deny","Principal":"*","Action":"kms:*","Resource":"*","effect":"Allow"}`), `members "Effect" and "effect" differ only in case`},
		{"miscased effect alone", stmt(`{"effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"}`), `member "effect" must be spelled "Effect"`},
		{"miscased Statement", `{"Version":"2012-10-17","statement":[` + ok + `]}`, `member "statement" must be spelled "Statement"`},
		{"duplicate Statement", `{"Statement":[` + ok + `],"Statement":[` + ok + `]}`, `member "Statement" appears twice`},
		{"duplicate principal type", stmt(`{"Effect":"Allow","Principal":{"AWS":"111122223333","AWS":"*"},"Action":"kms:*","Resource":"*"}`), `member "AWS" appears twice at Statement[0].Principal.AWS`},
		{"duplicate condition operator", stmt(`{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"Bool":{"aws:SecureTransport":"true"},"Bool":{"aws:SecureTransport":"false"}}}`), `member "Bool" appears twice`},
		{"case-colliding condition keys", stmt(`{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"StringEquals":{"kms:CallerAccount":"1","kms:calleraccount":"2"}}}`), "differ only in case"},
		{"miscased principal type", stmt(`{"Effect":"Allow","Principal":{"aws":"*"},"Action":"kms:*","Resource":"*"}`), "principal type"},
		{"invalid UTF-8", stmt("{\"Sid\":\"\xff\",\"Effect\":\"Allow\",\"Principal\":\"*\",\"Action\":\"kms:*\",\"Resource\":\"*\"}"), "UTF-8"},
		{"bad version", `{"Version":"2020-01-01","Statement":[` + ok + `]}`, "Version"},
		{"no statement", `{"Version":"2012-10-17"}`, "Statement is missing"},
		{"empty statements", `{"Statement":[]}`, "Statement is empty"},
		{"bad effect", stmt(`{"Effect":"Maybe","Principal":"*","Action":"kms:*","Resource":"*"}`), "Effect"},
		{"no principal", stmt(`{"Effect":"Allow","Action":"kms:*","Resource":"*"}`), "Principal element is missing"},
		{"service principal", stmt(`{"Effect":"Allow","Principal":{"Service":"x"},"Action":"kms:*","Resource":"*"}`), "principal type"},
		{"bad principal", stmt(`{"Effect":"Allow","Principal":{"AWS":"bob"},"Action":"kms:*","Resource":"*"}`), "12-digit"},
		{"no action", stmt(`{"Effect":"Allow","Principal":"*","Resource":"*"}`), "Action element is missing"},
		{"s3 action", stmt(`{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"*"}`), "kms:<action>"},
		{"no resource", stmt(`{"Effect":"Allow","Principal":"*","Action":"kms:*"}`), "Resource element is missing"},
		{"unknown op", stmt(`{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"NumericLessThan":{"kms:X":"1"}}}`), "not supported"},
		{"bad qualifier", stmt(`{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"Some:StringEquals":{"kms:X":"1"}}}`), "qualifier"},
		{"pcr 32", stmt(`{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"StringEquals":{"kms:RecipientAttestation:PCR32":"00"}}}`), "0..31"},
		{"bool value", stmt(`{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"Bool":{"aws:SecureTransport":"yes"}}}`), "true or false"},
		{"dup sid", stmt(`{"Sid":"a","Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"},{"Sid":"a","Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"}`), "duplicate Sid"},
		{"too large", `{"Statement":[` + ok + `],"Id":"` + strings.Repeat("x", MaxSize) + `"}`, "limit"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Parse([]byte(tc.doc))
			if err == nil || p != nil {
				t.Fatalf("Parse accepted: %+v", p)
			}
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q, want ErrMalformed mentioning %q", err, tc.want)
			}
		})
	}
}

func TestDefaultPolicy(t *testing.T) {
	p := mustParse(t, Default(acct))
	if got := p.Evaluate(Request{PrincipalARN: "arn:aws:iam::111122223333:user/x", Action: "kms:Decrypt", Resource: keyID}); got != Allowed {
		t.Fatalf("own account: %s", got)
	}
	if got := p.Evaluate(Request{PrincipalARN: "arn:aws:iam::444455556666:user/x", Action: "kms:Decrypt", Resource: keyID}); got != ImplicitDeny {
		t.Fatalf("other account: %s", got)
	}
}

func TestGlob(t *testing.T) {
	tests := []struct {
		p, v string
		want bool
	}{
		{"*", "", true}, {"a*", "abc", true}, {"a?c", "abc", true}, {"a?c", "ac", false},
		{"*c", "abc", true}, {"a*b*c", "aXbYc", true}, {"a*b*c", "aXbY", false}, {"", "", true}, {"", "a", false},
		{"kms:Generate*", "kms:GenerateDataKey", true}, {strings.Repeat("*a", 30) + "b", strings.Repeat("a", 60), false},
	}
	for _, tc := range tests {
		if got := glob(tc.p, tc.v, false); got != tc.want {
			t.Errorf("glob(%q, %q) = %v", tc.p, tc.v, got)
		}
	}
}

func BenchmarkEvaluate(b *testing.B) {
	p, _ := Parse([]byte(enclavePolicy))
	req := Request{PrincipalARN: role, Action: "kms:Decrypt", Resource: keyID}
	req.SetAttestation(map[int][]byte{0: hexBytes(pcr0)})
	req.SetEncryptionContext(map[string]string{"purpose": "data"})
	for b.Loop() {
		if p.Evaluate(req) != Allowed {
			b.Fatal("not allowed")
		}
	}
}

func FuzzParsePolicy(f *testing.F) {
	f.Add([]byte(enclavePolicy))
	f.Add([]byte(Default(acct)))
	f.Add([]byte(`{"Statement":{"Effect":"Deny","Principal":{"AWS":["*"]},"NotAction":"kms:Encrypt","Resource":"*","Condition":{"ForAllValues:StringLikeIfExists":{"kms:EncryptionContextKeys":["a*",1,true]}}}}`))
	f.Add([]byte(`{"Statement":{"Effect":"Deny","Principal":"*","Action":"kms:*","Resource":"*","effect":"Allow"}}`))
	f.Add([]byte(`{"Statement":{"Effect":"Deny","Principal":"*","Action":"kms:*","Resource":"*","\u0045ffect":"Allow"}}`))
	f.Fuzz(func(t *testing.T, doc []byte) {
		p, err := Parse(doc)
		if (p == nil) == (err == nil) {
			t.Fatalf("Parse returned %v with %v", p, err)
		}
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error does not wrap ErrMalformed: %v", err)
			}
			return
		}
		req := Request{PrincipalARN: role, Action: "kms:Decrypt", Resource: keyID}
		req.SetAttestation(map[int][]byte{0: bytes.Repeat([]byte{1}, 48)})
		ex := p.Explain(req)
		if ex.Decision != p.Evaluate(req) || len(ex.Statements) != len(p.Statements) {
			t.Fatalf("inconsistent explanation")
		}
	})
}

func TestSameContextKey(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{"tenant", "tenant", true},
		{"tenant", "Tenant", true},
		{"tenant", "TENANT", true},
		{"kelvin", "\u212aelvin", true}, // KELVIN SIGN folds to k
		{"İd", "id", true},              // lower-cases to "id" but does not fold to it
		{"tenant", "tenants", false},
		{"a", "b", false},
	}
	for _, tc := range tests {
		if got := SameContextKey(tc.a, tc.b); got != tc.want {
			t.Errorf("SameContextKey(%q, %q) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}
