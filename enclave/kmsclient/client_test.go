package kmsclient

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/cloister/cloister/attest"
	"github.com/cloister/cloister/internal/egress"
	"github.com/cloister/cloister/kms"
	"github.com/cloister/cloister/kms/sigv4"
	"github.com/cloister/cloister/kms/store"
)

// issuerAttester issues documents like the NSM would, with fixed PCRs.
type issuerAttester struct {
	iss  *attest.Issuer
	pcrs map[int][]byte

	mu   sync.Mutex
	keys [][]byte // public keys seen
}

func (a *issuerAttester) Attest(_ context.Context, nonce, userData, publicKey []byte) ([]byte, error) {
	a.mu.Lock()
	a.keys = append(a.keys, bytes.Clone(publicKey))
	a.mu.Unlock()
	return a.iss.Issue(attest.IssueRequest{PCRs: a.pcrs, Nonce: nonce, UserData: userData, PublicKey: publicKey})
}

type failingAttester struct{}

func (failingAttester) Attest(context.Context, []byte, []byte, []byte) ([]byte, error) {
	return nil, errors.New("no security module")
}

const policyDoc = `{"Statement":[
 {"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:user/admin"},"Action":"kms:*","Resource":"*"},
 {"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:role/enclave"},"Action":["kms:Decrypt","kms:GenerateDataKey"],"Resource":"*",
  "Condition":{"StringEqualsIgnoreCase":{"kms:RecipientAttestation:PCR0":"` + "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" + `"}}}]}`

// serve starts a key service and returns its listener address, an admin
// SDK client and the issuer trusted by the service.
func serve(t *testing.T) (string, *awskms.Client, *attest.Issuer) {
	t.Helper()
	root := make([]byte, 32)
	rand.Read(root)
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "kms.db"), root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	iss, err := attest.NewIssuer(attest.IssuerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	av, _ := attest.NewVerifier(attest.VerifierConfig{Roots: []*x509.Certificate{iss.Root()}, NoAWSRoot: true})
	creds, _ := sigv4.NewCredentials(
		sigv4.Credential{Profile: "admin", AccessKeyID: "AKIDADMIN", SecretAccessKey: "s1"},
		sigv4.Credential{Profile: "enclave", AccessKeyID: "AKIDENCLAVE", SecretAccessKey: "s2", PrincipalARN: "arn:aws:iam::111122223333:role/enclave"},
	)
	srv, err := kms.NewServer(kms.Config{Store: st, Credentials: creds, Attestation: av, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	admin := awskms.New(awskms.Options{Region: "us-east-1", BaseEndpoint: aws.String(hs.URL), HTTPClient: hs.Client(), RetryMaxAttempts: 1,
		Credentials: credentials.NewStaticCredentialsProvider("AKIDADMIN", "s1", "")})
	return hs.Listener.Addr().String(), admin, iss
}

// sandboxProxy emulates the parent's vsock-proxy in the sandbox world: a
// Unix socket at $CLOISTER_VSOCK_DIR/host/vsock_8000 forwarding to target.
func sandboxProxy(t *testing.T, target string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "kmsc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.MkdirAll(filepath.Join(dir, "host"), 0o755)
	l, err := net.Listen("unix", filepath.Join(dir, "host", "vsock_8000"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	t.Setenv("CLOISTER_WORLD", "sandbox")
	t.Setenv("CLOISTER_VSOCK_DIR", dir)
	t.Setenv("CLOISTER_CID", "16")
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				u, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer u.Close()
				go io.Copy(u, c)
				io.Copy(c, u)
			}()
		}
	}()
}

func TestClientThroughSandboxProxy(t *testing.T) {
	addr, admin, iss := serve(t)
	sandboxProxy(t, addr)
	ctx := context.Background()
	ck, err := admin.CreateKey(ctx, &awskms.CreateKeyInput{Policy: aws.String(policyDoc)})
	if err != nil {
		t.Fatal(err)
	}
	enc, err := admin.Encrypt(ctx, &awskms.EncryptInput{KeyId: ck.KeyMetadata.KeyId, Plaintext: []byte("the secret"), EncryptionContext: map[string]string{"app": "x"}})
	if err != nil {
		t.Fatal(err)
	}
	att := &issuerAttester{iss: iss, pcrs: map[int][]byte{0: bytes.Repeat([]byte{0xaa}, 48), 1: bytes.Repeat([]byte{1}, 48), 2: bytes.Repeat([]byte{2}, 48)}}
	// The host name is never resolved: the fixed-destination dialer goes
	// to the parent's proxy port whatever the address (AWS vsock-proxy).
	c, err := New(Config{Attester: att, Region: "us-east-1", Endpoint: "http://kms.us-east-1.amazonaws.com",
		Credentials: credentials.NewStaticCredentialsProvider("AKIDENCLAVE", "s2", ""), RetryMaxAttempts: 1,
		Dial: ProxyDialer(DefaultProxyPort)})
	if err != nil {
		t.Fatal(err)
	}
	pt, err := c.Decrypt(ctx, DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: map[string]string{"app": "x"}})
	if err != nil || string(pt) != "the secret" {
		t.Fatalf("Decrypt = %q, %v", pt, err)
	}
	dk, err := c.GenerateDataKey(ctx, DataKeyInput{KeyID: *ck.KeyMetadata.KeyId, KeySpec: "AES_256"})
	if err != nil || len(dk.Plaintext) != 32 || dk.KeyID != *ck.KeyMetadata.Arn {
		t.Fatalf("GenerateDataKey: %+v %v", dk, err)
	}
	back, err := admin.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: dk.CiphertextBlob})
	if err != nil || !bytes.Equal(back.Plaintext, dk.Plaintext) {
		t.Fatalf("data key mismatch: %v", err)
	}
	r, err := c.GenerateRandom(ctx, 100)
	if err != nil || len(r) != 100 {
		t.Fatalf("GenerateRandom: %d, %v", len(r), err)
	}
	// One key pair per client: every document carried the same public key.
	spki, _ := c.PublicKey()
	if len(att.keys) != 3 {
		t.Fatalf("%d attestations, want 3", len(att.keys))
	}
	for _, k := range att.keys {
		if !bytes.Equal(k, spki) {
			t.Fatal("public key changed between calls")
		}
	}
	// A different enclave image is refused by the key policy.
	att.pcrs[0] = bytes.Repeat([]byte{0xbb}, 48)
	_, err = c.Decrypt(ctx, DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: map[string]string{"app": "x"}})
	if err == nil || !strings.Contains(err.Error(), "AccessDeniedException") {
		t.Fatalf("wrong PCR0: %v", err)
	}
}

