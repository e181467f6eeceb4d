package kms

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/attest"
)

// sdkInputs maps each served AWS operation to the aws-sdk-go-v2 input
// type, whose exported fields are AWS's request members.
var sdkInputs = map[string]any{
	"CreateKey": awskms.CreateKeyInput{}, "DescribeKey": awskms.DescribeKeyInput{}, "ListKeys": awskms.ListKeysInput{},
	"EnableKey": awskms.EnableKeyInput{}, "DisableKey": awskms.DisableKeyInput{}, "CreateAlias": awskms.CreateAliasInput{},
	"ListAliases": awskms.ListAliasesInput{}, "DeleteAlias": awskms.DeleteAliasInput{}, "Encrypt": awskms.EncryptInput{},
	"Decrypt": awskms.DecryptInput{}, "ReEncrypt": awskms.ReEncryptInput{}, "GenerateDataKey": awskms.GenerateDataKeyInput{},
	"GenerateDataKeyWithoutPlaintext": awskms.GenerateDataKeyWithoutPlaintextInput{}, "GenerateRandom": awskms.GenerateRandomInput{},
	"GetKeyPolicy": awskms.GetKeyPolicyInput{}, "PutKeyPolicy": awskms.PutKeyPolicyInput{}, "EnableKeyRotation": awskms.EnableKeyRotationInput{},
	"DisableKeyRotation": awskms.DisableKeyRotationInput{}, "GetKeyRotationStatus": awskms.GetKeyRotationStatusInput{},
	"RotateKeyOnDemand": awskms.RotateKeyOnDemandInput{}, "ScheduleKeyDeletion": awskms.ScheduleKeyDeletionInput{},
	"CancelKeyDeletion": awskms.CancelKeyDeletionInput{}, "Sign": awskms.SignInput{}, "Verify": awskms.VerifyInput{},
	"GetPublicKey": awskms.GetPublicKeyInput{}, "GenerateMac": awskms.GenerateMacInput{}, "VerifyMac": awskms.VerifyMacInput{},
	"GenerateDataKeyPair": awskms.GenerateDataKeyPairInput{}, "GenerateDataKeyPairWithoutPlaintext": awskms.GenerateDataKeyPairWithoutPlaintextInput{},
	"DeriveSharedSecret": awskms.DeriveSharedSecretInput{}, "TagResource": awskms.TagResourceInput{}, "UntagResource": awskms.UntagResourceInput{},
	"ListResourceTags": awskms.ListResourceTagsInput{}, "UpdateAlias": awskms.UpdateAliasInput{}, "UpdateKeyDescription": awskms.UpdateKeyDescriptionInput{},
	"ListKeyPolicies": awskms.ListKeyPoliciesInput{}, "ListKeyRotations": awskms.ListKeyRotationsInput{}, "CreateGrant": awskms.CreateGrantInput{},
	"ListGrants": awskms.ListGrantsInput{}, "ListRetirableGrants": awskms.ListRetirableGrantsInput{}, "RetireGrant": awskms.RetireGrantInput{},
	"RevokeGrant": awskms.RevokeGrantInput{},
}

// TestEveryAWSMemberAccepted sends, for every operation, each member of
// AWS's input shape (as null) and checks that none is refused as unknown,
// while a made-up member is: strict decoding must not reject what any SDK
// may send.
func TestEveryAWSMemberAccepted(t *testing.T) {
	e := newEnv(t, envOpts{})
	for op := range e.srv.ops {
		if op == "CloisterExplain" {
			continue
		}
		in, ok := sdkInputs[op]
		if !ok {
			t.Errorf("operation %s has no SDK input in sdkInputs", op)
			continue
		}
		typ := reflect.TypeOf(in)
		for i := range typ.NumField() {
			f := typ.Field(i)
			if !f.IsExported() {
				continue
			}
			_, body := e.raw("AKIDADMIN", "admin-secret", op, map[string]any{f.Name: nil})
			if msg, _ := body["message"].(string); strings.Contains(msg, "not a member") {
				t.Errorf("%s refuses AWS member %s: %s", op, f.Name, msg)
			}
		}
		status, body := e.raw("AKIDADMIN", "admin-secret", op, map[string]any{"NoSuchMember": nil})
		if msg, _ := body["message"].(string); status != 400 || body["__type"] != CodeValidation || !strings.Contains(msg, "NoSuchMember") {
			t.Errorf("%s with an unknown member: %d %v", op, status, body)
		}
	}
}

