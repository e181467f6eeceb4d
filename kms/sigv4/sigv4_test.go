package sigv4

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/google/go-cmp/cmp"
)

const credFile = `
# test credentials
[default]
aws_access_key_id = AKIDDEFAULT
aws_secret_access_key = secret-default

[profile app]
aws_access_key_id=AKIDAPP
aws_secret_access_key=secret-app
aws_session_token = ignored
principal_arn = arn:aws:iam::444455556666:role/enclave-app

[other]
aws_access_key_id = AKIDOTHER
aws_secret_access_key = secret-other
aws_account_id = 777788889999
region = us-east-1
`

func creds(t *testing.T) *Credentials {
	t.Helper()
	c, err := ParseCredentials(strings.NewReader(credFile))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestParseCredentials(t *testing.T) {
	c := creds(t)
	for _, tc := range []struct{ akid, arn, acct string }{
		{"AKIDDEFAULT", "arn:aws:iam::111122223333:user/default", "111122223333"},
		{"AKIDAPP", "arn:aws:iam::444455556666:role/enclave-app", "444455556666"},
		{"AKIDOTHER", "arn:aws:iam::777788889999:user/other", "777788889999"},
	} {
		cr, ok := c.Lookup(tc.akid)
		if !ok || cr.PrincipalARN != tc.arn || cr.Account != tc.acct {
			t.Errorf("%s: %+v", tc.akid, cr)
		}
	}
	for _, bad := range []string{
		"", "aws_access_key_id = x", "[a]\naws_access_key_id = x",
		"[a]\naws_access_key_id=x\naws_secret_access_key=y\n[b]\naws_access_key_id=x\naws_secret_access_key=z",
		"[a]\naws_access_key_id=x\naws_secret_access_key=y\nprincipal_arn=bob",
		"[a\n", "[a]\njunk",
	} {
		if _, err := ParseCredentials(strings.NewReader(bad)); !errors.Is(err, ErrCredentialsFile) {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

// signed builds a KMS-style request signed by the real AWS SDK signer.
func signed(t *testing.T, akid, secret string, at time.Time, body string, mutate func(*http.Request)) *http.Request {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, "http://127.0.0.1:8443/", strings.NewReader(body))
	r.Header.Set("Content-Type", "application/x-amz-json-1.1")
	r.Header.Set("X-Amz-Target", "TrentService.Decrypt")
	r.Header.Set("X-Amz-Security-Token", "session-token")
	r.Header.Set("Amz-Sdk-Invocation-Id", "  spaced   value ")
	sum := sha256.Sum256([]byte(body))
	err := v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: akid, SecretAccessKey: secret, SessionToken: "session-token"},
		r, hex.EncodeToString(sum[:]), "kms", "us-east-1", at)
	if err != nil {
		t.Fatal(err)
	}
	if mutate != nil {
		mutate(r)
	}
	return r
}

func TestVerify(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	body := `{"KeyId":"alias/x","CiphertextBlob":"AAAA"}`
	tests := []struct {
		name     string
		akid     string
		secret   string
		at       time.Time
		mutate   func(*http.Request)
		body     string
		wantErr  error
		wantCode string
	}{
		{name: "ok", akid: "AKIDAPP", secret: "secret-app", at: now},
		{name: "ok at skew edge", akid: "AKIDAPP", secret: "secret-app", at: now.Add(-4 * time.Minute)},
		{name: "wrong secret", akid: "AKIDAPP", secret: "nope", at: now, wantErr: ErrSignature, wantCode: "InvalidSignatureException"},
		{name: "unknown key", akid: "AKIDNOBODY", secret: "x", at: now, wantErr: ErrUnknownKey, wantCode: "UnrecognizedClientException"},
		{name: "expired", akid: "AKIDAPP", secret: "secret-app", at: now.Add(-6 * time.Minute), wantErr: ErrExpired, wantCode: "InvalidSignatureException"},
		{name: "future", akid: "AKIDAPP", secret: "secret-app", at: now.Add(6 * time.Minute), wantErr: ErrExpired, wantCode: "InvalidSignatureException"},
		{name: "body changed", akid: "AKIDAPP", secret: "secret-app", at: now, body: `{"KeyId":"alias/y","CiphertextBlob":"AAAA"}`, wantErr: ErrSignature, wantCode: "InvalidSignatureException"},
		{name: "target changed", akid: "AKIDAPP", secret: "secret-app", at: now, mutate: func(r *http.Request) { r.Header.Set("X-Amz-Target", "TrentService.Encrypt") }, wantErr: ErrSignature},
		{name: "host changed", akid: "AKIDAPP", secret: "secret-app", at: now, mutate: func(r *http.Request) { r.Host = "evil:1" }, wantErr: ErrSignature},
		{name: "no auth", akid: "AKIDAPP", secret: "secret-app", at: now, mutate: func(r *http.Request) { r.Header.Del("Authorization") }, wantErr: ErrMissingAuth, wantCode: "MissingAuthenticationTokenException"},
		{name: "garbage auth", akid: "AKIDAPP", secret: "secret-app", at: now, mutate: func(r *http.Request) { r.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=x") }, wantErr: ErrIncomplete, wantCode: "IncompleteSignatureException"},
		{name: "target unsigned", akid: "AKIDAPP", secret: "secret-app", at: now, mutate: func(r *http.Request) {
			r.Header.Set("Authorization", strings.Replace(r.Header.Get("Authorization"), ";x-amz-target", "", 1))
		}, wantErr: ErrIncomplete},
		{name: "content hash mismatch", akid: "AKIDAPP", secret: "secret-app", at: now, mutate: func(r *http.Request) { r.Header.Set("X-Amz-Content-Sha256", emptySHA256) }, wantErr: ErrSignature},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := &clock{now}
			v, err := NewVerifier(Config{Credentials: creds(t), Clock: c.now})
			if err != nil {
				t.Fatal(err)
			}
			r := signed(t, tc.akid, tc.secret, tc.at, body, tc.mutate)
			b := body
			if tc.body != "" {
				b = tc.body
			}
			cred, err := v.Verify(r, []byte(b))
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if cred.PrincipalARN != "arn:aws:iam::444455556666:role/enclave-app" {
					t.Fatalf("credential %+v", cred)
				}
				return
			}
			var e *Error
			if !errors.Is(err, tc.wantErr) || !errors.As(err, &e) {
				t.Fatalf("Verify error %v, want %v", err, tc.wantErr)
			}
			if tc.wantCode != "" && e.Code != tc.wantCode {
				t.Fatalf("code %s, want %s", e.Code, tc.wantCode)
			}
		})
	}
}

