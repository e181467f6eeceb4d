package kms

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"

	"github.com/cloister/cloister/internal/testenv"
	"github.com/cloister/cloister/kms/store"
)

func TestSDKKeyLifecycle(t *testing.T) { sdkKeyLifecycle(t, newEnv(t, envOpts{})) }

// TestSDKKeyLifecyclePostgres runs the same operations on the PostgreSQL store.
func TestSDKKeyLifecyclePostgres(t *testing.T) {
	root := make([]byte, 32)
	rand.Read(root)
	st, err := store.OpenPostgres(context.Background(), testenv.Postgres(t, "kms"), root)
	if err != nil {
		t.Fatal(err)
	}
	sdkKeyLifecycle(t, newEnv(t, envOpts{store: st}))
}

func sdkKeyLifecycle(t *testing.T, e *env) {
	ctx := context.Background()
	c := e.admin

	ck, err := c.CreateKey(ctx, &awskms.CreateKeyInput{Description: aws.String("test key")})
	if err != nil {
		t.Fatalf("CreateKey: %v", err)
	}
	md := ck.KeyMetadata
	if md.KeyState != types.KeyStateEnabled || !md.Enabled || *md.AWSAccountId != account || md.KeySpec != types.KeySpecSymmetricDefault ||
		!strings.HasPrefix(*md.Arn, "arn:aws:kms:us-east-1:111122223333:key/") || md.CreationDate == nil || *md.Description != "test key" {
		t.Fatalf("metadata %+v", md)
	}
	keyID := *md.KeyId
	ck2, err := c.CreateKey(ctx, &awskms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}

	// Describe by id, ARN, alias and alias ARN.
	if _, err := c.CreateAlias(ctx, &awskms.CreateAliasInput{AliasName: aws.String("alias/app"), TargetKeyId: aws.String(keyID)}); err != nil {
		t.Fatalf("CreateAlias: %v", err)
	}
	for _, id := range []string{keyID, *md.Arn, "alias/app", "arn:aws:kms:us-east-1:111122223333:alias/app"} {
		d, err := c.DescribeKey(ctx, &awskms.DescribeKeyInput{KeyId: aws.String(id)})
		if err != nil || *d.KeyMetadata.KeyId != keyID {
			t.Fatalf("DescribeKey(%s): %v", id, err)
		}
	}
	_, err = c.CreateAlias(ctx, &awskms.CreateAliasInput{AliasName: aws.String("alias/app"), TargetKeyId: ck2.KeyMetadata.KeyId})
	wantCode(t, err, "AlreadyExistsException")
	_, err = c.CreateAlias(ctx, &awskms.CreateAliasInput{AliasName: aws.String("alias/aws/x"), TargetKeyId: ck2.KeyMetadata.KeyId})
	wantCode(t, err, "InvalidAliasNameException")
	_, err = c.CreateAlias(ctx, &awskms.CreateAliasInput{AliasName: aws.String("noprefix"), TargetKeyId: ck2.KeyMetadata.KeyId})
	wantCode(t, err, "ValidationException")
	_, err = c.DescribeKey(ctx, &awskms.DescribeKeyInput{KeyId: aws.String("alias/none")})
	wantCode(t, err, "NotFoundException")
	_, err = c.DescribeKey(ctx, &awskms.DescribeKeyInput{KeyId: aws.String("00000000-0000-0000-0000-000000000000")})
	wantCode(t, err, "NotFoundException")
	_, err = c.DescribeKey(ctx, &awskms.DescribeKeyInput{KeyId: aws.String("arn:aws:s3:::bucket")})
	wantCode(t, err, "InvalidArnException")

	// Pagination.
	l1, err := c.ListKeys(ctx, &awskms.ListKeysInput{Limit: aws.Int32(1)})
	if err != nil || len(l1.Keys) != 1 || !l1.Truncated || l1.NextMarker == nil {
		t.Fatalf("ListKeys page 1: %+v %v", l1, err)
	}
	l2, err := c.ListKeys(ctx, &awskms.ListKeysInput{Limit: aws.Int32(1), Marker: l1.NextMarker})
	if err != nil || len(l2.Keys) != 1 || l2.Truncated || *l2.Keys[0].KeyId == *l1.Keys[0].KeyId {
		t.Fatalf("ListKeys page 2: %+v %v", l2, err)
	}
	_, err = c.ListKeys(ctx, &awskms.ListKeysInput{Limit: aws.Int32(0)})
	wantCode(t, err, "ValidationException")
	if lo, err := e.other.ListKeys(ctx, &awskms.ListKeysInput{}); err != nil || len(lo.Keys) != 0 {
		t.Fatalf("other account sees keys: %+v %v", lo, err)
	}
	la, err := c.ListAliases(ctx, &awskms.ListAliasesInput{KeyId: aws.String(keyID)})
	if err != nil || len(la.Aliases) != 1 || *la.Aliases[0].AliasName != "alias/app" || *la.Aliases[0].TargetKeyId != keyID {
		t.Fatalf("ListAliases: %+v %v", la, err)
	}

	// Policies.
	gp, err := c.GetKeyPolicy(ctx, &awskms.GetKeyPolicyInput{KeyId: aws.String(keyID), PolicyName: aws.String("default")})
	if err != nil || !strings.Contains(*gp.Policy, "arn:aws:iam::111122223333:root") {
		t.Fatalf("GetKeyPolicy: %v", err)
	}
	_, err = c.GetKeyPolicy(ctx, &awskms.GetKeyPolicyInput{KeyId: aws.String(keyID), PolicyName: aws.String("other")})
	wantCode(t, err, "NotFoundException")
	_, err = c.PutKeyPolicy(ctx, &awskms.PutKeyPolicyInput{KeyId: aws.String(keyID), Policy: aws.String(`{"Statement": []}`)})
	wantCode(t, err, "MalformedPolicyDocumentException")
	lockout := `{"Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:role/x"},"Action":"kms:*","Resource":"*"}]}`
	_, err = c.PutKeyPolicy(ctx, &awskms.PutKeyPolicyInput{KeyId: aws.String(keyID), Policy: aws.String(lockout)})
	wantCode(t, err, "MalformedPolicyDocumentException")
	if _, err := c.PutKeyPolicy(ctx, &awskms.PutKeyPolicyInput{KeyId: aws.String(keyID), Policy: aws.String(attestationPolicy())}); err != nil {
		t.Fatalf("PutKeyPolicy: %v", err)
	}
	_, err = e.other.DescribeKey(ctx, &awskms.DescribeKeyInput{KeyId: md.Arn})
	wantCode(t, err, "AccessDeniedException") // another account's key by ARN: its policy decides
	_, err = e.other.DescribeKey(ctx, &awskms.DescribeKeyInput{KeyId: aws.String(keyID)})
	wantCode(t, err, "NotFoundException") // a bare id resolves in the caller's own account only

	// Rotation.
	enc, err := c.Encrypt(ctx, &awskms.EncryptInput{KeyId: aws.String(keyID), Plaintext: []byte("before rotation")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.EnableKeyRotation(ctx, &awskms.EnableKeyRotationInput{KeyId: aws.String(keyID), RotationPeriodInDays: aws.Int32(90)}); err != nil {
		t.Fatalf("EnableKeyRotation: %v", err)
	}
	_, err = c.EnableKeyRotation(ctx, &awskms.EnableKeyRotationInput{KeyId: aws.String(keyID), RotationPeriodInDays: aws.Int32(10)})
	wantCode(t, err, "ValidationException")
	rs, err := c.GetKeyRotationStatus(ctx, &awskms.GetKeyRotationStatusInput{KeyId: aws.String(keyID)})
	if err != nil || !rs.KeyRotationEnabled || *rs.RotationPeriodInDays != 90 {
		t.Fatalf("GetKeyRotationStatus: %+v %v", rs, err)
	}
	if _, err := c.RotateKeyOnDemand(ctx, &awskms.RotateKeyOnDemandInput{KeyId: aws.String(keyID)}); err != nil {
		t.Fatalf("RotateKeyOnDemand: %v", err)
	}
	enc2, err := c.Encrypt(ctx, &awskms.EncryptInput{KeyId: aws.String(keyID), Plaintext: []byte("after rotation")})
	if err != nil {
		t.Fatal(err)
	}
	for want, blob := range map[string][]byte{"before rotation": enc.CiphertextBlob, "after rotation": enc2.CiphertextBlob} {
		d, err := c.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: blob})
		if err != nil || string(d.Plaintext) != want {
			t.Fatalf("Decrypt after rotation: %q %v", d.Plaintext, err)
		}
	}
	if h1, _ := parseBlob(enc.CiphertextBlob); h1.version != 1 {
		t.Fatalf("first blob version %d", h1.version)
	}
	if h2, _ := parseBlob(enc2.CiphertextBlob); h2.version != 2 {
		t.Fatalf("second blob version %d", h2.version)
	}

	// Disable / enable.
	if _, err := c.DisableKey(ctx, &awskms.DisableKeyInput{KeyId: aws.String(keyID)}); err != nil {
		t.Fatal(err)
	}
	_, err = c.Encrypt(ctx, &awskms.EncryptInput{KeyId: aws.String(keyID), Plaintext: []byte("x")})
	wantCode(t, err, "DisabledException")
	_, err = c.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
	wantCode(t, err, "DisabledException")
	if _, err := c.EnableKey(ctx, &awskms.EnableKeyInput{KeyId: aws.String(keyID)}); err != nil {
		t.Fatal(err)
	}

	// Deletion.
	sd, err := c.ScheduleKeyDeletion(ctx, &awskms.ScheduleKeyDeletionInput{KeyId: aws.String(keyID), PendingWindowInDays: aws.Int32(7)})
	if err != nil || sd.KeyState != types.KeyStatePendingDeletion || *sd.PendingWindowInDays != 7 || sd.DeletionDate == nil {
		t.Fatalf("ScheduleKeyDeletion: %+v %v", sd, err)
	}
	_, err = c.ScheduleKeyDeletion(ctx, &awskms.ScheduleKeyDeletionInput{KeyId: aws.String(keyID)})
	wantCode(t, err, "KMSInvalidStateException")
	_, err = c.Encrypt(ctx, &awskms.EncryptInput{KeyId: aws.String(keyID), Plaintext: []byte("x")})
	wantCode(t, err, "KMSInvalidStateException")
	_, err = c.ScheduleKeyDeletion(ctx, &awskms.ScheduleKeyDeletionInput{KeyId: ck2.KeyMetadata.KeyId, PendingWindowInDays: aws.Int32(3)})
	wantCode(t, err, "ValidationException")
	if _, err := c.CancelKeyDeletion(ctx, &awskms.CancelKeyDeletionInput{KeyId: aws.String(keyID)}); err != nil {
		t.Fatal(err)
	}
	d, _ := c.DescribeKey(ctx, &awskms.DescribeKeyInput{KeyId: aws.String(keyID)})
	if d.KeyMetadata.KeyState != types.KeyStateDisabled {
		t.Fatalf("after CancelKeyDeletion: %s", d.KeyMetadata.KeyState)
	}
	if _, err := c.DeleteAlias(ctx, &awskms.DeleteAliasInput{AliasName: aws.String("alias/app")}); err != nil {
		t.Fatal(err)
	}
	_, err = c.DeleteAlias(ctx, &awskms.DeleteAliasInput{AliasName: aws.String("alias/app")})
	wantCode(t, err, "NotFoundException")

	// A key whose waiting period has passed disappears.
	if _, err := c.ScheduleKeyDeletion(ctx, &awskms.ScheduleKeyDeletionInput{KeyId: ck2.KeyMetadata.KeyId, PendingWindowInDays: aws.Int32(7)}); err != nil {
		t.Fatal(err)
	}
	e.srv.cfg.Clock = func() time.Time { return time.Now().Add(8 * 24 * time.Hour) }
	if n, err := e.srv.PurgeDeleted(ctx); err != nil || n != 1 {
		t.Fatalf("PurgeDeleted = %d, %v", n, err)
	}
}

