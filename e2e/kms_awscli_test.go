package e2e

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/cloister/cloister/internal/testenv"
)

// awsCLIs lists the AWS CLIs found: Debian's /usr/bin/aws (awscli) and,
// when it is another program, the aws on PATH. At least one is required.
func awsCLIs(t *testing.T) []string {
	t.Helper()
	var found []string
	for _, p := range []string{"/usr/bin/aws", "aws"} {
		path, err := exec.LookPath(p)
		if err != nil || slices.Contains(found, path) {
			continue
		}
		found = append(found, path)
	}
	testenv.Require(t, len(found) > 0, "the AWS CLI", "apt-get install awscli")
	return found
}

var awsErrorCode = regexp.MustCompile(`An error occurred \(([A-Za-z]+)\)`)

// cliRun runs `aws kms ...` against endpoint and returns the JSON output,
// or the AWS error code; unsupported is true when this CLI does not know
// the operation.
type cliRun struct {
	t        *testing.T
	aws      string
	endpoint string
	env      []string
	dir      string
	missing  []string
	called   []string
}

func (c *cliRun) file(name string, b []byte) string {
	p := filepath.Join(c.dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		c.t.Fatal(err)
	}
	return "fileb://" + p
}

// run calls `aws kms op args...`: it returns the decoded JSON (nil when the
// operation printed nothing) and the error code ("" on success).
func (c *cliRun) run(op string, args ...string) (map[string]any, string, bool) {
	c.t.Helper()
	cmd := exec.Command(c.aws, append([]string{"--endpoint-url", c.endpoint, "--region", kmsRegion, "--output", "json", "kms", op}, args...)...)
	cmd.Env = c.env
	out, err := cmd.CombinedOutput()
	if strings.Contains(string(out), "Invalid choice") || strings.Contains(string(out), "Unknown options") {
		if !slices.Contains(c.missing, op) {
			c.missing = append(c.missing, op)
		}
		return nil, "", false
	}
	if !slices.Contains(c.called, op) {
		c.called = append(c.called, op)
	}
	if err != nil {
		m := awsErrorCode.FindStringSubmatch(string(out))
		if m == nil {
			c.t.Fatalf("aws kms %s %s: %v: %s", op, strings.Join(args, " "), err, out)
		}
		return nil, m[1], true
	}
	if len(strings.TrimSpace(string(out))) == 0 {
		return nil, "", true
	}
	var v map[string]any
	if err := json.Unmarshal(out, &v); err != nil {
		c.t.Fatalf("aws kms %s printed %q: %v", op, out, err)
	}
	return v, "", true
}

// ok runs an operation that must succeed.
func (c *cliRun) ok(op string, args ...string) map[string]any {
	c.t.Helper()
	v, code, known := c.run(op, args...)
	if known && code != "" {
		c.t.Errorf("aws kms %s %s: %s", op, strings.Join(args, " "), code)
	}
	if v == nil {
		v = map[string]any{}
	}
	return v
}

// fails runs an operation that must fail with code.
func (c *cliRun) fails(code, op string, args ...string) {
	c.t.Helper()
	if _, got, known := c.run(op, args...); known && got != code {
		c.t.Errorf("aws kms %s %s: error %q, want %s", op, strings.Join(args, " "), got, code)
	}
}

func str(v map[string]any, path ...string) string {
	var cur any = v
	for _, p := range path {
		m, _ := cur.(map[string]any)
		cur = m[p]
	}
	s, _ := cur.(string)
	return s
}

func b64(t *testing.T, s string) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatalf("not base64: %q", s)
	}
	return b
}