// TestSameRequestAgain: as on AWS, a signature is not a nonce. The same
// signed request verifies every time while its time is within the skew
// window, however often it is sent, and fails as expired (AWS's
// InvalidSignatureException "Signature expired") once the clock has moved
// past the window, or as not yet current before it.
func TestSameRequestAgain(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	c := &clock{now}
	v, err := NewVerifier(Config{Credentials: creds(t), Clock: c.now})
	if err != nil {
		t.Fatal(err)
	}
	r := signed(t, "AKIDDEFAULT", "secret-default", now, "{}", nil)
	for i := range 5 {
		if _, err := v.Verify(r, []byte("{}")); err != nil {
			t.Fatalf("copy %d of the same request: %v", i+1, err)
		}
	}
	for _, tc := range []struct {
		name    string
		clock   time.Time
		wantErr error
		wantMsg string
	}{
		{"at the end of the window", now.Add(5 * time.Minute), nil, ""},
		{"after the window", now.Add(5*time.Minute + time.Second), ErrExpired, "Signature expired: 20260501T120000Z is now earlier than 20260501T120001Z (20260501T120501Z - 5 min.)"},
		{"before the window", now.Add(-5*time.Minute - time.Second), ErrExpired, "Signature not yet current: 20260501T120000Z is still later than 20260501T115959Z (20260501T115459Z + 5 min.)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c.t = tc.clock
			_, err := v.Verify(r, []byte("{}"))
			if tc.wantErr == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var e *Error
			if !errors.Is(err, tc.wantErr) || !errors.As(err, &e) {
				t.Fatalf("Verify error %v, want %v", err, tc.wantErr)
			}
			if diff := cmp.Diff([]string{"InvalidSignatureException", tc.wantMsg}, []string{e.Code, e.Message}); diff != "" {
				t.Errorf("error (-want +got):\n%s", diff)
			}
		})
	}
}

// TestOverHTTP sends SDK-signed requests through a real loopback server so
// Go's server-side header handling (Host, Content-Length) is exercised.
func TestOverHTTP(t *testing.T) {
	v, _ := NewVerifier(Config{Credentials: creds(t)})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var buf bytes.Buffer
		buf.ReadFrom(r.Body)
		if _, err := v.Verify(r, buf.Bytes()); err != nil {
			http.Error(w, err.Error(), 400)
		}
	}))
	defer srv.Close()
	body := `{"NumberOfBytes":32}`
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/", strings.NewReader(body))
	req.Header.Set("X-Amz-Target", "TrentService.GenerateRandom")
	sum := sha256.Sum256([]byte(body))
	if err := v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: "AKIDOTHER", SecretAccessKey: "secret-other"}, req, hex.EncodeToString(sum[:]), "kms", "eu-west-1", time.Now()); err != nil {
		t.Fatal(err)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

func BenchmarkVerify(b *testing.B) {
	c, _ := ParseCredentials(strings.NewReader(credFile))
	v, _ := NewVerifier(Config{Credentials: c})
	body := []byte(`{"KeyId":"alias/x"}`)
	r := httptest.NewRequest(http.MethodPost, "http://127.0.0.1/", bytes.NewReader(body))
	r.Header.Set("X-Amz-Target", "TrentService.Decrypt")
	sum := sha256.Sum256(body)
	v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: "AKIDAPP", SecretAccessKey: "secret-app"}, r, hex.EncodeToString(sum[:]), "kms", "us-east-1", time.Now())
	for b.Loop() {
		if _, err := v.Verify(r, body); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyParallel verifies the same signed request from every
// goroutine at once: verification shares no lock.
func BenchmarkVerifyParallel(b *testing.B) {
	c, _ := ParseCredentials(strings.NewReader(credFile))
	v, _ := NewVerifier(Config{Credentials: c})
	body := []byte(`{"KeyId":"alias/x"}`)
	sum := sha256.Sum256(body)
	now := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		r := httptest.NewRequest(http.MethodPost, "http://127.0.0.1/", bytes.NewReader(body))
		r.Header.Set("X-Amz-Target", "TrentService.Decrypt")
		if err := v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: "AKIDAPP", SecretAccessKey: "secret-app"}, r, hex.EncodeToString(sum[:]), "kms", "us-east-1", now); err != nil {
			b.Error(err)
			return
		}
		for pb.Next() {
			if _, err := v.Verify(r, body); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
