package kms

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/cloister/cloister/attest"
	"github.com/cloister/cloister/internal/testenv"
	"github.com/cloister/cloister/kms/cms"
)

func (e *env) attestDoc(t testing.TB, p map[int][]byte, spki []byte) []byte {
	t.Helper()
	doc, err := e.issuer.Issue(attest.IssueRequest{PCRs: p, PublicKey: spki})
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

func recipient(doc []byte) *types.RecipientInfo {
	return &types.RecipientInfo{AttestationDocument: doc, KeyEncryptionAlgorithm: types.KeyEncryptionMechanismRsaesOaepSha256}
}

func TestAttestedDataKey(t *testing.T) {
	expiredIssuer, err := attest.NewIssuer(attest.IssuerConfig{Clock: func() time.Time { return time.Now().Add(-5 * time.Hour) }})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, envOpts{extraRoot: []*attest.Issuer{expiredIssuer}})
	ctx := context.Background()
	ck, err := e.admin.CreateKey(ctx, &awskms.CreateKeyInput{Policy: aws.String(attestationPolicy())})
	if err != nil {
		t.Fatal(err)
	}
	keyID := ck.KeyMetadata.KeyId
	rk := recipientKey(t)
	good := e.attestDoc(t, pcrs(0x11), rk.spki)

	// A policy on PCR0 releases a data key, enveloped to the enclave key.
	gdk, err := e.enclave.GenerateDataKey(ctx, &awskms.GenerateDataKeyInput{KeyId: keyID, KeySpec: types.DataKeySpecAes256, Recipient: recipient(good)})
	if err != nil {
		t.Fatalf("GenerateDataKey with Recipient: %v", err)
	}
	if gdk.Plaintext != nil || len(gdk.CiphertextForRecipient) == 0 || len(gdk.CiphertextBlob) == 0 {
		t.Fatalf("attested response: plaintext %x, CFR %d bytes", gdk.Plaintext, len(gdk.CiphertextForRecipient))
	}
	dataKey, err := cms.Decrypt(gdk.CiphertextForRecipient, rk.priv)
	if err != nil || len(dataKey) != 32 {
		t.Fatalf("cms.Decrypt(CFR) = %d bytes, %v", len(dataKey), err)
	}
	// The same document may be reused within its age limit (as on AWS).
	dec, err := e.enclave.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: gdk.CiphertextBlob, Recipient: recipient(good)})
	if err != nil {
		t.Fatalf("Decrypt with Recipient: %v", err)
	}
	if dec.Plaintext != nil || *dec.KeyId != *ck.KeyMetadata.Arn {
		t.Fatalf("attested Decrypt returned plaintext or wrong key: %+v", dec)
	}
	got, err := cms.Decrypt(dec.CiphertextForRecipient, rk.priv)
	if err != nil || !bytes.Equal(got, dataKey) {
		t.Fatalf("Decrypt CFR = %x, %v; want the data key", got, err)
	}
	// The admin (no attestation needed) sees the same data key.
	plain, err := e.admin.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: gdk.CiphertextBlob})
	if err != nil || !bytes.Equal(plain.Plaintext, dataKey) {
		t.Fatalf("admin Decrypt: %v", err)
	}
	// openssl decrypts the CiphertextForRecipient too.
	openssl := testenv.LookPath(t, "openssl", "apt-get install openssl")
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "cfr.der"), dec.CiphertextForRecipient, 0o600)
	os.WriteFile(filepath.Join(dir, "key.pem"), pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rk.priv)}), 0o600)
	out, err := exec.Command(openssl, "cms", "-decrypt", "-inform", "DER", "-binary", "-in", filepath.Join(dir, "cfr.der"), "-inkey", filepath.Join(dir, "key.pem")).Output()
	if err != nil || !bytes.Equal(out, dataKey) {
		t.Fatalf("openssl cms -decrypt: %x, %v", out, err)
	}
	// GenerateRandom with a Recipient.
	gr, err := e.enclave.GenerateRandom(ctx, &awskms.GenerateRandomInput{NumberOfBytes: aws.Int32(48), Recipient: recipient(good)})
	if err != nil || gr.Plaintext != nil {
		t.Fatalf("GenerateRandom with Recipient: %v", err)
	}
	if r, err := cms.Decrypt(gr.CiphertextForRecipient, rk.priv); err != nil || len(r) != 48 {
		t.Fatalf("GenerateRandom CFR: %d bytes, %v", len(r), err)
	}

	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecSPKI, _ := x509.MarshalPKIXPublicKey(&ecKey.PublicKey)
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	smallSPKI, _ := x509.MarshalPKIXPublicKey(&small.PublicKey)
	stale, err := e.issuer.Issue(attest.IssueRequest{PCRs: pcrs(0x11), PublicKey: rk.spki, Timestamp: time.Now().Add(-10 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	expired, err := expiredIssuer.Issue(attest.IssueRequest{PCRs: pcrs(0x11), PublicKey: rk.spki, Timestamp: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	untrustedIssuer, _ := attest.NewIssuer(attest.IssuerConfig{})
	untrusted, _ := untrustedIssuer.Issue(attest.IssueRequest{PCRs: pcrs(0x11), PublicKey: rk.spki})
	badSig := bytes.Clone(good)
	badSig[len(badSig)-1] ^= 1

	tests := []struct {
		name   string
		r      *types.RecipientInfo
		code   string
		reason string // in the audit line
	}{
		{"no attestation", nil, "AccessDeniedException", "no statement allows"},
		{"different PCR0", recipient(e.attestDoc(t, pcrs(0x22), rk.spki)), "AccessDeniedException", "no statement allows"},
		{"debug enclave", recipient(e.attestDoc(t, debugPCRs(), rk.spki)), "AccessDeniedException", "no statement allows"},
		{"stale document", recipient(stale), "AccessDeniedException", "stale"},
		{"expired certificate", recipient(expired), "AccessDeniedException", "expired"},
		{"untrusted root", recipient(untrusted), "AccessDeniedException", "untrusted root"},
		{"bad signature", recipient(badSig), "AccessDeniedException", "signature"},
		{"missing public key", recipient(e.attestDoc(t, pcrs(0x11), nil)), "ValidationException", "RSA public key"},
		{"EC public key", recipient(e.attestDoc(t, pcrs(0x11), ecSPKI)), "ValidationException", "RSA public key"},
		{"RSA-1024", recipient(e.attestDoc(t, pcrs(0x11), smallSPKI)), "ValidationException", "at least 2048"},
		{"not a document", recipient([]byte("not cbor")), "ValidationException", "not a valid attestation document"},
		{"wrong algorithm", &types.RecipientInfo{AttestationDocument: good, KeyEncryptionAlgorithm: "RSAES_OAEP_SHA_1"}, "ValidationException", "RSAES_OAEP_SHA_256"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.enclave.GenerateDataKey(ctx, &awskms.GenerateDataKeyInput{KeyId: keyID, NumberOfBytes: aws.Int32(32), Recipient: tc.r})
			wantCode(t, err, tc.code)
			_, err = e.enclave.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: gdk.CiphertextBlob, Recipient: tc.r})
			wantCode(t, err, tc.code)
			if !strings.Contains(lastAudit(t, e, "Decrypt")["reason"].(string), tc.reason) {
				t.Fatalf("audit reason %q lacks %q", lastAudit(t, e, "Decrypt")["reason"], tc.reason)
			}
		})
	}

	// The audit trail names the principal, op, key, PCRs and decision.
	e.enclave.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: gdk.CiphertextBlob, Recipient: recipient(e.attestDoc(t, pcrs(0x22), rk.spki))})
	a := lastAudit(t, e, "Decrypt")
	if a["principal"] != enclaveRole || a["allowed"] != false || a["key"] != *ck.KeyMetadata.Arn ||
		a["pcrs"].(map[string]any)["0"] != strings.Repeat("22", 48) {
		t.Fatalf("audit line %v", a)
	}
	e.enclave.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: gdk.CiphertextBlob, Recipient: recipient(good)})
	if a := lastAudit(t, e, "Decrypt"); a["allowed"] != true || !strings.Contains(a["reason"].(string), `"Enclave"`) {
		t.Fatalf("audit line for allowed decrypt %v", a)
	}
}

// lastAudit returns the last "kms decision" log line for op.
func lastAudit(t testing.TB, e *env, op string) map[string]any {
	t.Helper()
	var last map[string]any
	for _, line := range strings.Split(e.logs.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == "kms decision" && m["op"] == op {
			last = m
		}
	}
	if last == nil {
		t.Fatalf("no audit line for %s", op)
	}
	return last
}