func TestSDKCryptography(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx := context.Background()
	c := e.admin
	ck, _ := c.CreateKey(ctx, &awskms.CreateKeyInput{})
	k1 := ck.KeyMetadata.KeyId
	ck2, _ := c.CreateKey(ctx, &awskms.CreateKeyInput{})
	k2 := ck2.KeyMetadata.KeyId
	ec := map[string]string{"purpose": "test", "tenant": "a"}

	enc, err := c.Encrypt(ctx, &awskms.EncryptInput{KeyId: k1, Plaintext: []byte("hello"), EncryptionContext: ec})
	if err != nil || *enc.KeyId != *ck.KeyMetadata.Arn || enc.EncryptionAlgorithm != types.EncryptionAlgorithmSpecSymmetricDefault {
		t.Fatalf("Encrypt: %+v %v", enc, err)
	}
	dec, err := c.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ec})
	if err != nil || string(dec.Plaintext) != "hello" || *dec.KeyId != *ck.KeyMetadata.Arn {
		t.Fatalf("Decrypt: %+v %v", dec, err)
	}
	_, err = c.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: map[string]string{"purpose": "test"}})
	wantCode(t, err, "InvalidCiphertextException")
	_, err = c.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
	wantCode(t, err, "InvalidCiphertextException")
	bad := bytes.Clone(enc.CiphertextBlob)
	bad[len(bad)-1] ^= 1
	_, err = c.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: bad, EncryptionContext: ec})
	wantCode(t, err, "InvalidCiphertextException")
	_, err = c.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: []byte("garbage")})
	wantCode(t, err, "InvalidCiphertextException")
	_, err = c.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ec, KeyId: k2})
	wantCode(t, err, "IncorrectKeyException")
	_, err = c.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ec, DryRun: aws.Bool(true)})
	wantCode(t, err, "DryRunOperationException")
	_, err = c.Encrypt(ctx, &awskms.EncryptInput{KeyId: k1, Plaintext: make([]byte, 4097)})
	wantCode(t, err, "ValidationException")
	_, err = c.Encrypt(ctx, &awskms.EncryptInput{KeyId: k1, Plaintext: []byte("x"), EncryptionAlgorithm: types.EncryptionAlgorithmSpecRsaesOaepSha256})
	wantCode(t, err, "InvalidKeyUsageException")
	_, err = c.Encrypt(ctx, &awskms.EncryptInput{KeyId: aws.String("alias/missing"), Plaintext: []byte("x")})
	wantCode(t, err, "NotFoundException")

	re, err := c.ReEncrypt(ctx, &awskms.ReEncryptInput{CiphertextBlob: enc.CiphertextBlob, SourceEncryptionContext: ec,
		DestinationKeyId: k2, DestinationEncryptionContext: map[string]string{"new": "ctx"}})
	if err != nil || *re.SourceKeyId != *ck.KeyMetadata.Arn || *re.KeyId != *ck2.KeyMetadata.Arn {
		t.Fatalf("ReEncrypt: %+v %v", re, err)
	}
	dec, err = c.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: re.CiphertextBlob, EncryptionContext: map[string]string{"new": "ctx"}})
	if err != nil || string(dec.Plaintext) != "hello" {
		t.Fatalf("Decrypt(ReEncrypt): %v", err)
	}

	gdk, err := c.GenerateDataKey(ctx, &awskms.GenerateDataKeyInput{KeyId: k1, KeySpec: types.DataKeySpecAes256, EncryptionContext: ec})
	if err != nil || len(gdk.Plaintext) != 32 || gdk.CiphertextForRecipient != nil {
		t.Fatalf("GenerateDataKey: %+v %v", gdk, err)
	}
	dec, err = c.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: gdk.CiphertextBlob, EncryptionContext: ec})
	if err != nil || !bytes.Equal(dec.Plaintext, gdk.Plaintext) {
		t.Fatalf("Decrypt(data key): %v", err)
	}
	gdk16, err := c.GenerateDataKey(ctx, &awskms.GenerateDataKeyInput{KeyId: k1, NumberOfBytes: aws.Int32(16)})
	if err != nil || len(gdk16.Plaintext) != 16 {
		t.Fatalf("GenerateDataKey(16): %v", err)
	}
	for _, in := range []*awskms.GenerateDataKeyInput{
		{KeyId: k1},
		{KeyId: k1, NumberOfBytes: aws.Int32(0)},
		{KeyId: k1, NumberOfBytes: aws.Int32(1025)},
		{KeyId: k1, NumberOfBytes: aws.Int32(16), KeySpec: types.DataKeySpecAes128},
	} {
		_, err := c.GenerateDataKey(ctx, in)
		wantCode(t, err, "ValidationException")
	}
	wo, err := c.GenerateDataKeyWithoutPlaintext(ctx, &awskms.GenerateDataKeyWithoutPlaintextInput{KeyId: k1, KeySpec: types.DataKeySpecAes128})
	if err != nil || len(wo.CiphertextBlob) == 0 {
		t.Fatalf("GenerateDataKeyWithoutPlaintext: %v", err)
	}
	dec, err = c.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: wo.CiphertextBlob})
	if err != nil || len(dec.Plaintext) != 16 {
		t.Fatalf("Decrypt(GenerateDataKeyWithoutPlaintext): %v", err)
	}
	gr, err := c.GenerateRandom(ctx, &awskms.GenerateRandomInput{NumberOfBytes: aws.Int32(64)})
	if err != nil || len(gr.Plaintext) != 64 {
		t.Fatalf("GenerateRandom: %v", err)
	}
	_, err = c.GenerateRandom(ctx, &awskms.GenerateRandomInput{NumberOfBytes: aws.Int32(2000)})
	wantCode(t, err, "ValidationException")

	// Another principal with no grant in the default policy of this account.
	_, err = e.other.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ec})
	wantCode(t, err, "AccessDeniedException")
	_, err = e.other.Encrypt(ctx, &awskms.EncryptInput{KeyId: ck.KeyMetadata.Arn, Plaintext: []byte("x")})
	wantCode(t, err, "AccessDeniedException")
}

