// Package kmssecret is the kms-secret example's integration test: a real
// daemon (sandbox and QEMU microVM backends), a real `cloister kms serve`,
// the example's enclave and parent programs.
package kmssecret

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/smithy-go"

	"github.com/cloister/cloister/attest"
	"github.com/cloister/cloister/enclave/kmsclient"
	"github.com/cloister/cloister/examples/internal/exampletest"
	"github.com/cloister/cloister/parent/parenttest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	parenttest.Cleanup()
	os.Exit(code)
}

// credsFile is the shared-credentials file of the test's key service.
const credsFile = `[admin]
aws_access_key_id = AKIAEXAMPLEADMIN0001
aws_secret_access_key = admin-secret-key-for-the-kms-secret-example
principal_arn = arn:aws:iam::111122223333:user/admin

[enclave]
aws_access_key_id = AKIAEXAMPLEENCLAVE01
aws_secret_access_key = enclave-secret-key-for-the-kms-secret-example
principal_arn = arn:aws:iam::111122223333:role/enclave
`

const theSecret = "the launch code is 0000"

func TestKMSSecret(t *testing.T) {
	for _, backend := range exampletest.Backends {
		t.Run(backend, func(t *testing.T) {
			dir := parenttest.ShortTemp(t)
			creds := filepath.Join(dir, "kms-creds.ini")
			allow := filepath.Join(dir, "allowlist.yaml")
			writeFile(t, creds, credsFile)
			writeFile(t, allow, "allowlist: []\n")
			env := exampletest.Start(t, backend, "egress:\n  allowlist: "+allow+"\n")

			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			root, err := env.Daemon.Client.DevRootPEM(ctx)
			if err != nil {
				t.Fatal(err)
			}
			rootFile := filepath.Join(dir, "devroot.pem")
			writeFile(t, rootFile, string(root))
			endpoint := parenttest.StartKMS(t, dir, parenttest.KMSOptions{Credentials: creds, Roots: []string{rootFile}}).Endpoint
			host, port, _ := net.SplitHostPort(strings.TrimPrefix(endpoint, "http://"))
			writeFile(t, allow, "allowlist:\n- {address: "+host+", port: "+port+"}\n")

			// The enclave program, and the same program built as different
			// code (another PCR0).
			app := parenttest.BuildProgram(t, dir, "kms-secret-enclave", "./examples/kms-secret/enclave")
			tampered := filepath.Join(dir, "kms-secret-enclave-tampered")
			goBuild(t, tampered, "-ldflags=-X main.variant=tampered", "./examples/kms-secret/enclave")
			parentBin := parenttest.BuildProgram(t, dir, "kms-secret-parent", "./examples/kms-secret/parent")
			eif := env.Image(t, dir, "kms-secret", map[string]string{"bin/kms-secret-enclave": app}, "/bin/kms-secret-enclave")
			eifTampered := env.Image(t, dir, "kms-secret-tampered", map[string]string{"bin/kms-secret-enclave": tampered}, "/bin/kms-secret-enclave")
			pcr0 := exampletest.PCR0(t, eif)
			if pcr0 == exampletest.PCR0(t, eifTampered) {
				t.Fatal("the tampered image has the original's PCR0")
			}

			runParent := func(args ...string) (string, error) {
				t.Helper()
				ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
				defer cancel()
				cmd := exec.CommandContext(ctx, parentBin, append(args[:1:1], append([]string{"-kms", endpoint, "-credentials", creds}, args[1:]...)...)...)
				cmd.Dir = dir
				cmd.Env = append(os.Environ(), "CLOISTER_SOCKET="+env.Daemon.Socket)
				out, err := cmd.CombinedOutput()
				return string(out), err
			}

			// Seal: the parent creates the key, encrypts, and is itself
			// refused when it tries the enclave's credentials.
			out, err := runParent("seal", "-eif", eif, "-secret", theSecret)
			if err != nil {
				t.Fatalf("parent seal: %v\n%s", err, out)
			}
			if !strings.Contains(out, "parent Decrypt with the enclave's credentials but no attestation: refused (AccessDeniedException)") {
				t.Fatalf("parent seal did not show the parent being refused:\n%s", out)
			}
			sealedFile := readSealed(t, filepath.Join(dir, "sealed.json"))

			// A Recipient document that names the right PCR0 but is not
			// signed under a trusted root is refused too.
			forgedDecrypt(t, ctx, endpoint, sealedFile, pcr0)

			// The right enclave gets the secret.
			res := env.Run(t, eif, "original build listening on vsock port 5000")
			out, err = runParent("unseal", "-enclave", res.EnclaveName)
			if err != nil {
				t.Fatalf("parent unseal (original image): %v\n%s\nconsole:\n%s", err, out, env.Daemon.ConsoleUntil(res.EnclaveID, "", 0))
			}
			if want := "the enclave unsealed the secret: " + theSecret + "\n"; out != want {
				t.Fatalf("parent unseal printed %q, want %q", out, want)
			}
			env.Daemon.ConsoleUntil(res.EnclaveID, "unsealed a 23-byte secret", time.Minute)
			if _, err := env.Daemon.Client.Terminate(ctx, res.EnclaveID); err != nil {
				t.Fatal(err)
			}

			// Different code is refused.
			res = env.Run(t, eifTampered, "tampered build listening on vsock port 5000")
			out, err = runParent("unseal", "-enclave", res.EnclaveName)
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 {
				t.Fatalf("parent unseal (tampered image): want exit status 1, got %v\n%s", err, out)
			}
			if !strings.Contains(out, "AccessDeniedException") || strings.Contains(out, theSecret) {
				t.Fatalf("tampered enclave was not refused with AccessDeniedException:\n%s", out)
			}
			env.Daemon.ConsoleUntil(res.EnclaveID, "refused: AccessDeniedException", time.Minute)
		})
	}
}