// TestKMSAWSCLIAllOperations drives every operation of the real key
// service, and its error codes, with each AWS CLI found. Operations an
// installed CLI predates are listed in the log; the test fails if an
// operation is exercised by none of the CLIs.
func TestKMSAWSCLIAllOperations(t *testing.T) {
	covered := map[string]bool{}
	for _, awsPath := range awsCLIs(t) {
		t.Run(awsPath, func(t *testing.T) {
			k := startKMS(t)
			c := &cliRun{t: t, aws: awsPath, endpoint: k.Endpoint, env: awsEnv(t), dir: t.TempDir()}
			msg := c.file("msg", []byte("signed by the aws cli"))
			key := func(args ...string) string {
				t.Helper()
				id := str(c.ok("create-key", args...), "KeyMetadata", "KeyId")
				if id == "" {
					t.Fatalf("create-key %v printed no KeyId", args)
				}
				return id
			}
			sym := key("--description", "aws cli", "--tags", "TagKey=suite,TagValue=cli")
			c.ok("describe-key", "--key-id", sym)
			c.ok("list-keys")
			c.ok("disable-key", "--key-id", sym)
			c.fails("DisabledException", "encrypt", "--key-id", sym, "--plaintext", msg)
			c.ok("enable-key", "--key-id", sym)
			ct := b64(t, str(c.ok("encrypt", "--key-id", sym, "--plaintext", msg, "--encryption-context", "app=cli"), "CiphertextBlob"))
			if pt := b64(t, str(c.ok("decrypt", "--ciphertext-blob", c.file("ct", ct), "--encryption-context", "app=cli"), "Plaintext")); string(pt) != "signed by the aws cli" {
				t.Errorf("decrypt: %q", pt)
			}
			c.fails("InvalidCiphertextException", "decrypt", "--ciphertext-blob", c.file("ct", ct))
			sym2 := key()
			c.ok("re-encrypt", "--ciphertext-blob", c.file("ct", ct), "--source-encryption-context", "app=cli", "--destination-key-id", sym2)
			c.ok("generate-data-key", "--key-id", sym, "--key-spec", "AES_256")
			c.ok("generate-data-key-without-plaintext", "--key-id", sym, "--number-of-bytes", "16")
			c.ok("generate-random", "--number-of-bytes", "32")
			c.fails("NotFoundException", "describe-key", "--key-id", "alias/none")
			c.fails("UnsupportedOperationException", "get-public-key", "--key-id", sym)

			// Policies, rotation, deletion.
			pol := str(c.ok("get-key-policy", "--key-id", sym, "--policy-name", "default"), "Policy")
			c.ok("put-key-policy", "--key-id", sym, "--policy-name", "default", "--policy", pol)
			c.ok("list-key-policies", "--key-id", sym)
			c.fails("MalformedPolicyDocumentException", "put-key-policy", "--key-id", sym, "--policy-name", "default", "--policy", "{}")
			c.ok("enable-key-rotation", "--key-id", sym)
			c.ok("get-key-rotation-status", "--key-id", sym)
			c.ok("rotate-key-on-demand", "--key-id", sym)
			c.ok("list-key-rotations", "--key-id", sym)
			c.ok("disable-key-rotation", "--key-id", sym)
			c.ok("schedule-key-deletion", "--key-id", sym2, "--pending-window-in-days", "7")
			c.fails("KMSInvalidStateException", "encrypt", "--key-id", sym2, "--plaintext", msg)
			c.ok("cancel-key-deletion", "--key-id", sym2)

			// Aliases, tags, descriptions.
			c.ok("create-alias", "--alias-name", "alias/cli", "--target-key-id", sym)
			c.fails("AlreadyExistsException", "create-alias", "--alias-name", "alias/cli", "--target-key-id", sym2)
			c.ok("enable-key", "--key-id", sym2)
			c.ok("update-alias", "--alias-name", "alias/cli", "--target-key-id", sym2)
			c.ok("list-aliases", "--key-id", sym2)
			c.ok("delete-alias", "--alias-name", "alias/cli")
			c.ok("tag-resource", "--key-id", sym, "--tags", "TagKey=team,TagValue=x")
			c.ok("untag-resource", "--key-id", sym, "--tag-keys", "suite")
			if tags := c.ok("list-resource-tags", "--key-id", sym)["Tags"]; len(tags.([]any)) != 1 {
				t.Errorf("list-resource-tags: %v", tags)
			}
			c.fails("TagException", "tag-resource", "--key-id", sym, "--tags", "TagKey=aws:x,TagValue=y")
			c.ok("update-key-description", "--key-id", sym, "--description", "described")

			// Signing, asymmetric encryption, MACs.
			ec := key("--key-spec", "ECC_NIST_P256", "--key-usage", "SIGN_VERIFY")
			sig := b64(t, str(c.ok("sign", "--key-id", ec, "--message", msg, "--signing-algorithm", "ECDSA_SHA_256"), "Signature"))
			c.ok("verify", "--key-id", ec, "--message", msg, "--signing-algorithm", "ECDSA_SHA_256", "--signature", c.file("sig", sig))
			c.fails("KMSInvalidSignatureException", "verify", "--key-id", ec, "--message", c.file("other", []byte("other")), "--signing-algorithm", "ECDSA_SHA_256", "--signature", c.file("sig", sig))
			c.fails("InvalidKeyUsageException", "sign", "--key-id", ec, "--message", msg, "--signing-algorithm", "ECDSA_SHA_384")
			c.fails("ValidationException", "sign", "--key-id", ec, "--message", c.file("short", []byte("short")), "--message-type", "DIGEST", "--signing-algorithm", "ECDSA_SHA_256")
			c.ok("get-public-key", "--key-id", ec)
			rsaKey := key("--key-spec", "RSA_2048", "--key-usage", "ENCRYPT_DECRYPT")
			rct := b64(t, str(c.ok("encrypt", "--key-id", rsaKey, "--plaintext", msg, "--encryption-algorithm", "RSAES_OAEP_SHA_256"), "CiphertextBlob"))
			c.ok("decrypt", "--key-id", rsaKey, "--ciphertext-blob", c.file("rct", rct), "--encryption-algorithm", "RSAES_OAEP_SHA_256")
			mac := key("--key-spec", "HMAC_256", "--key-usage", "GENERATE_VERIFY_MAC")
			m := b64(t, str(c.ok("generate-mac", "--key-id", mac, "--message", msg, "--mac-algorithm", "HMAC_SHA_256"), "Mac"))
			c.ok("verify-mac", "--key-id", mac, "--message", msg, "--mac-algorithm", "HMAC_SHA_256", "--mac", c.file("mac", m))
			c.fails("KMSInvalidMacException", "verify-mac", "--key-id", mac, "--message", c.file("other", []byte("other")), "--mac-algorithm", "HMAC_SHA_256", "--mac", c.file("mac", m))

			// Key pairs and key agreement.
			c.ok("generate-data-key-pair", "--key-id", sym, "--key-pair-spec", "ECC_SECG_P256K1")
			c.ok("generate-data-key-pair-without-plaintext", "--key-id", sym, "--key-pair-spec", "RSA_2048")
			ka1, ka2 := key("--key-spec", "ECC_NIST_P384", "--key-usage", "KEY_AGREEMENT"), key("--key-spec", "ECC_NIST_P384", "--key-usage", "KEY_AGREEMENT")
			pub1 := b64(t, str(c.ok("get-public-key", "--key-id", ka1), "PublicKey"))
			pub2 := b64(t, str(c.ok("get-public-key", "--key-id", ka2), "PublicKey"))
			s12 := str(c.ok("derive-shared-secret", "--key-id", ka1, "--key-agreement-algorithm", "ECDH", "--public-key", c.file("pub2", pub2)), "SharedSecret")
			s21 := str(c.ok("derive-shared-secret", "--key-id", ka2, "--key-agreement-algorithm", "ECDH", "--public-key", c.file("pub1", pub1)), "SharedSecret")
			if s12 != s21 {
				t.Errorf("derive-shared-secret: %q and %q differ", s12, s21)
			}

			// Grants.
			grantee := "arn:aws:iam::111122223333:role/cli-grantee"
			g := c.ok("create-grant", "--key-id", sym, "--grantee-principal", grantee, "--retiring-principal", "arn:aws:iam::111122223333:user/admin",
				"--operations", "Decrypt", "Encrypt", "--constraints", "EncryptionContextSubset={app=cli}")
			c.ok("list-grants", "--key-id", sym)
			c.ok("list-retirable-grants", "--retiring-principal", "arn:aws:iam::111122223333:user/admin")
			c.ok("encrypt", "--key-id", sym, "--plaintext", msg, "--grant-tokens", str(g, "GrantToken"))
			c.fails("InvalidGrantTokenException", "encrypt", "--key-id", sym, "--plaintext", msg, "--grant-tokens", "bogus")
			c.ok("retire-grant", "--grant-token", str(g, "GrantToken"))
			g2 := c.ok("create-grant", "--key-id", sym, "--grantee-principal", grantee, "--operations", "Decrypt")
			c.ok("revoke-grant", "--key-id", sym, "--grant-id", str(g2, "GrantId"))
			c.fails("NotFoundException", "revoke-grant", "--key-id", sym, "--grant-id", str(g2, "GrantId"))
			c.fails("InvalidGrantIdException", "revoke-grant", "--key-id", sym, "--grant-id", "short")

			for _, op := range c.called {
				covered[op] = true
			}
			out, _ := exec.Command(awsPath, "--version").CombinedOutput()
			t.Logf("%s: %d operations called; not known to this CLI: %v", strings.TrimSpace(string(out)), len(c.called), c.missing)
		})
	}
	for _, op := range kmsOperations {
		cli := strings.ToLower(regexp.MustCompile(`([a-z])([A-Z])`).ReplaceAllString(op, "$1-$2"))
		if !covered[cli] {
			t.Logf("no installed AWS CLI knows %s", cli)
			if !slices.Contains([]string{"derive-shared-secret", "rotate-key-on-demand", "list-key-rotations"}, cli) {
				t.Errorf("the AWS CLI suite never calls %s", cli)
			}
		}
	}
}
