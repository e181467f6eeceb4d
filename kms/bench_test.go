package kms

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/cloister/cloister/attest"
	"github.com/cloister/cloister/kms/cms"
)

// benchSetup creates an attestation-gated key, a data key ciphertext and an
// attestation document for the enclave principal.
func benchSetup(b *testing.B) (*env, []byte, []byte) {
	e := newEnv(b, envOpts{})
	ctx := context.Background()
	ck, err := e.admin.CreateKey(ctx, &awskms.CreateKeyInput{Policy: aws.String(attestationPolicy())})
	if err != nil {
		b.Fatal(err)
	}
	gdk, err := e.admin.GenerateDataKey(ctx, &awskms.GenerateDataKeyInput{KeyId: ck.KeyMetadata.KeyId, NumberOfBytes: aws.Int32(32)})
	if err != nil {
		b.Fatal(err)
	}
	doc := e.attestDoc(b, pcrs(0x11), recipientKey(b).spki)
	return e, gdk.CiphertextBlob, doc
}

// BenchmarkDecryptWithRecipient measures the whole server handler
// (in-process, no network) for an attested Decrypt: SigV4 check, JSON,
// attestation verification with a warm chain cache, policy, key material,
// blob decryption and the CMS envelope. Requests are signed before the
// timer starts.
func BenchmarkDecryptWithRecipient(b *testing.B) {
	e, blob, doc := benchSetup(b)
	body, _ := json.Marshal(decryptInput{CiphertextBlob: blob, Recipient: &RecipientInfo{AttestationDocument: doc, KeyEncryptionAlgorithm: "RSAES_OAEP_SHA_256"}})
	sum := sha256.Sum256(body)
	signer := v4.NewSigner()
	reqs := make([]*http.Request, b.N)
	now := time.Now()
	for i := range reqs {
		r := httptest.NewRequest(http.MethodPost, "http://127.0.0.1/", bytes.NewReader(body))
		r.Header.Set("Content-Type", "application/x-amz-json-1.1")
		r.Header.Set("X-Amz-Target", "TrentService.Decrypt")
		r.Header.Set("Amz-Sdk-Invocation-Id", hex.EncodeToString(sum[:8])+string(rune('a'+i%26))+time.Duration(i).String())
		if err := signer.SignHTTP(context.Background(), aws.Credentials{AccessKeyID: "AKIDENCLAVE", SecretAccessKey: "enclave-secret"}, r, hex.EncodeToString(sum[:]), "kms", "us-east-1", now); err != nil {
			b.Fatal(err)
		}
		reqs[i] = r
	}
	// Warm the attestation caches.
	if _, err := e.srv.attest.Verify(doc, time.Now()); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		w := httptest.NewRecorder()
		e.srv.ServeHTTP(w, reqs[i])
		if w.Code != http.StatusOK {
			b.Fatalf("status %d: %s", w.Code, w.Body)
		}
	}
}

// BenchmarkDecryptParts is the floor the handler is compared with: the
// unavoidable work of an attested Decrypt (warm attestation verification,
// RSA-OAEP key wrap and AES-CBC in the CMS envelope).
func BenchmarkDecryptParts(b *testing.B) {
	e, _, doc := benchSetup(b)
	v := e.srv.attest
	pt := make([]byte, 32)
	rand.Read(pt)
	if _, err := v.Verify(doc, time.Now()); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		vd, err := v.Verify(doc, time.Now())
		if err != nil {
			b.Fatal(err)
		}
		d := vd.Document()
		if err := (attest.Policy{AllowDebug: true}).Evaluate(vd, time.Now()); err != nil {
			b.Fatal(err)
		}
		if _, err := cms.Encrypt(rand.Reader, d.PublicKey, pt); err != nil {
			b.Fatal(err)
		}
	}
}
