package kms

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
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
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

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

// signedRequests presigns n identical requests for op (so signing is not
// timed) from the admin principal.
func signedRequests(b *testing.B, op string, body []byte, n int) []*http.Request {
	sum := sha256.Sum256(body)
	signer := v4.NewSigner()
	now := time.Now()
	reqs := make([]*http.Request, n)
	for i := range reqs {
		r := httptest.NewRequest(http.MethodPost, "http://127.0.0.1/", bytes.NewReader(body))
		r.Header.Set("Content-Type", "application/x-amz-json-1.1")
		r.Header.Set("X-Amz-Target", "TrentService."+op)
		if err := signer.SignHTTP(context.Background(), aws.Credentials{AccessKeyID: "AKIDADMIN", SecretAccessKey: "admin-secret"}, r, hex.EncodeToString(sum[:]), "kms", "us-east-1", now); err != nil {
			b.Fatal(err)
		}
		reqs[i] = r
	}
	return reqs
}

// BenchmarkSign measures the whole Sign handler in-process (SigV4, JSON,
// key lookup, policy, signature), RAW message of 256 bytes; compare with
// BenchmarkBareSign, the signature alone:
//
//	go test -run '^$' -bench 'Sign' -benchtime 2s ./kms/
func BenchmarkSign(b *testing.B) {
	for _, tc := range []struct{ spec, usage, alg string }{
		{"ECC_NIST_P256", "SIGN_VERIFY", "ECDSA_SHA_256"},
		{"RSA_2048", "SIGN_VERIFY", "RSASSA_PKCS1_V1_5_SHA_256"},
	} {
		b.Run(tc.spec, func(b *testing.B) {
			e := newEnv(b, envOpts{})
			ck, err := e.admin.CreateKey(context.Background(), &awskms.CreateKeyInput{KeySpec: types.KeySpec(tc.spec), KeyUsage: types.KeyUsageType(tc.usage)})
			if err != nil {
				b.Fatal(err)
			}
			body, _ := json.Marshal(signInput{KeyID: *ck.KeyMetadata.KeyId, Message: make([]byte, 256), SigningAlgorithm: tc.alg})
			reqs := signedRequests(b, "Sign", body, b.N+1)
			w := httptest.NewRecorder()
			e.srv.ServeHTTP(w, reqs[b.N]) // warm the key cache
			if w.Code != http.StatusOK {
				b.Fatalf("status %d: %s", w.Code, w.Body)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				w := httptest.NewRecorder()
				e.srv.ServeHTTP(w, reqs[i])
				if w.Code != http.StatusOK {
					b.Fatalf("status %d: %s", w.Code, w.Body)
				}
			}
		})
	}
}

// BenchmarkBareSign is the floor of BenchmarkSign: hashing the same
// message and signing it with the standard library, in process.
func BenchmarkBareSign(b *testing.B) {
	msg := make([]byte, 256)
	b.Run("ECC_NIST_P256", func(b *testing.B) {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		for i := 0; i < b.N; i++ {
			d := sha256.Sum256(msg)
			if _, err := ecdsa.SignASN1(rand.Reader, k, d[:]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("RSA_2048", func(b *testing.B) {
		k, _ := rsa.GenerateKey(rand.Reader, 2048)
		for i := 0; i < b.N; i++ {
			d := sha256.Sum256(msg)
			if _, err := rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, d[:]); err != nil {
				b.Fatal(err)
			}
		}
	})
}
