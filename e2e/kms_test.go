package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/cloister/cloister/internal/testenv"
	"github.com/cloister/cloister/parent/parenttest"
)

// The key service's one access key in these tests.
const (
	kmsAccessKey = "AKIAE2EKMSADMIN00001"
	kmsSecretKey = "e2e-kms-admin-secret-access-key"
	kmsRegion    = "us-east-1"
)

// startKMS runs the real `cloister kms serve` with one admin access key.
func startKMS(t testing.TB) *parenttest.KMS {
	t.Helper()
	dir := t.TempDir()
	creds := filepath.Join(dir, "kms-creds.ini")
	content := fmt.Sprintf("[admin]\naws_access_key_id = %s\naws_secret_access_key = %s\n", kmsAccessKey, kmsSecretKey)
	if err := os.WriteFile(creds, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return parenttest.StartKMS(t, dir, parenttest.KMSOptions{Credentials: creds})
}

// kmsClient is an unmodified aws-sdk-go-v2 KMS client for endpoint that
// never retries (so every refusal is seen) and sends through hc.
func kmsClient(endpoint string, hc *http.Client) *awskms.Client {
	return awskms.New(awskms.Options{
		Region:           kmsRegion,
		BaseEndpoint:     aws.String(endpoint),
		Credentials:      credentials.NewStaticCredentialsProvider(kmsAccessKey, kmsSecretKey, ""),
		HTTPClient:       hc,
		RetryMaxAttempts: 1,
	})
}

// sealed creates a key and encrypts plaintext under it.
func sealed(t testing.TB, c *awskms.Client, plaintext []byte) (keyID string, blob []byte) {
	t.Helper()
	ctx := context.Background()
	ck, err := c.CreateKey(ctx, &awskms.CreateKeyInput{Description: aws.String("e2e")})
	if err != nil {
		t.Fatalf("CreateKey: %v", err)
	}
	enc, err := c.Encrypt(ctx, &awskms.EncryptInput{KeyId: ck.KeyMetadata.KeyId, Plaintext: plaintext})
	if err != nil {
		t.Fatalf("Encrypt: %v", err)
	}
	return *ck.KeyMetadata.KeyId, enc.CiphertextBlob
}

// TestKMSIdenticalSignedRequest sends one SigV4-signed Decrypt request,
// byte for byte, three times over fresh connections to the real server. AWS
// KMS treats SigV4 as authentication, not as a nonce: the same signed
// request is accepted again while its time is within the 5-minute skew
// window. Every copy must decrypt.
func TestKMSIdenticalSignedRequest(t *testing.T) {
	k := startKMS(t)
	plaintext := []byte("the same request, three times")
	_, blob := sealed(t, kmsClient(k.Endpoint, http.DefaultClient), plaintext)

	body, _ := json.Marshal(map[string]any{"CiphertextBlob": blob})
	req, _ := http.NewRequest(http.MethodPost, k.Endpoint+"/", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", "TrentService.Decrypt")
	sum := sha256.Sum256(body)
	if err := v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: kmsAccessKey, SecretAccessKey: kmsSecretKey},
		req, hex.EncodeToString(sum[:]), "kms", kmsRegion, time.Now()); err != nil {
		t.Fatal(err)
	}
	wire, err := httputil.DumpRequestOut(req, true)
	if err != nil {
		t.Fatal(err)
	}
	addr := strings.TrimPrefix(k.Endpoint, "http://")
	for i := range 3 {
		status, out := sendRaw(t, addr, wire)
		var dec struct {
			Plaintext []byte
			Type      string `json:"__type"`
			Message   string `json:"message"`
		}
		if err := json.Unmarshal(out, &dec); err != nil {
			t.Fatalf("copy %d: response %q: %v", i+1, out, err)
		}
		if status != http.StatusOK || !bytes.Equal(dec.Plaintext, plaintext) {
			t.Fatalf("copy %d of the same signed request: status %d, %s: %s", i+1, status, dec.Type, dec.Message)
		}
	}
}

// sendRaw writes wire to a new connection to addr and reads one response.
func sendRaw(t *testing.T, addr string, wire []byte) (int, []byte) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write(wire); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

// awsEnv is the environment for boto3 and the AWS CLI: the test's static
// credentials and region, and no configuration from the host.
func awsEnv(t *testing.T) []string {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "AWS_") {
			env = append(env, kv)
		}
	}
	return append(env,
		"AWS_ACCESS_KEY_ID="+kmsAccessKey, "AWS_SECRET_ACCESS_KEY="+kmsSecretKey, "AWS_DEFAULT_REGION="+kmsRegion,
		"AWS_CONFIG_FILE="+empty, "AWS_SHARED_CREDENTIALS_FILE="+empty, "AWS_EC2_METADATA_DISABLED=true", "AWS_PAGER=",
		"HOME="+dir)
}