// TestTagsAliasesDescriptions covers the management operations tooling
// calls: tags on CreateKey and after, UpdateAlias, UpdateKeyDescription,
// ListKeyPolicies and ListKeyRotations, with their errors.
func TestTagsAliasesDescriptions(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx := context.Background()
	ck, err := e.admin.CreateKey(ctx, &awskms.CreateKeyInput{Tags: []types.Tag{{TagKey: aws.String("team"), TagValue: aws.String("a")}}})
	if err != nil {
		t.Fatal(err)
	}
	id := ck.KeyMetadata.KeyId
	tags := func() map[string]string {
		t.Helper()
		out, err := e.admin.ListResourceTags(ctx, &awskms.ListResourceTagsInput{KeyId: id})
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]string{}
		for _, tg := range out.Tags {
			m[*tg.TagKey] = *tg.TagValue
		}
		return m
	}
	if diff := cmp.Diff(map[string]string{"team": "a"}, tags()); diff != "" {
		t.Fatalf("tags from CreateKey (-want +got):\n%s", diff)
	}
	if _, err := e.admin.TagResource(ctx, &awskms.TagResourceInput{KeyId: id, Tags: []types.Tag{
		{TagKey: aws.String("team"), TagValue: aws.String("b")}, {TagKey: aws.String("env"), TagValue: aws.String("")}}}); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]string{"team": "b", "env": ""}, tags()); diff != "" {
		t.Fatalf("after TagResource (-want +got):\n%s", diff)
	}
	if _, err := e.admin.UntagResource(ctx, &awskms.UntagResourceInput{KeyId: id, TagKeys: []string{"team", "absent"}}); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]string{"env": ""}, tags()); diff != "" {
		t.Fatalf("after UntagResource (-want +got):\n%s", diff)
	}
	_, err = e.admin.TagResource(ctx, &awskms.TagResourceInput{KeyId: id, Tags: []types.Tag{{TagKey: aws.String("aws:x"), TagValue: aws.String("v")}}})
	wantCode(t, err, CodeTag)
	_, err = e.admin.TagResource(ctx, &awskms.TagResourceInput{KeyId: id, Tags: []types.Tag{{TagKey: aws.String(strings.Repeat("k", 129)), TagValue: aws.String("v")}}})
	wantCode(t, err, CodeValidation)
	many := make([]types.Tag, 51)
	for i := range many {
		many[i] = types.Tag{TagKey: aws.String(fmt.Sprint("k", i)), TagValue: aws.String("v")}
	}
	_, err = e.admin.CreateKey(ctx, &awskms.CreateKeyInput{Tags: many})
	wantCode(t, err, CodeTag)
	_, err = e.other.ListResourceTags(ctx, &awskms.ListResourceTagsInput{KeyId: ck.KeyMetadata.Arn})
	wantCode(t, err, CodeAccessDenied)

	// Descriptions.
	if _, err := e.admin.UpdateKeyDescription(ctx, &awskms.UpdateKeyDescriptionInput{KeyId: id, Description: aws.String("new words")}); err != nil {
		t.Fatal(err)
	}
	if d, _ := e.admin.DescribeKey(ctx, &awskms.DescribeKeyInput{KeyId: id}); *d.KeyMetadata.Description != "new words" {
		t.Fatalf("description %q", *d.KeyMetadata.Description)
	}

	// UpdateAlias moves an alias between keys of one kind and usage.
	k2, _ := e.admin.CreateKey(ctx, &awskms.CreateKeyInput{})
	hmacKey, _ := e.admin.CreateKey(ctx, &awskms.CreateKeyInput{KeySpec: types.KeySpecHmac256, KeyUsage: types.KeyUsageTypeGenerateVerifyMac})
	if _, err := e.admin.CreateAlias(ctx, &awskms.CreateAliasInput{AliasName: aws.String("alias/moving"), TargetKeyId: id}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.UpdateAlias(ctx, &awskms.UpdateAliasInput{AliasName: aws.String("alias/moving"), TargetKeyId: k2.KeyMetadata.KeyId}); err != nil {
		t.Fatal(err)
	}
	if d, _ := e.admin.DescribeKey(ctx, &awskms.DescribeKeyInput{KeyId: aws.String("alias/moving")}); *d.KeyMetadata.KeyId != *k2.KeyMetadata.KeyId {
		t.Fatalf("alias points to %s after UpdateAlias", *d.KeyMetadata.KeyId)
	}
	la, _ := e.admin.ListAliases(ctx, &awskms.ListAliasesInput{KeyId: k2.KeyMetadata.KeyId})
	if len(la.Aliases) != 1 || la.Aliases[0].LastUpdatedDate == nil || !la.Aliases[0].LastUpdatedDate.After(*la.Aliases[0].CreationDate) && !la.Aliases[0].LastUpdatedDate.Equal(*la.Aliases[0].CreationDate) {
		t.Fatalf("ListAliases after UpdateAlias: %+v", la.Aliases)
	}
	_, err = e.admin.UpdateAlias(ctx, &awskms.UpdateAliasInput{AliasName: aws.String("alias/moving"), TargetKeyId: hmacKey.KeyMetadata.KeyId})
	wantCode(t, err, CodeValidation)
	_, err = e.admin.UpdateAlias(ctx, &awskms.UpdateAliasInput{AliasName: aws.String("alias/absent"), TargetKeyId: id})
	wantCode(t, err, CodeNotFound)

	// ListKeyPolicies and ListKeyRotations.
	lp, err := e.admin.ListKeyPolicies(ctx, &awskms.ListKeyPoliciesInput{KeyId: id})
	if err != nil || !cmp.Equal(lp.PolicyNames, []string{"default"}) {
		t.Fatalf("ListKeyPolicies: %v %v", lp, err)
	}
	for range 2 {
		if _, err := e.admin.RotateKeyOnDemand(ctx, &awskms.RotateKeyOnDemandInput{KeyId: id}); err != nil {
			t.Fatal(err)
		}
	}
	lr, err := e.admin.ListKeyRotations(ctx, &awskms.ListKeyRotationsInput{KeyId: id, Limit: aws.Int32(1)})
	if err != nil || len(lr.Rotations) != 1 || !lr.Truncated || lr.Rotations[0].RotationType != types.RotationTypeOnDemand {
		t.Fatalf("ListKeyRotations page 1: %+v %v", lr, err)
	}
	lr2, err := e.admin.ListKeyRotations(ctx, &awskms.ListKeyRotationsInput{KeyId: id, Marker: lr.NextMarker})
	if err != nil || len(lr2.Rotations) != 1 || lr2.Truncated {
		t.Fatalf("ListKeyRotations page 2: %+v %v", lr2, err)
	}
	_, err = e.admin.ListKeyRotations(ctx, &awskms.ListKeyRotationsInput{KeyId: hmacKey.KeyMetadata.KeyId})
	wantCode(t, err, CodeUnsupportedOperation)
}

