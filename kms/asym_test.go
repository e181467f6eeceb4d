package kms

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	k1ecdsa "github.com/decred/dcrd/dcrec/secp256k1/v4/ecdsa"
	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/internal/testenv"
	"github.com/cloister/cloister/kms/cms"
)

// signCase is one key spec with one of its signing algorithms.
type signCase struct {
	spec types.KeySpec
	alg  types.SigningAlgorithmSpec
}

// signCases covers every signing algorithm of every signing key spec.
var signCases = []signCase{
	{types.KeySpecEccNistP256, types.SigningAlgorithmSpecEcdsaSha256},
	{types.KeySpecEccNistP384, types.SigningAlgorithmSpecEcdsaSha384},
	{types.KeySpecEccNistP521, types.SigningAlgorithmSpecEcdsaSha512},
	{types.KeySpecEccSecgP256k1, types.SigningAlgorithmSpecEcdsaSha256},
	{types.KeySpecRsa2048, types.SigningAlgorithmSpecRsassaPssSha256},
	{types.KeySpecRsa2048, types.SigningAlgorithmSpecRsassaPssSha384},
	{types.KeySpecRsa2048, types.SigningAlgorithmSpecRsassaPssSha512},
	{types.KeySpecRsa2048, types.SigningAlgorithmSpecRsassaPkcs1V15Sha256},
	{types.KeySpecRsa2048, types.SigningAlgorithmSpecRsassaPkcs1V15Sha384},
	{types.KeySpecRsa2048, types.SigningAlgorithmSpecRsassaPkcs1V15Sha512},
	{types.KeySpecRsa3072, types.SigningAlgorithmSpecRsassaPssSha384},
	{types.KeySpecRsa4096, types.SigningAlgorithmSpecRsassaPkcs1V15Sha512},
}

// keyCache creates each (spec, usage) key once per env.
type keyCache struct {
	mu   sync.Mutex
	e    *env
	keys map[string]string
}

func (kc *keyCache) get(t *testing.T, spec types.KeySpec, usage types.KeyUsageType) string {
	t.Helper()
	kc.mu.Lock()
	defer kc.mu.Unlock()
	id := string(spec) + "/" + string(usage)
	if k, ok := kc.keys[id]; ok {
		return k
	}
	ck, err := kc.e.admin.CreateKey(context.Background(), &awskms.CreateKeyInput{KeySpec: spec, KeyUsage: usage})
	if err != nil {
		t.Fatalf("CreateKey %s %s: %v", spec, usage, err)
	}
	kc.keys[id] = *ck.KeyMetadata.KeyId
	return kc.keys[id]
}

func digestOf(alg types.SigningAlgorithmSpec, msg []byte) (crypto.Hash, []byte) {
	h := hashFor(string(alg))
	d := h.New()
	d.Write(msg)
	return h, d.Sum(nil)
}

// goVerify checks a signature with the standard library (decred for
// secp256k1) and nothing but the DER public key.
func goVerify(t *testing.T, pubDER []byte, alg types.SigningAlgorithmSpec, digest, sig []byte) bool {
	t.Helper()
	h := hashFor(string(alg))
	if pub, err := x509.ParsePKIXPublicKey(pubDER); err == nil {
		switch k := pub.(type) {
		case *ecdsa.PublicKey:
			return ecdsa.VerifyASN1(k, digest, sig)
		case *rsa.PublicKey:
			if strings.Contains(string(alg), "PSS") {
				return rsa.VerifyPSS(k, h, digest, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}) == nil
			}
			return rsa.VerifyPKCS1v15(k, h, digest, sig) == nil
		}
		t.Fatalf("public key is a %T", pub)
	}
	// secp256k1: crypto/x509 does not know the curve.
	pk, err := parsePublic(pubDER)
	if err != nil {
		t.Fatalf("parsing the public key: %v", err)
	}
	s, err := k1ecdsa.ParseDERSignature(sig)
	if err != nil {
		t.Fatalf("secp256k1 signature is not DER: %v", err)
	}
	return s.Verify(digest, pk.(*secp256k1.PublicKey))
}