// TestKMSBoto3RepeatedDecrypt runs testdata/kms_boto3.py against the real
// server: boto3 creates a key, encrypts, and decrypts the same ciphertext
// eight times in a tight loop. boto3 signs identical calls within one
// second identically; every decrypt must succeed, as on AWS.
func TestKMSBoto3RepeatedDecrypt(t *testing.T) {
	python := testenv.LookPath(t, "python3", "apt-get install python3-boto3")
	probe := exec.Command(python, "-c", "import boto3")
	probe.Env = awsEnv(t)
	testenv.Require(t, probe.Run() == nil, "the boto3 module for "+python, "apt-get install python3-boto3")
	k := startKMS(t)
	cmd := exec.Command(python, filepath.Join("testdata", "kms_boto3.py"), k.Endpoint, "8")
	cmd.Env = awsEnv(t)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var res struct {
		Decrypts           int    `json:"decrypts"`
		DistinctSignatures int    `json:"distinct_signatures"`
		Error              string `json:"error"`
	}
	if jerr := json.Unmarshal(out, &res); jerr != nil {
		t.Fatalf("kms_boto3.py: %v (%v)\nstdout: %s\nstderr: %s", err, jerr, out, stderr.String())
	}
	if err != nil || res.Error != "" || res.Decrypts != 8 {
		t.Fatalf("boto3: %d of 8 decrypts succeeded: %s (%v)\nstderr: %s", res.Decrypts, res.Error, err, stderr.String())
	}
	t.Logf("boto3: 8 decrypts of the same ciphertext succeeded, sent with %d distinct signatures", res.DistinctSignatures)
}

// TestKMSAWSCLIRepeatedDecrypt uses the AWS CLI against the real server:
// create-key and encrypt, then four `aws kms decrypt` of the same
// ciphertext started at once (so they sign within about one second, the
// same request). Every decrypt must print the plaintext.
func TestKMSAWSCLIRepeatedDecrypt(t *testing.T) {
	awsCLI := testenv.LookPath(t, "aws", "apt-get install awscli")
	k := startKMS(t)
	env := awsEnv(t)
	dir := t.TempDir()
	run := func(args ...string) (string, error) {
		cmd := exec.Command(awsCLI, append([]string{"--endpoint-url", k.Endpoint, "--region", kmsRegion, "--output", "text"}, args...)...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	keyID, err := run("kms", "create-key", "--description", "aws cli repeated decrypt", "--query", "KeyMetadata.KeyId")
	if err != nil {
		t.Fatalf("aws kms create-key: %v: %s", err, keyID)
	}
	plaintext := "decrypted by four aws processes at once"
	ptFile, ctFile := filepath.Join(dir, "plaintext"), filepath.Join(dir, "ciphertext")
	if err := os.WriteFile(ptFile, []byte(plaintext), 0o600); err != nil {
		t.Fatal(err)
	}
	ct64, err := run("kms", "encrypt", "--key-id", keyID, "--plaintext", "fileb://"+ptFile, "--query", "CiphertextBlob")
	if err != nil {
		t.Fatalf("aws kms encrypt: %v: %s", err, ct64)
	}
	ct, err := base64.StdEncoding.DecodeString(ct64)
	if err != nil {
		t.Fatalf("aws kms encrypt printed %q: %v", ct64, err)
	}
	if err := os.WriteFile(ctFile, ct, 0o600); err != nil {
		t.Fatal(err)
	}
	const n = 4
	outs, errs := make([]string, n), make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			outs[i], errs[i] = run("kms", "decrypt", "--ciphertext-blob", "fileb://"+ctFile, "--query", "Plaintext")
		})
	}
	wg.Wait()
	want := base64.StdEncoding.EncodeToString([]byte(plaintext))
	for i := range n {
		if errs[i] != nil || outs[i] != want {
			t.Errorf("aws kms decrypt %d of %d: %v: %s", i+1, n, errs[i], outs[i])
		}
	}
}

// duplicatingTransport sends every request twice, the same signed bytes
// each time, and returns the second response, as a proxy that retries a
// request whose first response it lost does.
type duplicatingTransport struct{ base http.RoundTripper }

