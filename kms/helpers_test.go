package kms

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/smithy-go"

	"github.com/cloister/cloister/attest"
	"github.com/cloister/cloister/internal/testenv"
	"github.com/cloister/cloister/kms/sigv4"
	"github.com/cloister/cloister/kms/store"
)

const (
	account     = "111122223333"
	enclaveRole = "arn:aws:iam::111122223333:role/enclave"
)

// env is a loopback key service with an admin and an enclave principal.
type env struct {
	t       testing.TB
	srv     *Server
	hs      *httptest.Server
	admin   *awskms.Client
	enclave *awskms.Client
	other   *awskms.Client // a principal of another account
	issuer  *attest.Issuer
	logs    *testenv.SyncBuffer
	store   store.Store
}

var testCreds = []sigv4.Credential{
	{Profile: "admin", AccessKeyID: "AKIDADMIN", SecretAccessKey: "admin-secret"},
	{Profile: "enclave", AccessKeyID: "AKIDENCLAVE", SecretAccessKey: "enclave-secret", PrincipalARN: enclaveRole},
	{Profile: "other", AccessKeyID: "AKIDOTHER", SecretAccessKey: "other-secret", Account: "999988887777"},
}

type envOpts struct {
	store     store.Store
	extraRoot []*attest.Issuer
}

func newEnv(t testing.TB, o envOpts) *env {
	t.Helper()
	st := o.store
	if st == nil {
		root := make([]byte, 32)
		rand.Read(root)
		var err error
		st, err = store.OpenBolt(filepath.Join(t.TempDir(), "kms.db"), root)
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { st.Close() })
	iss, err := attest.NewIssuer(attest.IssuerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	roots := []*x509.Certificate{iss.Root()}
	for _, x := range o.extraRoot {
		roots = append(roots, x.Root())
	}
	av, err := attest.NewVerifier(attest.VerifierConfig{Roots: roots})
	if err != nil {
		t.Fatal(err)
	}
	creds, err := sigv4.NewCredentials(testCreds...)
	if err != nil {
		t.Fatal(err)
	}
	logs := &testenv.SyncBuffer{}
	srv, err := NewServer(Config{
		Store: st, Credentials: creds, Attestation: av,
		Logger: slog.New(slog.NewJSONHandler(logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	e := &env{t: t, srv: srv, hs: hs, issuer: iss, logs: logs, store: st}
	e.admin = e.client("AKIDADMIN", "admin-secret")
	e.enclave = e.client("AKIDENCLAVE", "enclave-secret")
	e.other = e.client("AKIDOTHER", "other-secret")
	return e
}

func (e *env) client(akid, secret string) *awskms.Client {
	return awskms.New(awskms.Options{
		Region:           "us-east-1",
		BaseEndpoint:     aws.String(e.hs.URL),
		Credentials:      credentials.NewStaticCredentialsProvider(akid, secret, ""),
		HTTPClient:       e.hs.Client(),
		RetryMaxAttempts: 1,
	})
}

// errCode returns the AWS error code of err ("" for nil).
func errCode(t testing.TB, err error) string {
	t.Helper()
	if err == nil {
		return ""
	}
	var ae smithy.APIError
	if !errors.As(err, &ae) {
		t.Fatalf("not an API error: %v", err)
	}
	return ae.ErrorCode()
}

func wantCode(t testing.TB, err error, code string) {
	t.Helper()
	if got := errCode(t, err); got != code {
		t.Fatalf("error code %q (%v), want %q", got, err, code)
	}
}

// raw sends a JSON 1.1 request signed with the real SDK signer.
func (e *env) raw(akid, secret, op string, body any) (int, map[string]any) {
	e.t.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		e.t.Fatal(err)
	}
	return e.rawBytes(akid, secret, op, b)
}

// rawBytes sends the request body b as it is, signed with the real SDK
// signer.
func (e *env) rawBytes(akid, secret, op string, b []byte) (int, map[string]any) {
	e.t.Helper()
	var err error
	req, _ := http.NewRequest(http.MethodPost, e.hs.URL+"/", bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", "TrentService."+op)
	sum := sha256.Sum256(b)
	if akid != "" {
		err = v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: akid, SecretAccessKey: secret}, req, hex.EncodeToString(sum[:]), "kms", "us-east-1", time.Now())
		if err != nil {
			e.t.Fatal(err)
		}
	}
	resp, err := e.hs.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(rb, &out); err != nil {
		e.t.Fatalf("response %q: %v", rb, err)
	}
	return resp.StatusCode, out
}

// enclaveKey is an ephemeral recipient key pair.
type enclaveKey struct {
	priv *rsa.PrivateKey
	spki []byte
}

var (
	rsaOnce sync.Once
	rsaKey  *enclaveKey
)

func recipientKey(t testing.TB) *enclaveKey {
	rsaOnce.Do(func() {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		spki, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
		rsaKey = &enclaveKey{k, spki}
	})
	return rsaKey
}

func pcrs(pcr0 byte) map[int][]byte {
	m := map[int][]byte{}
	for i := 0; i <= 4; i++ {
		m[i] = bytes.Repeat([]byte{pcr0 + byte(i)}, 48)
	}
	m[8] = make([]byte, 48)
	return m
}

func debugPCRs() map[int][]byte {
	m := pcrs(0)
	for i := 0; i <= 2; i++ {
		m[i] = make([]byte, 48)
	}
	return m
}

// attestationPolicy lets the admin manage the key and the enclave role use
// it only from an enclave whose PCR0 is 0x11 repeated.
func attestationPolicy() string {
	pcr0 := strings.Repeat("11", 48)
	return fmt.Sprintf(`{
  "Version": "2012-10-17",
  "Statement": [
    {"Sid": "Admin", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::%s:user/admin"}, "Action": "kms:*", "Resource": "*"},
    {"Sid": "Enclave", "Effect": "Allow", "Principal": {"AWS": "%s"},
     "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": "*",
     "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": "%s"}}}
  ]
}`, account, enclaveRole, strings.ToUpper(pcr0))
}