// forgedDecrypt calls Decrypt as the enclave principal with a Recipient
// whose document carries the image's PCR0 but is signed by a development
// root the key service does not trust, and expects AccessDeniedException.
func forgedDecrypt(t *testing.T, ctx context.Context, endpoint string, s sealed, pcr0Hex string) {
	t.Helper()
	iss, err := attest.NewIssuer(attest.IssuerConfig{Name: "forger"})
	if err != nil {
		t.Fatal(err)
	}
	pcr0, _ := hex.DecodeString(pcr0Hex)
	c, err := kmsclient.New(kmsclient.Config{
		Attester: attesterFunc(func(_ context.Context, nonce, userData, publicKey []byte) ([]byte, error) {
			return iss.Issue(attest.IssueRequest{PCRs: map[int][]byte{0: pcr0, 1: pcr0, 2: pcr0}, Nonce: nonce, UserData: userData, PublicKey: publicKey})
		}),
		Region:   "us-east-1",
		Endpoint: endpoint,
		Credentials: credentials.StaticCredentialsProvider{Value: aws.Credentials{
			AccessKeyID: "AKIAEXAMPLEENCLAVE01", SecretAccessKey: "enclave-secret-key-for-the-kms-secret-example",
		}},
		Dial:             (&net.Dialer{}).DialContext,
		RetryMaxAttempts: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	pt, err := c.Decrypt(ctx, kmsclient.DecryptInput{CiphertextBlob: s.Ciphertext, KeyID: s.KeyID})
	var api smithy.APIError
	if err == nil || !errors.As(err, &api) || api.ErrorCode() != "AccessDeniedException" {
		t.Fatalf("Decrypt with a forged attestation document: plaintext %q, error %v; want AccessDeniedException", pt, err)
	}
}

// sealed is the file the parent program's seal writes.
type sealed struct {
	KeyID      string `json:"key_id"`
	Ciphertext []byte `json:"ciphertext"`
}

func readSealed(t *testing.T, path string) sealed {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var s sealed
	if err := json.Unmarshal(b, &s); err != nil || s.KeyID == "" || len(s.Ciphertext) == 0 {
		t.Fatalf("%s: %v\n%s", path, err, b)
	}
	return s
}

type attesterFunc func(ctx context.Context, nonce, userData, publicKey []byte) ([]byte, error)

func (f attesterFunc) Attest(ctx context.Context, nonce, userData, publicKey []byte) ([]byte, error) {
	return f(ctx, nonce, userData, publicKey)
}

// goBuild builds a static program with extra go build flags.
func goBuild(t *testing.T, out string, args ...string) {
	t.Helper()
	cmd := exec.Command("go", append([]string{"build", "-o", out}, args...)...)
	cmd.Dir = parenttest.RepoRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %v: %v\n%s", args, err, b)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