func (d duplicatingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	var body []byte
	if r.Body != nil {
		b, err := io.ReadAll(r.Body)
		r.Body.Close()
		if err != nil {
			return nil, err
		}
		body = b
	}
	send := func() (*http.Response, error) {
		c := r.Clone(r.Context())
		c.Body = io.NopCloser(bytes.NewReader(body))
		return d.base.RoundTrip(c)
	}
	resp, err := send()
	if err != nil {
		return nil, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return send()
}

// loadMix runs workers aws-sdk-go-v2 clients against endpoint, each making
// perWorker calls: two in three Decrypt one shared ciphertext (identical
// request contents), the third Encrypts a distinct plaintext. Every other
// worker sends each request twice (duplicatingTransport). It returns
// the number of requests answered and the errors, at most 10 of them.
func loadMix(t testing.TB, endpoint string, workers, perWorker int) (int64, []error) {
	t.Helper()
	setup := kmsClient(endpoint, http.DefaultClient)
	keyID, blob := sealed(t, setup, []byte("shared secret"))
	var (
		done   atomic.Int64
		mu     sync.Mutex
		failed []error
	)
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if len(failed) < 10 {
			failed = append(failed, err)
		}
	}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			tr := http.DefaultTransport.(*http.Transport).Clone()
			hc := &http.Client{Transport: tr}
			per := 1
			if w%2 == 1 {
				hc.Transport, per = duplicatingTransport{tr}, 2
			}
			c := kmsClient(endpoint, hc)
			ctx := context.Background()
			for i := range perWorker {
				var err error
				switch i % 3 {
				case 0, 1:
					var out *awskms.DecryptOutput
					if out, err = c.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: blob}); err == nil && string(out.Plaintext) != "shared secret" {
						err = fmt.Errorf("Decrypt returned %q", out.Plaintext)
					}
				case 2:
					pt := fmt.Appendf(nil, "worker %d request %d", w, i)
					_, err = c.Encrypt(ctx, &awskms.EncryptInput{KeyId: aws.String(keyID), Plaintext: pt})
				}
				if err != nil {
					fail(fmt.Errorf("worker %d request %d: %w", w, i, err))
					continue
				}
				done.Add(int64(per))
			}
		})
	}
	wg.Wait()
	return done.Load(), failed
}

// TestKMSSustainedLoad drives the real server with 8 concurrent
// aws-sdk-go-v2 clients, 4,800 calls and 7,200 requests in all (half the
// clients send every request twice, byte for byte): every request must
// succeed. The key service keeps no per-request state, so the count is
// unbounded; BenchmarkKMSDecryptSustained runs the same for minutes.
func TestKMSSustainedLoad(t *testing.T) {
	k := startKMS(t)
	const workers, perWorker = 8, 600
	n, errs := loadMix(t, k.Endpoint, workers, perWorker)
	for _, err := range errs {
		t.Error(err)
	}
	if want := int64(workers / 2 * perWorker * 3); n != want {
		t.Fatalf("%d of %d requests succeeded", n, want)
	}
}

// BenchmarkKMSDecryptSustained measures Decrypt throughput of the real
// server under 4×GOMAXPROCS concurrent aws-sdk-go-v2 clients, all
// decrypting the same ciphertext, and fails on any error. Run it for
// minutes to check that nothing accumulates:
//
//	go test -run '^$' -bench KMSDecryptSustained -benchtime 3m ./e2e/
func BenchmarkKMSDecryptSustained(b *testing.B) {
	k := startKMS(b)
	_, blob := sealed(b, kmsClient(k.Endpoint, http.DefaultClient), []byte("sustained"))
	var errs atomic.Int64
	var first atomic.Value
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		c := kmsClient(k.Endpoint, &http.Client{Transport: tr})
		ctx := context.Background()
		for pb.Next() {
			if _, err := c.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: blob}); err != nil {
				if errs.Add(1) == 1 {
					first.Store(err.Error())
				}
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(errs.Load()), "errors")
	if n := errs.Load(); n > 0 {
		b.Fatalf("%d of %d Decrypts failed; first: %v", n, b.N, first.Load())
	}
}

// pythonsWithBoto3 lists the Python interpreters that have boto3: Debian's
// /usr/bin/python3 (python3-boto3) and, when it is another one, the
// python3 on PATH. At least one is required.
func pythonsWithBoto3(t *testing.T) []string {
	t.Helper()
	var found []string
	seen := map[string]bool{}
	for _, p := range []string{"/usr/bin/python3", "python3"} {
		path, err := exec.LookPath(p)
		if err != nil {
			continue
		}
		probe := exec.Command(path, "-c", "import boto3, sys; print(sys.executable)")
		probe.Env = awsEnv(t)
		out, err := probe.Output()
		exe := strings.TrimSpace(string(out))
		if err != nil || seen[exe] {
			continue
		}
		seen[exe] = true
		found = append(found, path)
	}
	testenv.Require(t, len(found) > 0, "python3 with boto3", "apt-get install python3-boto3")
	return found
}

