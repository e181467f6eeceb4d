package secret

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/aws/smithy-go"
	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/kms/policy"
)

const (
	admin   = "arn:aws:iam::111122223333:user/admin"
	encl    = "arn:aws:iam::111122223333:role/enclave"
	keyARN  = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
	pcr0Hex = "ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789"
)

func TestKeyPolicy(t *testing.T) {
	doc, err := KeyPolicy{Admin: admin, Enclave: encl, PCR0: pcr0Hex}.JSON()
	if err != nil {
		t.Fatal(err)
	}
	p, err := policy.Parse([]byte(doc))
	if err != nil {
		t.Fatalf("the key policy does not parse: %v\n%s", err, doc)
	}
	pcr0 := make([]byte, 48)
	for i := range pcr0 {
		pcr0[i] = "\xab\xcd\xef\x01\x23\x45\x67\x89"[i%8]
	}
	other := bytes.Repeat([]byte{1}, 48)
	tests := []struct {
		name, principal, action string
		pcrs                    map[int][]byte
		want                    policy.Decision
	}{
		{"enclave with the image's PCR0", encl, "kms:Decrypt", map[int][]byte{0: pcr0}, policy.Allowed},
		{"enclave principal without attestation", encl, "kms:Decrypt", nil, policy.ImplicitDeny},
		{"enclave principal, other image", encl, "kms:Decrypt", map[int][]byte{0: other}, policy.ImplicitDeny},
		{"enclave principal may not encrypt", encl, "kms:Encrypt", map[int][]byte{0: pcr0}, policy.ImplicitDeny},
		{"admin encrypts", admin, "kms:Encrypt", nil, policy.Allowed},
	}
	for _, tc := range tests {
		req := policy.Request{PrincipalARN: tc.principal, Action: tc.action, Resource: keyARN}
		if tc.pcrs != nil {
			req.SetAttestation(tc.pcrs)
		}
		if got := p.Evaluate(req); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	for _, bad := range []KeyPolicy{
		{Admin: admin, Enclave: encl, PCR0: "abcd"},
		{Admin: admin, Enclave: encl, PCR0: strings.Repeat("zz", 48)},
	} {
		if _, err := bad.JSON(); !errors.Is(err, ErrInvalidPCR0) {
			t.Errorf("PCR0 %q: %v, want ErrInvalidPCR0", bad.PCR0, err)
		}
	}
	if _, err := (KeyPolicy{Enclave: encl, PCR0: pcr0Hex}).JSON(); err == nil {
		t.Error("a policy without an admin was accepted")
	}
}

// serveLoopback runs Serve on a loopback listener with decrypt and returns a
// function that opens a connection to it.
func serveLoopback(t *testing.T, decrypt DecryptFunc) func() net.Conn {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, l, decrypt, t.Logf) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return func() net.Conn {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestUnsealRoundTrip(t *testing.T) {
	var got Request
	dial := serveLoopback(t, func(_ context.Context, req Request) ([]byte, error) {
		got = req
		if string(req.Ciphertext) == "denied" {
			return nil, &smithy.GenericAPIError{Code: "AccessDeniedException", Message: "not this image"}
		}
		if string(req.Ciphertext) == "broken" {
			return nil, errors.New("envelope did not open")
		}
		return []byte("plain:" + string(req.Ciphertext)), nil
	})
	req := Request{Endpoint: "http://127.0.0.1:7777", Region: "us-east-1", AccessKeyID: "AKIA", SecretAccessKey: "s", Ciphertext: []byte("blob"), KeyID: "k"}
	pt, err := Unseal(testCtx(t), dial(), req)
	if err != nil || string(pt) != "plain:blob" {
		t.Fatalf("Unseal: %q, %v", pt, err)
	}
	if diff := cmp.Diff(req, got); diff != "" {
		t.Errorf("request seen by the enclave (-sent +got):\n%s", diff)
	}

	for _, tc := range []struct{ blob, code string }{{"denied", "AccessDeniedException"}, {"broken", "InternalError"}} {
		req.Ciphertext = []byte(tc.blob)
		pt, err = Unseal(testCtx(t), dial(), req)
		var ee *EnclaveError
		if pt != nil || !errors.As(err, &ee) || ee.Code != tc.code || !errors.Is(err, ErrEnclave) {
			t.Errorf("%s: %q, %v; want *EnclaveError %s", tc.blob, pt, err, tc.code)
		}
	}

	req.Ciphertext = nil
	_, err = Unseal(testCtx(t), dial(), req)
	var ee *EnclaveError
	if !errors.As(err, &ee) || ee.Code != "BadRequest" {
		t.Errorf("incomplete request: %v, want BadRequest", err)
	}
}

func TestServeBadInput(t *testing.T) {
	dial := serveLoopback(t, func(context.Context, Request) ([]byte, error) {
		t.Error("decrypt called for a bad request")
		return nil, nil
	})
	for _, in := range []string{"not json\n", strings.Repeat("x", maxMessage+10)} {
		c := dial()
		go func() { io.WriteString(c, in) }()
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		// The answer may be followed by a reset: the server closes with
		// unread input.
		b, err := io.ReadAll(c)
		if !strings.Contains(string(b), `"code":"BadRequest"`) {
			t.Errorf("input %.20q: answer %q, %v", in, b, err)
		}
	}
}