// opensslVerify checks a signature with the openssl command line over the
// message, given only the DER public key.
func opensslVerify(t *testing.T, openssl string, pubDER []byte, alg types.SigningAlgorithmSpec, msg, sig []byte) error {
	t.Helper()
	dir := t.TempDir()
	files := map[string][]byte{"pub.der": pubDER, "msg": msg, "sig": sig}
	for n, b := range files {
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	h := hashFor(string(alg))
	args := []string{"dgst", "-" + strings.ReplaceAll(strings.ToLower(h.String()), "-", ""), "-verify", filepath.Join(dir, "pub.der"), "-keyform", "DER",
		"-signature", filepath.Join(dir, "sig")}
	if strings.Contains(string(alg), "PSS") {
		args = append(args, "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest")
	}
	out, err := exec.Command(openssl, append(args, filepath.Join(dir, "msg"))...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Verified OK") {
		return fmt.Errorf("openssl %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// TestSignVerify signs with every signing key spec and algorithm, RAW and
// DIGEST, and checks each signature three ways: the service's Verify, Go's
// crypto/ecdsa and crypto/rsa (decred for secp256k1), and OpenSSL, the
// last two with only the public key from GetPublicKey.
func TestSignVerify(t *testing.T) {
	openssl := testenv.LookPath(t, "openssl", "apt-get install openssl")
	e := newEnv(t, envOpts{})
	kc := &keyCache{e: e, keys: map[string]string{}}
	ctx := context.Background()
	msg := []byte("a message signed by the key service")
	for _, tc := range signCases {
		for _, mt := range []types.MessageType{types.MessageTypeRaw, types.MessageTypeDigest} {
			t.Run(string(tc.spec)+"/"+string(tc.alg)+"/"+string(mt), func(t *testing.T) {
				keyID := kc.get(t, tc.spec, types.KeyUsageTypeSignVerify)
				pk, err := e.admin.GetPublicKey(ctx, &awskms.GetPublicKeyInput{KeyId: aws.String(keyID)})
				if err != nil {
					t.Fatal(err)
				}
				if pk.KeySpec != tc.spec || pk.KeyUsage != types.KeyUsageTypeSignVerify || len(pk.SigningAlgorithms) == 0 || pk.EncryptionAlgorithms != nil {
					t.Fatalf("GetPublicKey: spec %s usage %s signing %v encryption %v", pk.KeySpec, pk.KeyUsage, pk.SigningAlgorithms, pk.EncryptionAlgorithms)
				}
				_, digest := digestOf(tc.alg, msg)
				in := msg
				if mt == types.MessageTypeDigest {
					in = digest
				}
				sig, err := e.admin.Sign(ctx, &awskms.SignInput{KeyId: aws.String(keyID), Message: in, MessageType: mt, SigningAlgorithm: tc.alg})
				if err != nil {
					t.Fatalf("Sign: %v", err)
				}
				if sig.SigningAlgorithm != tc.alg || !strings.HasSuffix(*sig.KeyId, keyID) {
					t.Fatalf("Sign answered %s for %s", sig.SigningAlgorithm, *sig.KeyId)
				}
				v, err := e.admin.Verify(ctx, &awskms.VerifyInput{KeyId: aws.String(keyID), Message: in, MessageType: mt, SigningAlgorithm: tc.alg, Signature: sig.Signature})
				if err != nil || !v.SignatureValid {
					t.Fatalf("Verify: %v", err)
				}
				if !goVerify(t, pk.PublicKey, tc.alg, digest, sig.Signature) {
					t.Fatal("Go does not verify the signature with the public key")
				}
				if err := opensslVerify(t, openssl, pk.PublicKey, tc.alg, msg, sig.Signature); err != nil {
					t.Fatal(err)
				}
				// A changed message does not verify.
				bad := bytes.Clone(in)
				bad[0] ^= 1
				_, err = e.admin.Verify(ctx, &awskms.VerifyInput{KeyId: aws.String(keyID), Message: bad, MessageType: mt, SigningAlgorithm: tc.alg, Signature: sig.Signature})
				wantCode(t, err, CodeInvalidSignature)
			})
		}
	}
}

// TestSignErrors checks Sign's and Verify's validation errors.
func TestSignErrors(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx := context.Background()
	kc := &keyCache{e: e, keys: map[string]string{}}
	p256 := aws.String(kc.get(t, types.KeySpecEccNistP256, types.KeyUsageTypeSignVerify))
	sym := aws.String(kc.get(t, types.KeySpecSymmetricDefault, types.KeyUsageTypeEncryptDecrypt))
	rsaEnc := aws.String(kc.get(t, types.KeySpecRsa2048, types.KeyUsageTypeEncryptDecrypt))
	for name, tc := range map[string]struct {
		in   *awskms.SignInput
		code string
	}{
		"wrong algorithm for the curve": {&awskms.SignInput{KeyId: p256, Message: []byte("m"), SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha384}, CodeInvalidKeyUsage},
		"RSA algorithm on an EC key":    {&awskms.SignInput{KeyId: p256, Message: []byte("m"), SigningAlgorithm: types.SigningAlgorithmSpecRsassaPssSha256}, CodeInvalidKeyUsage},
		"symmetric key":                 {&awskms.SignInput{KeyId: sym, Message: []byte("m"), SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256}, CodeInvalidKeyUsage},
		"encryption RSA key":            {&awskms.SignInput{KeyId: rsaEnc, Message: []byte("m"), SigningAlgorithm: types.SigningAlgorithmSpecRsassaPssSha256}, CodeInvalidKeyUsage},
		"digest of the wrong length":    {&awskms.SignInput{KeyId: p256, Message: make([]byte, 31), MessageType: types.MessageTypeDigest, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256}, CodeValidation},
		"message over 4096 bytes":       {&awskms.SignInput{KeyId: p256, Message: make([]byte, 4097), SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256}, CodeValidation},
		"unknown algorithm":             {&awskms.SignInput{KeyId: p256, Message: []byte("m"), SigningAlgorithm: "ECDSA_SHA_1"}, CodeValidation},
		"unknown message type":          {&awskms.SignInput{KeyId: p256, Message: []byte("m"), MessageType: "HASH", SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256}, CodeValidation},
		"missing key":                   {&awskms.SignInput{KeyId: aws.String("alias/none"), Message: []byte("m"), SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256}, CodeNotFound},
		"dry run":                       {&awskms.SignInput{KeyId: p256, Message: []byte("m"), SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256, DryRun: aws.Bool(true)}, CodeDryRunOperation},
		"bad grant token":               {&awskms.SignInput{KeyId: p256, Message: []byte("m"), SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256, GrantTokens: []string{"not-a-token"}}, CodeInvalidGrantToken},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := e.admin.Sign(ctx, tc.in)
			wantCode(t, err, tc.code)
		})
	}
	_, err := e.admin.Verify(ctx, &awskms.VerifyInput{KeyId: p256, Message: []byte("m"), SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256, Signature: []byte{0x30, 0}})
	wantCode(t, err, CodeInvalidSignature)
	_, err = e.admin.GetPublicKey(ctx, &awskms.GetPublicKeyInput{KeyId: sym})
	wantCode(t, err, CodeUnsupportedOperation)
	if _, err := e.admin.DisableKey(ctx, &awskms.DisableKeyInput{KeyId: p256}); err != nil {
		t.Fatal(err)
	}
	_, err = e.admin.Sign(ctx, &awskms.SignInput{KeyId: p256, Message: []byte("m"), SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
	wantCode(t, err, CodeDisabled)
	// Sign is a key-policy action like any other.
	_, err = e.other.Sign(ctx, &awskms.SignInput{KeyId: sym, Message: []byte("m"), SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
	wantCode(t, err, CodeNotFound)
}

// TestCreateKeySpecs checks DescribeKey's algorithm lists per spec and
// AWS's KeyUsage rules.
func TestCreateKeySpecs(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx := context.Background()
	type algs struct{ Encryption, Signing, Mac, Agreement []string }
	for _, tc := range []struct {
		spec  types.KeySpec
		usage types.KeyUsageType
		want  algs
	}{
		{types.KeySpecSymmetricDefault, "", algs{Encryption: []string{"SYMMETRIC_DEFAULT"}}},
		{types.KeySpecRsa2048, types.KeyUsageTypeEncryptDecrypt, algs{Encryption: []string{"RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"}}},
		{types.KeySpecRsa3072, types.KeyUsageTypeSignVerify, algs{Signing: rsaSigning}},
		{types.KeySpecEccNistP384, types.KeyUsageTypeSignVerify, algs{Signing: []string{"ECDSA_SHA_384"}}},
		{types.KeySpecEccNistP521, types.KeyUsageTypeKeyAgreement, algs{Agreement: []string{"ECDH"}}},
		{types.KeySpecEccSecgP256k1, types.KeyUsageTypeSignVerify, algs{Signing: []string{"ECDSA_SHA_256"}}},
		{types.KeySpecHmac224, types.KeyUsageTypeGenerateVerifyMac, algs{Mac: []string{"HMAC_SHA_224"}}},
		{types.KeySpecHmac512, types.KeyUsageTypeGenerateVerifyMac, algs{Mac: []string{"HMAC_SHA_512"}}},
	} {
		ck, err := e.admin.CreateKey(ctx, &awskms.CreateKeyInput{KeySpec: tc.spec, KeyUsage: tc.usage})
		if err != nil {
			t.Fatalf("%s: %v", tc.spec, err)
		}
		m := ck.KeyMetadata
		got := algs{}
		for _, a := range m.EncryptionAlgorithms {
			got.Encryption = append(got.Encryption, string(a))
		}
		for _, a := range m.SigningAlgorithms {
			got.Signing = append(got.Signing, string(a))
		}
		for _, a := range m.MacAlgorithms {
			got.Mac = append(got.Mac, string(a))
		}
		for _, a := range m.KeyAgreementAlgorithms {
			got.Agreement = append(got.Agreement, string(a))
		}
		if diff := cmp.Diff(tc.want, got); diff != "" || m.KeySpec != tc.spec {
			t.Errorf("%s %s: KeySpec %s, algorithms (-want +got):\n%s", tc.spec, tc.usage, m.KeySpec, diff)
		}
	}
	for _, tc := range []struct {
		spec  types.KeySpec
		usage types.KeyUsageType
		code  string
	}{
		{types.KeySpecEccNistP256, "", CodeValidation},                               // ENCRYPT_DECRYPT by default
		{types.KeySpecEccSecgP256k1, types.KeyUsageTypeKeyAgreement, CodeValidation}, // secp256k1 only signs
		{types.KeySpecHmac256, types.KeyUsageTypeEncryptDecrypt, CodeValidation},
		{types.KeySpecSymmetricDefault, types.KeyUsageTypeSignVerify, CodeValidation},
		{types.KeySpecRsa2048, types.KeyUsageTypeKeyAgreement, CodeValidation},
		{types.KeySpecMlDsa44, types.KeyUsageTypeSignVerify, CodeUnsupportedOperation},
		{"RSA_1024", types.KeyUsageTypeSignVerify, CodeValidation},
		{types.KeySpecRsa2048, "DECRYPT_ONLY", CodeValidation},
	} {
		_, err := e.admin.CreateKey(ctx, &awskms.CreateKeyInput{KeySpec: tc.spec, KeyUsage: tc.usage})
		if got := errCode(t, err); got != tc.code {
			t.Errorf("CreateKey %s %s: %q (%v), want %q", tc.spec, tc.usage, got, err, tc.code)
		}
	}
	// Rotation is for symmetric encryption keys only.
	ck, err := e.admin.CreateKey(ctx, &awskms.CreateKeyInput{KeySpec: types.KeySpecHmac256, KeyUsage: types.KeyUsageTypeGenerateVerifyMac})
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.admin.EnableKeyRotation(ctx, &awskms.EnableKeyRotationInput{KeyId: ck.KeyMetadata.KeyId})
	wantCode(t, err, CodeUnsupportedOperation)
	_, err = e.admin.RotateKeyOnDemand(ctx, &awskms.RotateKeyOnDemandInput{KeyId: ck.KeyMetadata.KeyId})
	wantCode(t, err, CodeUnsupportedOperation)
}

// TestAsymmetricEncryption encrypts with RSA keys through the service and,
// with only the public key, through Go and OpenSSL; the service decrypts
// all of them.
func TestAsymmetricEncryption(t *testing.T) {
	openssl := testenv.LookPath(t, "openssl", "apt-get install openssl")
	e := newEnv(t, envOpts{})
	ctx := context.Background()
	ck, err := e.admin.CreateKey(ctx, &awskms.CreateKeyInput{KeySpec: types.KeySpecRsa2048, KeyUsage: types.KeyUsageTypeEncryptDecrypt})
	if err != nil {
		t.Fatal(err)
	}
	keyID := ck.KeyMetadata.KeyId
	pk, err := e.admin.GetPublicKey(ctx, &awskms.GetPublicKeyInput{KeyId: keyID})
	if err != nil {
		t.Fatal(err)
	}
	pubAny, err := x509.ParsePKIXPublicKey(pk.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pub := pubAny.(*rsa.PublicKey)
	pt := []byte("asymmetric plaintext")
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "pub.der"), pk.PublicKey, 0o600)
	os.WriteFile(filepath.Join(dir, "pt"), pt, 0o600)
	for _, alg := range []types.EncryptionAlgorithmSpec{types.EncryptionAlgorithmSpecRsaesOaepSha1, types.EncryptionAlgorithmSpecRsaesOaepSha256} {
		h := sha256.New()
		oaepMD := "sha256"
		if alg == types.EncryptionAlgorithmSpecRsaesOaepSha1 {
			h, oaepMD = sha1.New(), "sha1"
		}
		enc, err := e.admin.Encrypt(ctx, &awskms.EncryptInput{KeyId: keyID, Plaintext: pt, EncryptionAlgorithm: alg})
		if err != nil {
			t.Fatalf("Encrypt %s: %v", alg, err)
		}
		local, err := rsa.EncryptOAEP(h, rand.Reader, pub, pt, nil)
		if err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(openssl, "pkeyutl", "-encrypt", "-pubin", "-keyform", "DER", "-inkey", filepath.Join(dir, "pub.der"),
			"-in", filepath.Join(dir, "pt"), "-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:"+oaepMD, "-pkeyopt", "rsa_mgf1_md:"+oaepMD).Output()
		if err != nil {
			t.Fatalf("openssl pkeyutl -encrypt: %v", err)
		}
		for name, blob := range map[string][]byte{"service": enc.CiphertextBlob, "Go": local, "OpenSSL": out} {
			dec, err := e.admin.Decrypt(ctx, &awskms.DecryptInput{KeyId: keyID, CiphertextBlob: blob, EncryptionAlgorithm: alg})
			if err != nil || !bytes.Equal(dec.Plaintext, pt) || dec.EncryptionAlgorithm != alg {
				t.Fatalf("%s ciphertext with %s: %v", name, alg, err)
			}
		}
		// ReEncrypt from the RSA key to a symmetric key and back.
		sym, err := e.admin.CreateKey(ctx, &awskms.CreateKeyInput{})
		if err != nil {
			t.Fatal(err)
		}
		re, err := e.admin.ReEncrypt(ctx, &awskms.ReEncryptInput{CiphertextBlob: local, SourceKeyId: keyID, SourceEncryptionAlgorithm: alg, DestinationKeyId: sym.KeyMetadata.KeyId})
		if err != nil {
			t.Fatalf("ReEncrypt: %v", err)
		}
		dec, err := e.admin.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: re.CiphertextBlob})
		if err != nil || !bytes.Equal(dec.Plaintext, pt) {
			t.Fatalf("after ReEncrypt: %v", err)
		}
	}
	for name, tc := range map[string]struct {
		in   *awskms.EncryptInput
		code string
	}{
		"default algorithm":  {&awskms.EncryptInput{KeyId: keyID, Plaintext: pt}, CodeInvalidKeyUsage},
		"too long for OAEP":  {&awskms.EncryptInput{KeyId: keyID, Plaintext: make([]byte, 191), EncryptionAlgorithm: types.EncryptionAlgorithmSpecRsaesOaepSha256}, CodeValidation},
		"encryption context": {&awskms.EncryptInput{KeyId: keyID, Plaintext: pt, EncryptionAlgorithm: types.EncryptionAlgorithmSpecRsaesOaepSha256, EncryptionContext: map[string]string{"a": "b"}}, CodeValidation},
	} {
		_, err := e.admin.Encrypt(ctx, tc.in)
		if got := errCode(t, err); got != tc.code {
			t.Errorf("%s: %q (%v), want %q", name, got, err, tc.code)
		}
	}
	enc, _ := e.admin.Encrypt(ctx, &awskms.EncryptInput{KeyId: keyID, Plaintext: pt, EncryptionAlgorithm: types.EncryptionAlgorithmSpecRsaesOaepSha256})
	_, err = e.admin.Decrypt(ctx, &awskms.DecryptInput{KeyId: keyID, CiphertextBlob: enc.CiphertextBlob, EncryptionAlgorithm: types.EncryptionAlgorithmSpecRsaesOaepSha1})
	wantCode(t, err, CodeInvalidCiphertext)
	_, err = e.admin.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionAlgorithm: types.EncryptionAlgorithmSpecRsaesOaepSha256})
	wantCode(t, err, CodeValidation)
	_, err = e.admin.GenerateDataKey(ctx, &awskms.GenerateDataKeyInput{KeyId: keyID, KeySpec: types.DataKeySpecAes256})
	wantCode(t, err, CodeInvalidKeyUsage)
}

// TestMac generates and verifies MACs with every HMAC key spec.
func TestMac(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx := context.Background()
	msg := []byte("authenticated")
	for spec, alg := range map[types.KeySpec]types.MacAlgorithmSpec{
		types.KeySpecHmac224: types.MacAlgorithmSpecHmacSha224, types.KeySpecHmac256: types.MacAlgorithmSpecHmacSha256,
		types.KeySpecHmac384: types.MacAlgorithmSpecHmacSha384, types.KeySpecHmac512: types.MacAlgorithmSpecHmacSha512,
	} {
		ck, err := e.admin.CreateKey(ctx, &awskms.CreateKeyInput{KeySpec: spec, KeyUsage: types.KeyUsageTypeGenerateVerifyMac})
		if err != nil {
			t.Fatal(err)
		}
		id := ck.KeyMetadata.KeyId
		m, err := e.admin.GenerateMac(ctx, &awskms.GenerateMacInput{KeyId: id, Message: msg, MacAlgorithm: alg})
		if err != nil {
			t.Fatalf("GenerateMac %s: %v", spec, err)
		}
		if len(m.Mac) != hashFor(string(alg)).Size() || m.MacAlgorithm != alg {
			t.Fatalf("%s: %d-byte MAC, algorithm %s", spec, len(m.Mac), m.MacAlgorithm)
		}
		again, _ := e.admin.GenerateMac(ctx, &awskms.GenerateMacInput{KeyId: id, Message: msg, MacAlgorithm: alg})
		if !bytes.Equal(again.Mac, m.Mac) {
			t.Fatalf("%s: HMAC is not deterministic", spec)
		}
		v, err := e.admin.VerifyMac(ctx, &awskms.VerifyMacInput{KeyId: id, Message: msg, MacAlgorithm: alg, Mac: m.Mac})
		if err != nil || !v.MacValid {
			t.Fatalf("VerifyMac %s: %v", spec, err)
		}
		bad := bytes.Clone(m.Mac)
		bad[0] ^= 1
		_, err = e.admin.VerifyMac(ctx, &awskms.VerifyMacInput{KeyId: id, Message: msg, MacAlgorithm: alg, Mac: bad})
		wantCode(t, err, CodeInvalidMac)
		_, err = e.admin.VerifyMac(ctx, &awskms.VerifyMacInput{KeyId: id, Message: []byte("other"), MacAlgorithm: alg, Mac: m.Mac})
		wantCode(t, err, CodeInvalidMac)
		other := types.MacAlgorithmSpecHmacSha256
		if alg == other {
			other = types.MacAlgorithmSpecHmacSha512
		}
		_, err = e.admin.GenerateMac(ctx, &awskms.GenerateMacInput{KeyId: id, Message: msg, MacAlgorithm: other})
		wantCode(t, err, CodeInvalidKeyUsage)
		_, err = e.admin.Encrypt(ctx, &awskms.EncryptInput{KeyId: id, Plaintext: msg})
		wantCode(t, err, CodeInvalidKeyUsage)
	}
	sym, _ := e.admin.CreateKey(ctx, &awskms.CreateKeyInput{})
	_, err := e.admin.GenerateMac(ctx, &awskms.GenerateMacInput{KeyId: sym.KeyMetadata.KeyId, Message: msg, MacAlgorithm: types.MacAlgorithmSpecHmacSha256})
	wantCode(t, err, CodeInvalidKeyUsage)
	// GenerateMac takes no Mac member.
	status, body := e.raw("AKIDADMIN", "admin-secret", "GenerateMac", map[string]any{"KeyId": *sym.KeyMetadata.KeyId, "Message": []byte("m"), "MacAlgorithm": "HMAC_SHA_256", "Mac": []byte("x")})
	if status != 400 || body["__type"] != CodeValidation {
		t.Fatalf("GenerateMac with Mac: %d %v", status, body)
	}
}

// TestDeriveSharedSecret checks ECDH against a local computation, on every
// NIST curve, plain and with a Recipient.
func TestDeriveSharedSecret(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx := context.Background()
	for spec, curve := range map[types.KeySpec]ecdh.Curve{types.KeySpecEccNistP256: ecdh.P256(), types.KeySpecEccNistP384: ecdh.P384(), types.KeySpecEccNistP521: ecdh.P521()} {
		ck, err := e.admin.CreateKey(ctx, &awskms.CreateKeyInput{KeySpec: spec, KeyUsage: types.KeyUsageTypeKeyAgreement})
		if err != nil {
			t.Fatal(err)
		}
		id := ck.KeyMetadata.KeyId
		pk, err := e.admin.GetPublicKey(ctx, &awskms.GetPublicKeyInput{KeyId: id})
		if err != nil {
			t.Fatal(err)
		}
		kmsPub, _ := x509.ParsePKIXPublicKey(pk.PublicKey)
		kmsECDH, err := kmsPub.(*ecdsa.PublicKey).ECDH()
		if err != nil {
			t.Fatal(err)
		}
		mine, _ := curve.GenerateKey(rand.Reader)
		mySPKI, _ := x509.MarshalPKIXPublicKey(mine.PublicKey())
		want, _ := mine.ECDH(kmsECDH)
		out, err := e.admin.DeriveSharedSecret(ctx, &awskms.DeriveSharedSecretInput{KeyId: id, KeyAgreementAlgorithm: types.KeyAgreementAlgorithmSpecEcdh, PublicKey: mySPKI})
		if err != nil {
			t.Fatalf("DeriveSharedSecret %s: %v", spec, err)
		}
		if !bytes.Equal(out.SharedSecret, want) || out.KeyOrigin != types.OriginTypeAwsKms || out.KeyAgreementAlgorithm != types.KeyAgreementAlgorithmSpecEcdh {
			t.Fatalf("%s: shared secret %x, want %x", spec, out.SharedSecret, want)
		}
		rk := recipientKey(t)
		rec, err := e.admin.DeriveSharedSecret(ctx, &awskms.DeriveSharedSecretInput{KeyId: id, KeyAgreementAlgorithm: types.KeyAgreementAlgorithmSpecEcdh,
			PublicKey: mySPKI, Recipient: recipient(e.attestDoc(t, pcrs(0x11), rk.spki))})
		if err != nil {
			t.Fatalf("DeriveSharedSecret with Recipient: %v", err)
		}
		if rec.SharedSecret != nil {
			t.Fatal("a Recipient request returned the shared secret in plain")
		}
		got, err := cms.Decrypt(rec.CiphertextForRecipient, rk.priv)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("CiphertextForRecipient: %x %v", got, err)
		}
	}
	p256, _ := e.admin.CreateKey(ctx, &awskms.CreateKeyInput{KeySpec: types.KeySpecEccNistP256, KeyUsage: types.KeyUsageTypeKeyAgreement})
	other, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	otherSPKI, _ := x509.MarshalPKIXPublicKey(&other.PublicKey)
	_, err := e.admin.DeriveSharedSecret(ctx, &awskms.DeriveSharedSecretInput{KeyId: p256.KeyMetadata.KeyId, KeyAgreementAlgorithm: types.KeyAgreementAlgorithmSpecEcdh, PublicKey: otherSPKI})
	wantCode(t, err, CodeValidation)
	_, err = e.admin.DeriveSharedSecret(ctx, &awskms.DeriveSharedSecretInput{KeyId: p256.KeyMetadata.KeyId, KeyAgreementAlgorithm: types.KeyAgreementAlgorithmSpecEcdh, PublicKey: []byte("junk")})
	wantCode(t, err, CodeValidation)
	signKey, _ := e.admin.CreateKey(ctx, &awskms.CreateKeyInput{KeySpec: types.KeySpecEccNistP256, KeyUsage: types.KeyUsageTypeSignVerify})
	_, err = e.admin.DeriveSharedSecret(ctx, &awskms.DeriveSharedSecretInput{KeyId: signKey.KeyMetadata.KeyId, KeyAgreementAlgorithm: types.KeyAgreementAlgorithmSpecEcdh, PublicKey: otherSPKI})
	wantCode(t, err, CodeInvalidKeyUsage)
}

