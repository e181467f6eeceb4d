package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cloister/cloister/attest"
)

// runKMSCLI runs `cloister args...` in-process with stdin.
func runKMSCLI(t *testing.T, ctx context.Context, stdin []byte, args ...string) (string, string, int) {
	t.Helper()
	root := newRootCmd()
	var out, errb bytes.Buffer
	root.SetIn(bytes.NewReader(stdin))
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return out.String(), errb.String(), 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return out.String(), errb.String() + err.Error(), ee.code
	}
	return out.String(), errb.String() + err.Error(), 2
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func TestKMSCommands(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("XDG_STATE_HOME", filepath.Join(dir, "state"))
	t.Setenv("CLOISTER_KMS_ROOT_KEY", "")
	// The client commands load AWS configuration the standard way: keep
	// the host's out.
	emptyConfig := filepath.Join(dir, "aws-config")
	os.WriteFile(emptyConfig, nil, 0o600)
	for _, v := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION",
		"AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_KMS", "AWS_SHARED_CREDENTIALS_FILE"} {
		t.Setenv(v, "")
	}
	t.Setenv("AWS_CONFIG_FILE", emptyConfig)
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	creds := filepath.Join(dir, "creds")
	os.WriteFile(creds, []byte("[admin]\naws_access_key_id = AKIDADMIN\naws_secret_access_key = s1\n"+
		"[enclave]\naws_access_key_id = AKIDENCL\naws_secret_access_key = s2\nprincipal_arn = arn:aws:iam::111122223333:role/enclave\n"), 0o600)
	iss, err := attest.NewIssuer(attest.IssuerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	rootPEM := filepath.Join(dir, "dev-root.pem")
	os.WriteFile(rootPEM, iss.RootPEM(), 0o600)

	// Usage errors.
	if _, _, code := runKMSCLI(t, context.Background(), nil, "kms", "serve"); code != 2 {
		t.Fatalf("serve without --credentials: exit %d", code)
	}
	if _, _, code := runKMSCLI(t, context.Background(), nil, "kms", "serve", "--credentials", creds, "--addr", "0.0.0.0:7777"); code != 2 {
		t.Fatalf("serve on a public address without TLS: exit %d", code)
	}

	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan string, 1)
	go func() {
		_, stderr, code := runKMSCLI(t, ctx, nil, "kms", "serve", "--addr", addr, "--credentials", creds, "--root", rootPEM)
		done <- fmt.Sprintf("exit %d: %s", code, stderr)
	}()
	endpoint := "http://" + addr
	for i := 0; ; i++ {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if i > 200 {
			cancel()
			t.Fatalf("server did not start: %s", <-done)
		}
		time.Sleep(25 * time.Millisecond)
	}
	client := []string{"--endpoint", endpoint, "--credentials", creds, "--profile", "admin"}

	policy := `{"Statement":[
 {"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:user/admin"},"Action":"kms:*","Resource":"*"},
 {"Sid":"Enclave","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:role/enclave"},"Action":"kms:Decrypt","Resource":"*",
  "Condition":{"StringEqualsIgnoreCase":{"kms:RecipientAttestation:PCR0":"` + strings.Repeat("ab", 48) + `"}}}]}`
	policyFile := filepath.Join(dir, "policy.json")
	os.WriteFile(policyFile, []byte(policy), 0o600)
	out, stderr, code := runKMSCLI(t, ctx, nil, append([]string{"kms", "create-key", "--description", "cli", "--policy", policyFile}, client...)...)
	if code != 0 {
		t.Fatalf("create-key: exit %d: %s", code, stderr)
	}
	var created struct {
		KeyMetadata struct{ KeyId, Arn, KeySpec string }
	}
	if err := json.Unmarshal([]byte(out), &created); err != nil || created.KeyMetadata.KeyId == "" || created.KeyMetadata.KeySpec != "SYMMETRIC_DEFAULT" {
		t.Fatalf("create-key output %q: %v", out, err)
	}
	md := created.KeyMetadata
	if strings.Contains(out, "ResultMetadata") || strings.Contains(out, "null") {
		t.Fatalf("create-key output is not as the AWS CLI prints it: %s", out)
	}
	out, stderr, code = runKMSCLI(t, ctx, []byte("top secret"), append([]string{"kms", "encrypt", "--key-id", md.KeyId, "--context", "app=cli"}, client...)...)
	if code != 0 {
		t.Fatalf("encrypt: exit %d: %s", code, stderr)
	}
	blob := out
	out, stderr, code = runKMSCLI(t, ctx, []byte(blob), append([]string{"kms", "decrypt", "--context", "app=cli"}, client...)...)
	if code != 0 || out != "top secret" {
		t.Fatalf("decrypt: %q exit %d: %s", out, code, stderr)
	}
	if _, _, code = runKMSCLI(t, ctx, []byte(blob), append([]string{"kms", "decrypt", "--context", "app=other"}, client...)...); code != 1 {
		t.Fatalf("decrypt with the wrong context: exit %d", code)
	}

	// explain: allowed with the right attestation, denied (exit 1) without.
	k, _ := rsa.GenerateKey(rand.Reader, 2048)
	spki, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	p := map[int][]byte{0: bytes.Repeat([]byte{0xab}, 48), 1: bytes.Repeat([]byte{1}, 48), 2: bytes.Repeat([]byte{2}, 48)}
	doc, _ := iss.Issue(attest.IssueRequest{PCRs: p, PublicKey: spki})
	docFile := filepath.Join(dir, "doc.cbor")
	os.WriteFile(docFile, doc, 0o600)
	explain := append([]string{"kms", "explain", "--key-id", md.Arn, "--action", "Decrypt", "--principal", "arn:aws:iam::111122223333:role/enclave"}, client...)
	out, stderr, code = runKMSCLI(t, ctx, nil, append(explain, "--attestation-doc", docFile)...)
	if code != 0 || !strings.Contains(out, `"decision": "Allow"`) {
		t.Fatalf("explain with attestation: exit %d: %s %s", code, out, stderr)
	}
	out, _, code = runKMSCLI(t, ctx, nil, explain...)
	if code != 1 || !strings.Contains(out, `"decision": "ImplicitDeny"`) || !strings.Contains(out, `"sid": "Enclave"`) {
		t.Fatalf("explain without attestation: exit %d: %s", code, out)
	}
	// A caller who may not read the policy cannot explain it.
	if _, _, code = runKMSCLI(t, ctx, nil, "kms", "explain", "--key-id", md.Arn, "--action", "Decrypt", "--endpoint", endpoint, "--credentials", creds, "--profile", "enclave"); code != 1 {
		t.Fatalf("explain by enclave principal: exit %d", code)
	}

	// A denied request names its request id; explain --request-id shows the
	// reasoning to the admin.
	_, stderr, code = runKMSCLI(t, ctx, []byte(blob), "kms", "decrypt", "--context", "app=cli", "--endpoint", endpoint, "--credentials", creds, "--profile", "enclave")
	_, reqID, found := strings.Cut(stderr, "--request-id ")
	if code != 1 || !found {
		t.Fatalf("denied decrypt: exit %d: %s", code, stderr)
	}
	reqID, _, _ = strings.Cut(reqID, "`")
	out, stderr, code = runKMSCLI(t, ctx, nil, append([]string{"kms", "explain", "--request-id", reqID}, client...)...)
	if code != 1 || !strings.Contains(out, `"decision": "ImplicitDeny"`) || !strings.Contains(out, `"sid": "Enclave"`) || !strings.Contains(out, reqID) {
		t.Fatalf("explain --request-id: exit %d: %s %s", code, out, stderr)
	}

	// Endpoint, credentials and region from the environment, as every SDK
	// reads them.
	t.Setenv("AWS_ENDPOINT_URL_KMS", endpoint)
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDADMIN")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "s1")
	t.Setenv("AWS_REGION", "us-east-1")
	out, stderr, code = runKMSCLI(t, ctx, nil, "kms", "create-key", "--key-spec", "ECC_NIST_P256", "--key-usage", "SIGN_VERIFY")
	if code != 0 || !strings.Contains(out, `"KeySpec": "ECC_NIST_P256"`) || !strings.Contains(out, `"SigningAlgorithms": [`) {
		t.Fatalf("create-key configured by the environment: exit %d: %s %s", code, out, stderr)
	}

	// The default state directory holds the store and the generated root key.
	for _, f := range []string{"kms.db", "kms-root.key"} {
		if _, err := os.Stat(filepath.Join(dir, "state", "cloister", f)); err != nil {
			t.Errorf("state file %s: %v", f, err)
		}
	}
	cancel()
	if res := <-done; !strings.HasPrefix(res, "exit 0") || !strings.Contains(res, `"msg":"kms decision"`) {
		t.Fatalf("serve ended with %s", res)
	}
	if _, err := http.Get(endpoint); err == nil {
		t.Fatal("server still answers after shutdown")
	}
}