func TestProtocolErrors(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx := context.Background()
	bad := e.client("AKIDADMIN", "wrong-secret")
	_, err := bad.ListKeys(ctx, &awskms.ListKeysInput{})
	wantCode(t, err, "InvalidSignatureException")
	unknown := e.client("AKIDNOBODY", "x")
	_, err = unknown.ListKeys(ctx, &awskms.ListKeysInput{})
	wantCode(t, err, "UnrecognizedClientException")

	status, body := e.raw("", "", "ListKeys", map[string]any{})
	if status != http.StatusBadRequest || body["__type"] != "MissingAuthenticationTokenException" {
		t.Fatalf("unsigned: %d %v", status, body)
	}
	status, body = e.raw("AKIDADMIN", "admin-secret", "NoSuchOp", map[string]any{})
	if status != http.StatusBadRequest || body["__type"] != "UnknownOperationException" {
		t.Fatalf("unknown op: %d %v", status, body)
	}
	status, body = e.raw("AKIDADMIN", "admin-secret", "Encrypt", map[string]any{"KeyId": 5})
	if status != http.StatusBadRequest || body["__type"] != "SerializationException" {
		t.Fatalf("bad JSON type: %d %v", status, body)
	}
	status, body = e.raw("AKIDADMIN", "admin-secret", "CreateKey", map[string]any{"KeySpec": "SM2", "KeyUsage": "SIGN_VERIFY"})
	if status != http.StatusBadRequest || body["__type"] != "UnsupportedOperationException" {
		t.Fatalf("SM2 key: %d %v", status, body)
	}
	status, body = e.raw("AKIDADMIN", "admin-secret", "CreateKey", map[string]any{"KeySpec": "RSA_1024"})
	if status != http.StatusBadRequest || body["__type"] != "ValidationException" {
		t.Fatalf("RSA_1024 key: %d %v", status, body)
	}
	// A member the operation does not define is refused, as on AWS.
	status, body = e.raw("AKIDADMIN", "admin-secret", "CreateKey", map[string]any{"Description": "x", "Tagz": []any{}})
	if status != http.StatusBadRequest || body["__type"] != "ValidationException" || !strings.Contains(body["message"].(string), "Tagz") {
		t.Fatalf("unknown member: %d %v", status, body)
	}
	status, body = e.raw("AKIDADMIN", "admin-secret", "Encrypt", map[string]any{"Plaintext": strings.Repeat("A", 2<<20)})
	if status != http.StatusBadRequest || body["__type"] != "ValidationException" {
		t.Fatalf("oversized body: %d %v", status, body)
	}
	// AccessDenied uses the capital "Message" member, as AWS does.
	ck, _ := e.admin.CreateKey(ctx, &awskms.CreateKeyInput{})
	status, body = e.raw("AKIDOTHER", "other-secret", "DescribeKey", map[string]any{"KeyId": *ck.KeyMetadata.Arn})
	if status != http.StatusBadRequest || body["__type"] != "AccessDeniedException" || body["Message"] == nil {
		t.Fatalf("cross-account: %d %v", status, body)
	}
	if _, err := e.admin.PutKeyPolicy(ctx, &awskms.PutKeyPolicyInput{KeyId: ck.KeyMetadata.KeyId, Policy: aws.String(attestationPolicy())}); err != nil {
		t.Fatal(err)
	}
	status, body = e.raw("AKIDENCLAVE", "enclave-secret", "DescribeKey", map[string]any{"KeyId": *ck.KeyMetadata.KeyId})
	if status != http.StatusBadRequest || body["__type"] != "AccessDeniedException" || !strings.Contains(body["Message"].(string), "kms:DescribeKey") {
		t.Fatalf("access denied shape: %d %v", status, body)
	}
	_, err = e.enclave.DescribeKey(ctx, &awskms.DescribeKeyInput{KeyId: ck.KeyMetadata.KeyId})
	var ade smithy.APIError
	if !errors.As(err, &ade) || ade.ErrorCode() != "AccessDeniedException" || !strings.Contains(ade.ErrorMessage(), "not authorized") {
		t.Fatalf("SDK AccessDeniedException: %v", err)
	}
}

