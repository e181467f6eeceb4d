package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"

	"github.com/cloister/cloister/internal/testenv"
	"github.com/cloister/cloister/parent/parenttest"
)

// startKMSPair runs two `cloister kms serve` processes on one fresh
// PostgreSQL database with one root key.
func startKMSPair(t testing.TB) (a, b *parenttest.KMS) {
	t.Helper()
	db := testenv.Postgres(t, "e2e")
	dir := t.TempDir()
	creds := filepath.Join(dir, "kms-creds.ini")
	content := fmt.Sprintf("[admin]\naws_access_key_id = %s\naws_secret_access_key = %s\n", kmsAccessKey, kmsSecretKey)
	if err := os.WriteFile(creds, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	a = parenttest.StartKMS(t, filepath.Join(dir), parenttest.KMSOptions{Credentials: creds, Store: db})
	bdir := filepath.Join(dir, "b")
	if err := os.Mkdir(bdir, 0o700); err != nil {
		t.Fatal(err)
	}
	b = parenttest.StartKMS(t, bdir, parenttest.KMSOptions{Credentials: creds, Store: db, RootKey: a.RootKey})
	return a, b
}

func awsCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	if err != nil {
		return err.Error()
	}
	return ""
}

// TestKMSTwoServersOneDatabase: two servers on one PostgreSQL database are
// one service. A key created, rotated or disabled through one is seen at
// once through the other; interleaved clients encrypt through one and
// decrypt through the other; concurrent CreateAlias of one name from both
// leaves exactly one winner and AlreadyExistsException for the other.
func TestKMSTwoServersOneDatabase(t *testing.T) {
	a, b := startKMSPair(t)
	ca, cb := kmsClient(a.Endpoint, http.DefaultClient), kmsClient(b.Endpoint, http.DefaultClient)
	ctx := context.Background()

	ck, err := ca.CreateKey(ctx, &awskms.CreateKeyInput{Description: aws.String("made through A")})
	if err != nil {
		t.Fatal(err)
	}
	id := ck.KeyMetadata.KeyId
	d, err := cb.DescribeKey(ctx, &awskms.DescribeKeyInput{KeyId: id})
	if err != nil || *d.KeyMetadata.Description != "made through A" {
		t.Fatalf("B does not see the key A created: %v", err)
	}
	// Rotation through B: A lists it and encrypts under the new version,
	// B decrypts.
	if _, err := cb.RotateKeyOnDemand(ctx, &awskms.RotateKeyOnDemandInput{KeyId: id}); err != nil {
		t.Fatal(err)
	}
	lr, err := ca.ListKeyRotations(ctx, &awskms.ListKeyRotationsInput{KeyId: id})
	if err != nil || len(lr.Rotations) != 1 {
		t.Fatalf("A after B's rotation: %+v %v", lr, err)
	}
	enc, err := ca.Encrypt(ctx, &awskms.EncryptInput{KeyId: id, Plaintext: []byte("v2")})
	if err != nil {
		t.Fatal(err)
	}
	if dec, err := cb.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob}); err != nil || string(dec.Plaintext) != "v2" {
		t.Fatalf("B decrypting A's ciphertext: %v", err)
	}
	// Disable through A: B refuses at once; enable through B: A works.
	if _, err := ca.DisableKey(ctx, &awskms.DisableKeyInput{KeyId: id}); err != nil {
		t.Fatal(err)
	}
	if _, err := cb.Encrypt(ctx, &awskms.EncryptInput{KeyId: id, Plaintext: []byte("x")}); awsCode(err) != "DisabledException" {
		t.Fatalf("B after A disabled the key: %v", err)
	}
	if _, err := cb.EnableKey(ctx, &awskms.EnableKeyInput{KeyId: id}); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Encrypt(ctx, &awskms.EncryptInput{KeyId: id, Plaintext: []byte("x")}); err != nil {
		t.Fatalf("A after B enabled the key: %v", err)
	}

	// Interleaved clients.
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := range 6 {
		wg.Go(func() {
			enc, dec := ca, cb
			if w%2 == 1 {
				enc, dec = cb, ca
			}
			for i := range 25 {
				pt := fmt.Appendf(nil, "worker %d message %d", w, i)
				e, err := enc.Encrypt(ctx, &awskms.EncryptInput{KeyId: id, Plaintext: pt, EncryptionContext: map[string]string{"w": fmt.Sprint(w)}})
				if err != nil {
					errs <- err
					return
				}
				d, err := dec.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: e.CiphertextBlob, EncryptionContext: map[string]string{"w": fmt.Sprint(w)}})
				if err != nil || !bytes.Equal(d.Plaintext, pt) {
					errs <- fmt.Errorf("worker %d message %d: %v", w, i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	// Concurrent CreateAlias of one name from both servers.
	k2, err := cb.CreateKey(ctx, &awskms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}
	for round := range 20 {
		name := fmt.Sprintf("alias/race-%d", round)
		var start sync.WaitGroup
		start.Add(1)
		res := make([]error, 2)
		targets := []*string{id, k2.KeyMetadata.KeyId}
		var done sync.WaitGroup
		for i, c := range []*awskms.Client{ca, cb} {
			done.Go(func() {
				start.Wait()
				_, res[i] = c.CreateAlias(ctx, &awskms.CreateAliasInput{AliasName: aws.String(name), TargetKeyId: targets[i]})
			})
		}
		start.Done()
		done.Wait()
		winner := -1
		for i, err := range res {
			switch awsCode(err) {
			case "":
				if winner >= 0 {
					t.Fatalf("%s: both servers created the alias", name)
				}
				winner = i
			case "AlreadyExistsException":
			default:
				t.Fatalf("%s: server %d: %v", name, i, err)
			}
		}
		if winner < 0 {
			t.Fatalf("%s: neither server created the alias: %v", name, res)
		}
		for _, c := range []*awskms.Client{ca, cb} {
			d, err := c.DescribeKey(ctx, &awskms.DescribeKeyInput{KeyId: aws.String(name)})
			if err != nil || *d.KeyMetadata.KeyId != *targets[winner] {
				t.Fatalf("%s resolves differently through the servers: %v", name, err)
			}
		}
	}
}

// TestKMSKillNineLosesNothing loads server A with CreateKey and
// GenerateDataKey calls, kills it with SIGKILL in the middle, and checks
// through server B that every key and data key A acknowledged is there and
// decrypts.
func TestKMSKillNineLosesNothing(t *testing.T) {
	a, b := startKMSPair(t)
	ctx := context.Background()
	type acked struct {
		keyID     string
		blob, key []byte
	}
	var (
		mu     sync.Mutex
		got    []acked
		killed atomic.Bool
		wg     sync.WaitGroup
	)
	for w := range 6 {
		wg.Go(func() {
			tr := http.DefaultTransport.(*http.Transport).Clone()
			c := kmsClient(a.Endpoint, &http.Client{Transport: tr, Timeout: 10 * time.Second})
			for i := 0; !killed.Load(); i++ {
				ck, err := c.CreateKey(ctx, &awskms.CreateKeyInput{Description: aws.String(fmt.Sprintf("w%d-%d", w, i))})
				if err != nil {
					if killed.Load() {
						return
					}
					t.Errorf("before the kill: %v", err)
					return
				}
				gdk, err := c.GenerateDataKey(ctx, &awskms.GenerateDataKeyInput{KeyId: ck.KeyMetadata.KeyId, KeySpec: types.DataKeySpecAes256})
				mu.Lock()
				if err == nil {
					got = append(got, acked{*ck.KeyMetadata.KeyId, gdk.CiphertextBlob, gdk.Plaintext})
				} else {
					got = append(got, acked{keyID: *ck.KeyMetadata.KeyId})
				}
				mu.Unlock()
				if err != nil {
					if killed.Load() {
						return
					}
					t.Errorf("before the kill: %v", err)
					return
				}
			}
		})
	}
	// Kill once A has acknowledged a good number of requests.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n >= 60 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	killed.Store(true)
	a.Kill()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if len(got) < 60 {
		t.Fatalf("only %d requests acknowledged before the kill", len(got))
	}
	cb := kmsClient(b.Endpoint, http.DefaultClient)
	keys, dataKeys := 0, 0
	for _, x := range got {
		if _, err := cb.DescribeKey(ctx, &awskms.DescribeKeyInput{KeyId: aws.String(x.keyID)}); err != nil {
			t.Errorf("acknowledged key %s is lost: %v", x.keyID, err)
			continue
		}
		keys++
		if x.blob == nil {
			continue
		}
		dec, err := cb.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: x.blob})
		if err != nil || !bytes.Equal(dec.Plaintext, x.key) {
			t.Errorf("acknowledged data key of %s does not decrypt: %v", x.keyID, err)
			continue
		}
		dataKeys++
	}
	t.Logf("after kill -9 of one server: %d acknowledged keys and %d data keys all intact through the other", keys, dataKeys)
}

// TestKMSMetricsAndHealth reads /healthz and /metrics of the real server.
func TestKMSMetricsAndHealth(t *testing.T) {
	k := startKMS(t)
	c := kmsClient(k.Endpoint, http.DefaultClient)
	ctx := context.Background()
	if _, err := c.CreateKey(ctx, &awskms.CreateKeyInput{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DescribeKey(ctx, &awskms.DescribeKeyInput{KeyId: aws.String("alias/none")}); awsCode(err) != "NotFoundException" {
		t.Fatalf("DescribeKey of a missing alias: %v", err)
	}
	get := func(path string) (int, string) {
		resp, err := http.Get(k.Endpoint + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/healthz"); code != 200 || strings.TrimSpace(body) != "ok" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	code, body := get("/metrics")
	for _, want := range []string{
		`cloister_kms_requests_total{code="ok",operation="CreateKey"} 1`,
		`cloister_kms_requests_total{code="NotFoundException",operation="DescribeKey"} 1`,
		`cloister_kms_request_duration_seconds_count{operation="CreateKey"} 1`,
	} {
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("/metrics (%d) lacks %s", code, want)
		}
	}
}
