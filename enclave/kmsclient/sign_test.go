package kmsclient

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"net"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
)

// signPolicy allows kms:Sign to the enclave role only from an image whose
// PCR0 is 0xaa repeated.
const signPolicy = `{"Statement":[
 {"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:user/admin"},"Action":"kms:*","Resource":"*"},
 {"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:role/enclave"},"Action":"kms:Sign","Resource":"*",
  "Condition":{"StringEqualsIgnoreCase":{"kms:RecipientAttestation:PCR0":"` + "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" + `"}}}]}`

// TestAttestedSign signs through Client.Sign, which attests the digest and
// sends it in the CloisterAttestation member: the signature verifies with
// the public key; the plain SDK call and another image are refused.
func TestAttestedSign(t *testing.T) {
	addr, admin, iss := serve(t)
	ctx := context.Background()
	ck, err := admin.CreateKey(ctx, &awskms.CreateKeyInput{KeySpec: types.KeySpecEccNistP256, KeyUsage: types.KeyUsageTypeSignVerify, Policy: aws.String(signPolicy)})
	if err != nil {
		t.Fatal(err)
	}
	att := &issuerAttester{iss: iss, pcrs: map[int][]byte{0: bytes.Repeat([]byte{0xaa}, 48)}}
	c, err := New(Config{Attester: att, Region: "us-east-1", Endpoint: "http://kms.invalid", RetryMaxAttempts: 1,
		Credentials: credentials.NewStaticCredentialsProvider("AKIDENCLAVE", "s2", ""),
		Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		}})
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("firmware image 7")
	for _, mt := range []types.MessageType{types.MessageTypeRaw, types.MessageTypeDigest} {
		digest := sha256.Sum256(msg)
		in := msg
		if mt == types.MessageTypeDigest {
			in = digest[:]
		}
		sig, err := c.Sign(ctx, SignInput{KeyID: *ck.KeyMetadata.KeyId, Message: in, MessageType: mt, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
		if err != nil {
			t.Fatalf("Sign %s: %v", mt, err)
		}
		pk, err := admin.GetPublicKey(ctx, &awskms.GetPublicKeyInput{KeyId: ck.KeyMetadata.KeyId})
		if err != nil {
			t.Fatal(err)
		}
		pub, _ := x509.ParsePKIXPublicKey(pk.PublicKey)
		if !ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), digest[:], sig.Signature) || sig.KeyID != *ck.KeyMetadata.Arn {
			t.Fatalf("%s signature does not verify", mt)
		}
	}
	// The same call without the extension member is denied by the policy.
	_, err = c.KMS().Sign(ctx, &awskms.SignInput{KeyId: ck.KeyMetadata.KeyId, Message: msg, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
	if err == nil || !strings.Contains(err.Error(), "AccessDeniedException") {
		t.Fatalf("unattested Sign: %v", err)
	}
	att.pcrs[0] = bytes.Repeat([]byte{0xbb}, 48)
	_, err = c.Sign(ctx, SignInput{KeyID: *ck.KeyMetadata.KeyId, Message: msg, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
	if err == nil || !strings.Contains(err.Error(), "AccessDeniedException") {
		t.Fatalf("Sign from another image: %v", err)
	}
	if _, err := c.Sign(ctx, SignInput{KeyID: "k", Message: make([]byte, 31), MessageType: types.MessageTypeDigest, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256}); err == nil {
		t.Fatal("a short digest was sent")
	}
}