func TestClientInjectedDialer(t *testing.T) {
	addr, admin, iss := serve(t)
	ctx := context.Background()
	ck, _ := admin.CreateKey(ctx, &awskms.CreateKeyInput{Policy: aws.String(policyDoc)})
	dialed := 0
	c, err := New(Config{
		Attester: &issuerAttester{iss: iss, pcrs: map[int][]byte{0: bytes.Repeat([]byte{0xaa}, 48)}}, Region: "us-east-1",
		Endpoint: "http://kms.invalid", Credentials: credentials.NewStaticCredentialsProvider("AKIDENCLAVE", "s2", ""),
		Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			dialed++
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.GenerateDataKey(ctx, DataKeyInput{KeyID: *ck.KeyMetadata.Arn, NumberOfBytes: 24}); err != nil {
		t.Fatal(err)
	}
	if dialed == 0 {
		t.Fatal("injected dialer not used")
	}
}

func TestClientErrors(t *testing.T) {
	if _, err := New(Config{Region: "x", Credentials: credentials.NewStaticCredentialsProvider("a", "b", "")}); err == nil {
		t.Fatal("New without Attester succeeded")
	}
	if _, err := New(Config{Attester: failingAttester{}, Region: "x", Credentials: credentials.NewStaticCredentialsProvider("a", "b", ""), KeyBits: 1024}); err == nil {
		t.Fatal("KeyBits 1024 accepted")
	}
	c, err := New(Config{Attester: failingAttester{}, Region: "us-east-1", Endpoint: "http://kms.invalid",
		Credentials: credentials.NewStaticCredentialsProvider("a", "b", ""),
		Dial:        func(context.Context, string, string) (net.Conn, error) { return nil, errors.New("unreachable") }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.GenerateRandom(context.Background(), 8); !errors.Is(err, ErrAttest) {
		t.Fatalf("failing attester: %v", err)
	}
	if _, err := open(nil, nil); !errors.Is(err, ErrNoRecipientCiphertext) {
		t.Fatalf("empty CFR: %v", err)
	}
}

// TestClientThroughConnectProxy uses the default dialer against the
// daemon's default egress proxy (CONNECT mode with an allowlist), over the
// sandbox world's Unix sockets.
func TestClientThroughConnectProxy(t *testing.T) {
	addr, admin, iss := serve(t)
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "host"), 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(dir, "host", fmt.Sprintf("vsock_%d", DefaultProxyPort)))
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	proxy := &egress.Proxy{Allowlist: &egress.Allowlist{Entries: []egress.Entry{{Address: host, Port: p}}}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- proxy.Serve(ctx, l) }()
	t.Cleanup(func() { cancel(); <-done })
	t.Setenv("CLOISTER_WORLD", "sandbox")
	t.Setenv("CLOISTER_VSOCK_DIR", dir)
	t.Setenv("CLOISTER_CID", "16")

	ck, err := admin.CreateKey(ctx, &awskms.CreateKeyInput{Policy: aws.String(policyDoc)})
	if err != nil {
		t.Fatal(err)
	}
	enc, err := admin.Encrypt(ctx, &awskms.EncryptInput{KeyId: ck.KeyMetadata.KeyId, Plaintext: []byte("via connect")})
	if err != nil {
		t.Fatal(err)
	}
	att := &issuerAttester{iss: iss, pcrs: map[int][]byte{0: bytes.Repeat([]byte{0xaa}, 48), 1: bytes.Repeat([]byte{1}, 48), 2: bytes.Repeat([]byte{2}, 48)}}
	c, err := New(Config{Attester: att, Region: "us-east-1", Endpoint: "http://" + addr,
		Credentials: credentials.NewStaticCredentialsProvider("AKIDENCLAVE", "s2", ""), RetryMaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	pt, err := c.Decrypt(ctx, DecryptInput{CiphertextBlob: enc.CiphertextBlob})
	if err != nil || string(pt) != "via connect" {
		t.Fatalf("Decrypt through the CONNECT proxy = %q, %v", pt, err)
	}
	// A destination missing from the allowlist is refused by the proxy.
	c2, err := New(Config{Attester: att, Region: "us-east-1", Endpoint: "http://127.0.0.1:1",
		Credentials: credentials.NewStaticCredentialsProvider("AKIDENCLAVE", "s2", ""), RetryMaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c2.Decrypt(ctx, DecryptInput{CiphertextBlob: enc.CiphertextBlob}); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("Decrypt to a destination off the allowlist: %v, want the proxy's 403", err)
	}
}