// grantPolicy lets only the admin use the key: the enclave role gets in
// through grants alone.
func grantPolicy() string {
	return fmt.Sprintf(`{"Version": "2012-10-17", "Statement": [
  {"Sid": "Admin", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::%s:user/admin"}, "Action": "kms:*", "Resource": "*"}]}`, account)
}

// TestGrants: a grant lets its grantee do exactly its operations under its
// constraints, grant tokens are checked, and grants are listed, retired and
// revoked.
func TestGrants(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx := context.Background()
	ck, err := e.admin.CreateKey(ctx, &awskms.CreateKeyInput{Policy: aws.String(grantPolicy())})
	if err != nil {
		t.Fatal(err)
	}
	id := ck.KeyMetadata.KeyId
	ec := map[string]string{"tenant": "a"}
	enc, err := e.admin.Encrypt(ctx, &awskms.EncryptInput{KeyId: id, Plaintext: []byte("granted"), EncryptionContext: ec})
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.enclave.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ec})
	wantCode(t, err, CodeAccessDenied)

	g, err := e.admin.CreateGrant(ctx, &awskms.CreateGrantInput{KeyId: id, GranteePrincipal: aws.String(enclaveRole),
		RetiringPrincipal: aws.String("arn:aws:iam::111122223333:user/admin"), Name: aws.String("enclave-decrypt"),
		Operations:  []types.GrantOperation{types.GrantOperationDecrypt, types.GrantOperationCreateGrant},
		Constraints: &types.GrantConstraints{EncryptionContextSubset: ec}})
	if err != nil {
		t.Fatalf("CreateGrant: %v", err)
	}
	// The same named grant again is the same grant, as on AWS.
	again, err := e.admin.CreateGrant(ctx, &awskms.CreateGrantInput{KeyId: id, GranteePrincipal: aws.String(enclaveRole),
		RetiringPrincipal: aws.String("arn:aws:iam::111122223333:user/admin"), Name: aws.String("enclave-decrypt"),
		Operations:  []types.GrantOperation{types.GrantOperationDecrypt, types.GrantOperationCreateGrant},
		Constraints: &types.GrantConstraints{EncryptionContextSubset: ec}})
	if err != nil || *again.GrantId != *g.GrantId {
		t.Fatalf("repeated named CreateGrant: %v", err)
	}
	dec, err := e.enclave.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ec, GrantTokens: []string{*g.GrantToken}})
	if err != nil || string(dec.Plaintext) != "granted" {
		t.Fatalf("Decrypt through the grant: %v", err)
	}
	// The constraint: another context is not covered.
	enc2, _ := e.admin.Encrypt(ctx, &awskms.EncryptInput{KeyId: id, Plaintext: []byte("other tenant"), EncryptionContext: map[string]string{"tenant": "b"}})
	_, err = e.enclave.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: enc2.CiphertextBlob, EncryptionContext: map[string]string{"tenant": "b"}})
	wantCode(t, err, CodeAccessDenied)
	// An operation the grant does not list.
	_, err = e.enclave.Encrypt(ctx, &awskms.EncryptInput{KeyId: id, Plaintext: []byte("x"), EncryptionContext: ec})
	wantCode(t, err, CodeAccessDenied)
	// A grantee with CreateGrant cannot widen its grant.
	_, err = e.enclave.CreateGrant(ctx, &awskms.CreateGrantInput{KeyId: ck.KeyMetadata.Arn, GranteePrincipal: aws.String(enclaveRole), Operations: []types.GrantOperation{types.GrantOperationEncrypt}})
	wantCode(t, err, CodeAccessDenied)
	child, err := e.enclave.CreateGrant(ctx, &awskms.CreateGrantInput{KeyId: ck.KeyMetadata.Arn, GranteePrincipal: aws.String("arn:aws:iam::111122223333:role/child"),
		Operations: []types.GrantOperation{types.GrantOperationDecrypt}})
	if err != nil {
		t.Fatalf("narrower CreateGrant by the grantee: %v", err)
	}
	// Grant tokens must be well formed.
	_, err = e.enclave.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ec, GrantTokens: []string{"bogus"}})
	wantCode(t, err, CodeInvalidGrantToken)
	// Operations must suit the key.
	_, err = e.admin.CreateGrant(ctx, &awskms.CreateGrantInput{KeyId: id, GranteePrincipal: aws.String(enclaveRole), Operations: []types.GrantOperation{types.GrantOperationSign}})
	wantCode(t, err, CodeValidation)

	lg, err := e.admin.ListGrants(ctx, &awskms.ListGrantsInput{KeyId: id})
	if err != nil || len(lg.Grants) != 2 {
		t.Fatalf("ListGrants: %+v %v", lg, err)
	}
	var childEntry types.GrantListEntry
	for _, x := range lg.Grants {
		if *x.GrantId == *child.GrantId {
			childEntry = x
		}
	}
	if childEntry.Constraints == nil || !cmp.Equal(childEntry.Constraints.EncryptionContextSubset, ec) {
		t.Fatalf("the child grant did not inherit the parent's constraint: %+v", childEntry.Constraints)
	}
	lg1, err := e.admin.ListGrants(ctx, &awskms.ListGrantsInput{KeyId: id, Limit: aws.Int32(1)})
	if err != nil || len(lg1.Grants) != 1 || !lg1.Truncated {
		t.Fatalf("ListGrants page: %+v %v", lg1, err)
	}
	rg, err := e.admin.ListRetirableGrants(ctx, &awskms.ListRetirableGrantsInput{RetiringPrincipal: aws.String("arn:aws:iam::111122223333:user/admin")})
	if err != nil || len(rg.Grants) != 1 || *rg.Grants[0].GrantId != *g.GrantId {
		t.Fatalf("ListRetirableGrants: %+v %v", rg, err)
	}
	// Only the retiring principal (or a grantee allowed RetireGrant)
	// retires; the key policy's admin revokes.
	_, err = e.enclave.RetireGrant(ctx, &awskms.RetireGrantInput{GrantToken: g.GrantToken})
	wantCode(t, err, CodeAccessDenied)
	if _, err := e.admin.RetireGrant(ctx, &awskms.RetireGrantInput{GrantToken: g.GrantToken}); err != nil {
		t.Fatalf("RetireGrant: %v", err)
	}
	_, err = e.enclave.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ec})
	wantCode(t, err, CodeAccessDenied)
	_, err = e.enclave.RevokeGrant(ctx, &awskms.RevokeGrantInput{KeyId: id, GrantId: child.GrantId})
	wantCode(t, err, CodeAccessDenied)
	if _, err := e.admin.RevokeGrant(ctx, &awskms.RevokeGrantInput{KeyId: id, GrantId: child.GrantId}); err != nil {
		t.Fatalf("RevokeGrant: %v", err)
	}
	_, err = e.admin.RevokeGrant(ctx, &awskms.RevokeGrantInput{KeyId: id, GrantId: child.GrantId})
	wantCode(t, err, CodeNotFound)
	_, err = e.admin.RevokeGrant(ctx, &awskms.RevokeGrantInput{KeyId: id, GrantId: aws.String("short")})
	wantCode(t, err, CodeInvalidGrantID)
	if lg, _ := e.admin.ListGrants(ctx, &awskms.ListGrantsInput{KeyId: id}); len(lg.Grants) != 0 {
		t.Fatalf("grants left: %+v", lg.Grants)
	}

	// An explicit deny in the key policy wins over a grant.
	deny := fmt.Sprintf(`{"Version": "2012-10-17", "Statement": [
  {"Sid": "Admin", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::%s:user/admin"}, "Action": "kms:*", "Resource": "*"},
  {"Sid": "NoEnclave", "Effect": "Deny", "Principal": {"AWS": "%s"}, "Action": "kms:Decrypt", "Resource": "*"}]}`, account, enclaveRole)
	if _, err := e.admin.PutKeyPolicy(ctx, &awskms.PutKeyPolicyInput{KeyId: id, Policy: aws.String(deny)}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.CreateGrant(ctx, &awskms.CreateGrantInput{KeyId: id, GranteePrincipal: aws.String(enclaveRole), Operations: []types.GrantOperation{types.GrantOperationDecrypt}}); err != nil {
		t.Fatal(err)
	}
	_, err = e.enclave.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ec})
	wantCode(t, err, CodeAccessDenied)
}