func TestExplain(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx := context.Background()
	ck, _ := e.admin.CreateKey(ctx, &awskms.CreateKeyInput{Policy: aws.String(attestationPolicy())})
	doc := e.attestDoc(t, pcrs(0x22), recipientKey(t).spki)
	status, body := e.raw("AKIDADMIN", "admin-secret", "CloisterExplain", ExplainInput{
		KeyID: *ck.KeyMetadata.KeyId, Action: "Decrypt", PrincipalArn: enclaveRole,
		Recipient: &RecipientInfo{AttestationDocument: doc, KeyEncryptionAlgorithm: "RSAES_OAEP_SHA_256"},
	})
	if status != 200 {
		t.Fatalf("explain: %d %v", status, body)
	}
	ex := body["Explanation"].(map[string]any)
	if ex["decision"] != "ImplicitDeny" || body["Attestation"].(map[string]any)["Valid"] != true {
		t.Fatalf("explain: %v", body)
	}
	st := ex["statements"].([]any)[1].(map[string]any)
	cond := st["conditions"].([]any)[0].(map[string]any)
	if st["sid"] != "Enclave" || cond["matched"] != false || cond["request_values"].([]any)[0] != strings.Repeat("22", 48) {
		t.Fatalf("statement explanation: %v", st)
	}
	// With the right PCR0 the same dry run allows.
	doc = e.attestDoc(t, pcrs(0x11), recipientKey(t).spki)
	_, body = e.raw("AKIDADMIN", "admin-secret", "CloisterExplain", ExplainInput{
		KeyID: *ck.KeyMetadata.KeyId, Action: "kms:Decrypt", PrincipalArn: enclaveRole,
		Recipient: &RecipientInfo{AttestationDocument: doc},
	})
	if body["Explanation"].(map[string]any)["decision"] != "Allow" {
		t.Fatalf("explain allow: %v", body)
	}
	// Explaining a proposed policy without a key.
	_, body = e.raw("AKIDENCLAVE", "enclave-secret", "CloisterExplain", ExplainInput{Policy: `{"Statement":{"Effect":"Deny","Principal":"*","Action":"kms:*","Resource":"*"}}`, Action: "kms:Encrypt"})
	if body["Explanation"].(map[string]any)["decision"] != "ExplicitDeny" {
		t.Fatalf("explain proposed policy: %v", body)
	}
	// Only principals who may read the key policy may explain it.
	status, body = e.raw("AKIDENCLAVE", "enclave-secret", "CloisterExplain", ExplainInput{KeyID: *ck.KeyMetadata.KeyId, Action: "kms:Decrypt"})
	if status != 400 || body["__type"] != "AccessDeniedException" {
		t.Fatalf("explain without GetKeyPolicy: %d %v", status, body)
	}
}