// TestKMSBoto3AllOperations runs testdata/kms_boto3_ops.py against the
// real server with every boto3 found: every operation the key service
// implements, with its error codes, through unmodified clients (and, for
// the operations an older botocore predates, botocore's own signer).
func TestKMSBoto3AllOperations(t *testing.T) {
	for _, python := range pythonsWithBoto3(t) {
		t.Run(python, func(t *testing.T) {
			k := startKMS(t)
			cmd := exec.Command(python, filepath.Join("testdata", "kms_boto3_ops.py"), k.Endpoint)
			cmd.Env = awsEnv(t)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			var res struct {
				Passed        []string `json:"passed"`
				Failed        []struct{ Check, Error string }
				Operations    []string `json:"operations"`
				RawOperations []string `json:"raw_operations"`
				Botocore      string   `json:"botocore"`
			}
			if jerr := json.Unmarshal(out, &res); jerr != nil {
				t.Fatalf("kms_boto3_ops.py: %v (%v)\nstdout: %s\nstderr: %s", err, jerr, out, stderr.String())
			}
			for _, f := range res.Failed {
				t.Errorf("boto3 check %q: %s", f.Check, f.Error)
			}
			if err != nil && len(res.Failed) == 0 {
				t.Fatalf("kms_boto3_ops.py: %v\nstderr: %s", err, stderr.String())
			}
			// Every AWS operation the server implements was called.
			for _, op := range kmsOperations {
				if !slices.Contains(res.Operations, op) {
					t.Errorf("the boto3 suite never calls %s", op)
				}
			}
			t.Logf("botocore %s: %d checks passed, %d operations (%d through botocore's signer: %v)", res.Botocore, len(res.Passed), len(res.Operations), len(res.RawOperations), res.RawOperations)
		})
	}
}

// kmsOperations are the AWS KMS operations the key service implements.
var kmsOperations = []string{"CreateKey", "DescribeKey", "ListKeys", "EnableKey", "DisableKey", "CreateAlias", "ListAliases", "DeleteAlias",
	"UpdateAlias", "Encrypt", "Decrypt", "ReEncrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext", "GenerateRandom", "GetKeyPolicy",
	"PutKeyPolicy", "ListKeyPolicies", "EnableKeyRotation", "DisableKeyRotation", "GetKeyRotationStatus", "RotateKeyOnDemand", "ListKeyRotations",
	"ScheduleKeyDeletion", "CancelKeyDeletion", "Sign", "Verify", "GetPublicKey", "GenerateMac", "VerifyMac", "GenerateDataKeyPair",
	"GenerateDataKeyPairWithoutPlaintext", "DeriveSharedSecret", "TagResource", "UntagResource", "ListResourceTags", "UpdateKeyDescription",
	"CreateGrant", "ListGrants", "ListRetirableGrants", "RetireGrant", "RevokeGrant"}

// BenchmarkKMSDecryptStubFloor is the floor BenchmarkKMSDecryptSustained
// is compared with: the same aws-sdk-go-v2 clients, parallelism and
// loopback HTTP against a stub that reads the request and returns a fixed
// Decrypt answer (no SigV4 check, no key lookup, no cryptography).
//
//	go test -run '^$' -bench 'KMSDecrypt(Sustained|StubFloor)' -benchtime 20s ./e2e/
func BenchmarkKMSDecryptStubFloor(b *testing.B) {
	answer, _ := json.Marshal(map[string]any{"KeyId": "arn:aws:kms:us-east-1:111122223333:key/stub", "Plaintext": []byte("sustained"), "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"})
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		w.Header().Set("x-amzn-RequestId", "stub")
		w.Write(answer)
	}))
	defer hs.Close()
	blob := make([]byte, 80)
	var errs atomic.Int64
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		c := kmsClient(hs.URL, &http.Client{Transport: tr})
		ctx := context.Background()
		for pb.Next() {
			if _, err := c.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: blob}); err != nil {
				errs.Add(1)
			}
		}
	})
	b.StopTimer()
	if n := errs.Load(); n > 0 {
		b.Fatalf("%d of %d stub Decrypts failed", n, b.N)
	}
}