// TestAttestedSign: with a policy that allows Sign only from an attested
// enclave, a Sign request carrying the CloisterAttestation extension member
// (a document whose user_data is the digest) is signed; without it, with a
// document for another digest, or from another image, it is refused. The
// unmodified SDK request (no member) is decided by the policy as on AWS.
func TestAttestedSign(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx := context.Background()
	pcr0 := strings.Repeat("11", 48)
	pol := fmt.Sprintf(`{"Version": "2012-10-17", "Statement": [
  {"Sid": "Admin", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::%s:user/admin"}, "Action": "kms:*", "Resource": "*"},
  {"Sid": "EnclaveSigns", "Effect": "Allow", "Principal": {"AWS": "%s"}, "Action": "kms:Sign", "Resource": "*",
   "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": "%s"}}}]}`, account, enclaveRole, pcr0)
	ck, err := e.admin.CreateKey(ctx, &awskms.CreateKeyInput{KeySpec: types.KeySpecEccNistP256, KeyUsage: types.KeyUsageTypeSignVerify, Policy: aws.String(pol)})
	if err != nil {
		t.Fatal(err)
	}
	keyID := *ck.KeyMetadata.KeyId
	msg := []byte("release 1.2.3")
	digest := sha256.Sum256(msg)
	doc := func(p map[int][]byte, userData []byte) []byte {
		d, err := e.issuer.Issue(attest.IssueRequest{PCRs: p, UserData: userData})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	req := func(d []byte) map[string]any {
		r := map[string]any{"KeyId": keyID, "Message": msg, "SigningAlgorithm": "ECDSA_SHA_256"}
		if d != nil {
			r["CloisterAttestation"] = map[string]any{"AttestationDocument": d}
		}
		return r
	}
	_, err = e.enclave.Sign(ctx, &awskms.SignInput{KeyId: aws.String(keyID), Message: msg, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256})
	wantCode(t, err, CodeAccessDenied)
	status, body := e.raw("AKIDENCLAVE", "enclave-secret", "Sign", req(doc(pcrs(0x11), digest[:])))
	if status != 200 {
		t.Fatalf("attested Sign: %d %v", status, body)
	}
	var out signOutput
	b, _ := json.Marshal(body)
	json.Unmarshal(b, &out)
	pk, err := e.admin.GetPublicKey(ctx, &awskms.GetPublicKeyInput{KeyId: aws.String(keyID)})
	if err != nil || !goVerify(t, pk.PublicKey, types.SigningAlgorithmSpecEcdsaSha256, digest[:], out.Signature) {
		t.Fatalf("the attested signature does not verify: %v", err)
	}
	other := sha256.Sum256([]byte("release 6.6.6"))
	for name, tc := range map[string]struct {
		doc  []byte
		code string
	}{
		"document for another digest": {doc(pcrs(0x11), other[:]), CodeAccessDenied},
		"document without user_data":  {doc(pcrs(0x11), nil), CodeAccessDenied},
		"another image":               {doc(pcrs(0x22), digest[:]), CodeAccessDenied},
		"not a document":              {[]byte("junk"), CodeValidation},
	} {
		status, body := e.raw("AKIDENCLAVE", "enclave-secret", "Sign", req(tc.doc))
		if status != 400 || body["__type"] != tc.code {
			t.Errorf("%s: %d %v, want %s", name, status, body, tc.code)
		}
	}
}

// TestExplainRequestID: an AccessDeniedException names its request id; the
// audit log carries the statement-by-statement reasoning under that id,
// and CloisterExplain with RequestId returns it to a caller who may read
// the key policy, and to nobody else.
func TestExplainRequestID(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx := context.Background()
	ck, err := e.admin.CreateKey(ctx, &awskms.CreateKeyInput{Policy: aws.String(attestationPolicy())})
	if err != nil {
		t.Fatal(err)
	}
	enc, err := e.admin.Encrypt(ctx, &awskms.EncryptInput{KeyId: ck.KeyMetadata.KeyId, Plaintext: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.enclave.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
	wantCode(t, err, CodeAccessDenied)
	_, id, ok := strings.Cut(err.Error(), "--request-id ")
	if !ok {
		t.Fatalf("the AccessDeniedException names no request id: %v", err)
	}
	id, _, _ = strings.Cut(id, "`")
	if !strings.Contains(e.logs.String(), `"request_id":"`+id+`"`) || !strings.Contains(e.logs.String(), `"explanation":{"decision":"ImplicitDeny"`) {
		t.Fatalf("the audit log lacks the reasoning of %s:\n%s", id, e.logs.String())
	}
	status, body := e.raw("AKIDADMIN", "admin-secret", "CloisterExplain", map[string]any{"RequestId": id})
	if status != 200 {
		t.Fatalf("explain by request id: %d %v", status, body)
	}
	var out ExplainOutput
	b, _ := json.Marshal(body)
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if out.Action != "kms:Decrypt" || out.Principal != enclaveRole || out.KeyID != *ck.KeyMetadata.Arn || out.Explanation.Decision != "ImplicitDeny" ||
		len(out.Explanation.Statements) != 2 || out.Explanation.Statements[1].Sid != "Enclave" || out.Explanation.Statements[1].Conditions[0].Matched {
		t.Fatalf("explanation of %s: %+v", id, out)
	}
	// The denied principal may not read the policy, so not the reasoning;
	// another account does not see the request at all.
	status, body = e.raw("AKIDENCLAVE", "enclave-secret", "CloisterExplain", map[string]any{"RequestId": id})
	if status != 400 || body["__type"] != CodeAccessDenied {
		t.Fatalf("explain by the denied principal: %d %v", status, body)
	}
	status, body = e.raw("AKIDOTHER", "other-secret", "CloisterExplain", map[string]any{"RequestId": id})
	if status != 400 || body["__type"] != CodeNotFound {
		t.Fatalf("explain from another account: %d %v", status, body)
	}
	status, body = e.raw("AKIDADMIN", "admin-secret", "CloisterExplain", map[string]any{"RequestId": "no-such-request"})
	if status != 400 || body["__type"] != CodeNotFound {
		t.Fatalf("explain of an unknown request: %d %v", status, body)
	}
}