// TestGenerateDataKeyPair checks every KeyPairSpec: the private key is
// PKCS#8 and matches the public key, its ciphertext decrypts to it, the
// WithoutPlaintext form omits it, and a Recipient gets it enveloped.
func TestGenerateDataKeyPair(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx := context.Background()
	ck, err := e.admin.CreateKey(ctx, &awskms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}
	id := ck.KeyMetadata.KeyId
	ec := map[string]string{"purpose": "pair"}
	for _, spec := range []types.DataKeyPairSpec{types.DataKeyPairSpecRsa2048, types.DataKeyPairSpecEccNistP256, types.DataKeyPairSpecEccNistP384,
		types.DataKeyPairSpecEccNistP521, types.DataKeyPairSpecEccSecgP256k1} {
		out, err := e.admin.GenerateDataKeyPair(ctx, &awskms.GenerateDataKeyPairInput{KeyId: id, KeyPairSpec: spec, EncryptionContext: ec})
		if err != nil {
			t.Fatalf("GenerateDataKeyPair %s: %v", spec, err)
		}
		priv, err := parsePrivate(string(spec), out.PrivateKeyPlaintext)
		if err != nil {
			t.Fatalf("%s: private key: %v", spec, err)
		}
		pub, _ := marshalPublic(priv.Public())
		if !bytes.Equal(pub, out.PublicKey) || out.KeyPairSpec != spec {
			t.Fatalf("%s: the public key does not match the private key", spec)
		}
		if spec != types.DataKeyPairSpecEccSecgP256k1 {
			if _, err := x509.ParsePKCS8PrivateKey(out.PrivateKeyPlaintext); err != nil {
				t.Fatalf("%s: not PKCS#8 for crypto/x509: %v", spec, err)
			}
		}
		dec, err := e.admin.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: out.PrivateKeyCiphertextBlob, EncryptionContext: ec})
		if err != nil || !bytes.Equal(dec.Plaintext, out.PrivateKeyPlaintext) {
			t.Fatalf("%s: decrypting the private key: %v", spec, err)
		}
	}
	wp, err := e.admin.GenerateDataKeyPairWithoutPlaintext(ctx, &awskms.GenerateDataKeyPairWithoutPlaintextInput{KeyId: id, KeyPairSpec: types.DataKeyPairSpecEccNistP256})
	if err != nil || len(wp.PublicKey) == 0 || len(wp.PrivateKeyCiphertextBlob) == 0 {
		t.Fatalf("WithoutPlaintext: %v", err)
	}
	rk := recipientKey(t)
	rec, err := e.admin.GenerateDataKeyPair(ctx, &awskms.GenerateDataKeyPairInput{KeyId: id, KeyPairSpec: types.DataKeyPairSpecEccNistP256,
		Recipient: recipient(e.attestDoc(t, pcrs(0x11), rk.spki))})
	if err != nil {
		t.Fatalf("with Recipient: %v", err)
	}
	if rec.PrivateKeyPlaintext != nil {
		t.Fatal("a Recipient request returned the private key in plain")
	}
	der, err := cms.Decrypt(rec.CiphertextForRecipient, rk.priv)
	if err != nil {
		t.Fatal(err)
	}
	dec, err := e.admin.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: rec.PrivateKeyCiphertextBlob})
	if err != nil || !bytes.Equal(dec.Plaintext, der) {
		t.Fatalf("the enveloped private key differs from its ciphertext: %v", err)
	}
	_, err = e.admin.GenerateDataKeyPair(ctx, &awskms.GenerateDataKeyPairInput{KeyId: id, KeyPairSpec: "RSA_1024"})
	wantCode(t, err, CodeValidation)
	_, err = e.admin.GenerateDataKeyPair(ctx, &awskms.GenerateDataKeyPairInput{KeyId: id, KeyPairSpec: types.DataKeyPairSpecSm2})
	wantCode(t, err, CodeUnsupportedOperation)
	rsaKey, _ := e.admin.CreateKey(ctx, &awskms.CreateKeyInput{KeySpec: types.KeySpecRsa2048, KeyUsage: types.KeyUsageTypeEncryptDecrypt})
	_, err = e.admin.GenerateDataKeyPair(ctx, &awskms.GenerateDataKeyPairInput{KeyId: rsaKey.KeyMetadata.KeyId, KeyPairSpec: types.DataKeyPairSpecEccNistP256})
	wantCode(t, err, CodeInvalidKeyUsage)
}
