package kms

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
)

// adminStatement keeps the admin able to manage the key (and to pass the
// lockout safety check).
const adminStatement = `{"Sid":"Admin","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:user/admin"},"Action":"kms:*","Resource":"*"}`

// ambiguousPolicies are key policies whose text, read as a person, a log or
// any first-wins or case-sensitive JSON reader reads it, does not let the
// enclave role decrypt, but which encoding/json (last member wins, names
// matched ignoring case) decodes into a policy that does. AWS rejects such
// documents (MalformedPolicyDocumentException); so must the key service.
// Each has the form of a single policy document with one statement about
// the enclave role after adminStatement.
var ambiguousPolicies = []struct {
	name string
	// visible is the document a first-wins, case-sensitive reader sees
	// (the later, ambiguous member removed): it must deny.
	visible, attack string
}{
	{
		name:    "duplicate Effect",
		visible: `{"Sid":"NoEnclaveDecrypt","Effect":"Deny","Principal":{"AWS":"` + enclaveRole + `"},"Action":"kms:Decrypt","Resource":"*"}`,
		attack:  `{"Sid":"NoEnclaveDecrypt","Effect":"Deny","Principal":{"AWS":"` + enclaveRole + `"},"Action":"kms:Decrypt","Resource":"*","Effect":"Allow"}`,
	},
	{
		name:    "miscased effect after Effect",
		visible: `{"Sid":"NoEnclaveDecrypt","Effect":"Deny","Principal":{"AWS":"` + enclaveRole + `"},"Action":"kms:Decrypt","Resource":"*"}`,
		attack:  `{"Sid":"NoEnclaveDecrypt","Effect":"Deny","Principal":{"AWS":"` + enclaveRole + `"},"Action":"kms:Decrypt","Resource":"*","effect":"Allow"}`,
	},
	{
		name:    "escaped duplicate of Effect",
		visible: `{"Sid":"NoEnclaveDecrypt","Effect":"Deny","Principal":{"AWS":"` + enclaveRole + `"},"Action":"kms:Decrypt","Resource":"*"}`,
		attack:  `{"Sid":"NoEnclaveDecrypt","Effect":"Deny","Principal":{"AWS":"` + enclaveRole + `"},"Action":"kms:Decrypt","Resource":"*","\u0045ffect":"Allow"}`,
	},
	{
		name:    "duplicate Action",
		visible: `{"Sid":"EnclaveEncrypt","Effect":"Allow","Principal":{"AWS":"` + enclaveRole + `"},"Action":"kms:Encrypt","Resource":"*"}`,
		attack:  `{"Sid":"EnclaveEncrypt","Effect":"Allow","Principal":{"AWS":"` + enclaveRole + `"},"Action":"kms:Encrypt","Resource":"*","action":"kms:Decrypt"}`,
	},
	{
		name:    "duplicate AWS principal",
		visible: `{"Sid":"NobodyDecrypts","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:role/nobody"},"Action":"kms:Decrypt","Resource":"*"}`,
		attack:  `{"Sid":"NobodyDecrypts","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:role/nobody","AWS":"` + enclaveRole + `"},"Action":"kms:Decrypt","Resource":"*"}`,
	},
	{
		name:    "duplicate condition operator",
		visible: `{"Sid":"OtherAccountDecrypts","Effect":"Allow","Principal":{"AWS":"` + enclaveRole + `"},"Action":"kms:Decrypt","Resource":"*","Condition":{"StringEquals":{"kms:CallerAccount":"000000000000"}}}`,
		attack:  `{"Sid":"OtherAccountDecrypts","Effect":"Allow","Principal":{"AWS":"` + enclaveRole + `"},"Action":"kms:Decrypt","Resource":"*","Condition":{"StringEquals":{"kms:CallerAccount":"000000000000"},"StringEquals":{"kms:CallerAccount":"111122223333"}}}`,
	},
}

func policyDoc(stmt string) string {
	return `{"Version":"2012-10-17","Statement":[` + adminStatement + `,` + stmt + `]}`
}

// TestAmbiguousPolicyRejected is the attack through the server and the AWS
// SDK: an admin installs a key policy that reads as denying the enclave
// role Decrypt but that encoding/json decodes as allowing it. PutKeyPolicy
// and CreateKey must refuse it with MalformedPolicyDocumentException. The
// visible reading of each document is installed as a control and must
// deny, so an accepted attack document is reported with what it allowed.
func TestAmbiguousPolicyRejected(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx := context.Background()
	for _, tc := range ambiguousPolicies {
		t.Run(tc.name, func(t *testing.T) {
			ck, err := e.admin.CreateKey(ctx, &awskms.CreateKeyInput{})
			if err != nil {
				t.Fatal(err)
			}
			keyID := ck.KeyMetadata.KeyId
			enc, err := e.admin.Encrypt(ctx, &awskms.EncryptInput{KeyId: keyID, Plaintext: []byte("for the admin only")})
			if err != nil {
				t.Fatal(err)
			}
			decrypt := func() error {
				_, err := e.enclave.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
				return err
			}

			// Control: the document as it reads denies the enclave.
			if _, err := e.admin.PutKeyPolicy(ctx, &awskms.PutKeyPolicyInput{KeyId: keyID, Policy: aws.String(policyDoc(tc.visible))}); err != nil {
				t.Fatalf("PutKeyPolicy(visible reading): %v", err)
			}
			wantCode(t, decrypt(), CodeAccessDenied)

			attack := policyDoc(tc.attack)
			_, err = e.admin.PutKeyPolicy(ctx, &awskms.PutKeyPolicyInput{KeyId: keyID, Policy: aws.String(attack)})
			if got := errCode(t, err); got != CodeMalformedPolicy {
				gp, _ := e.admin.GetKeyPolicy(ctx, &awskms.GetKeyPolicyInput{KeyId: keyID})
				shown := ""
				if gp != nil && gp.Policy != nil {
					shown = *gp.Policy
				}
				derr := decrypt()
				t.Fatalf("PutKeyPolicy accepted the ambiguous policy (error %q); GetKeyPolicy shows\n%s\nand the enclave's Decrypt returned error %q (%v)",
					got, shown, errCode(t, derr), derr)
			}
			wantCode(t, decrypt(), CodeAccessDenied)

			_, err = e.admin.CreateKey(ctx, &awskms.CreateKeyInput{Policy: aws.String(attack)})
			wantCode(t, err, CodeMalformedPolicy)
		})
	}
}

// TestAmbiguousRequestRejected: a request body with a repeated member
// (however spelled) is refused as SerializationException before anything
// acts on it, and an encryption context with two keys that differ only in
// case as ValidationException.
func TestAmbiguousRequestRejected(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx := context.Background()
	k1, err := e.admin.CreateKey(ctx, &awskms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}
	k2, err := e.admin.CreateKey(ctx, &awskms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}
	ec := map[string]string{"tenant": "a"}
	enc, err := e.admin.Encrypt(ctx, &awskms.EncryptInput{KeyId: k1.KeyMetadata.KeyId, Plaintext: []byte("x"), EncryptionContext: ec})
	if err != nil {
		t.Fatal(err)
	}
	blob, _ := json.Marshal(enc.CiphertextBlob)
	id1, id2 := *k1.KeyMetadata.KeyId, *k2.KeyMetadata.KeyId
	tests := []struct {
		name, op, body, code string
	}{
		{"control", "Decrypt", `{"CiphertextBlob":` + string(blob) + `,"EncryptionContext":{"tenant":"a"}}`, ""},
		{"duplicate KeyId", "Encrypt", `{"KeyId":"` + id1 + `","Plaintext":"eA==","KeyId":"` + id2 + `"}`, CodeSerialization},
		{"miscased KeyId", "Encrypt", `{"keyid":"` + id1 + `","Plaintext":"eA=="}`, CodeSerialization},
		{"KeyId and miscased KeyId", "Encrypt", `{"KeyId":"` + id1 + `","Plaintext":"eA==","KEYID":"` + id2 + `"}`, CodeSerialization},
		{"duplicate context key", "Decrypt", `{"CiphertextBlob":` + string(blob) + `,"EncryptionContext":{"tenant":"b","tenant":"a"}}`, CodeSerialization},
		{"escaped duplicate context key", "Decrypt", `{"CiphertextBlob":` + string(blob) + `,"EncryptionContext":{"tenant":"b","\u0074enant":"a"}}`, CodeSerialization},
		{"duplicate nested member", "Decrypt", `{"CiphertextBlob":` + string(blob) + `,"Recipient":{"KeyEncryptionAlgorithm":"RSAES_OAEP_SHA_256","KeyEncryptionAlgorithm":"x"}}`, CodeSerialization},
		{"case-colliding context keys", "Encrypt", `{"KeyId":"` + id1 + `","Plaintext":"eA==","EncryptionContext":{"tenant":"a","Tenant":"b"}}`, CodeValidation},
		{"invalid UTF-8 in a context key", "Encrypt", "{\"KeyId\":\"" + id1 + "\",\"Plaintext\":\"eA==\",\"EncryptionContext\":{\"t\xff\":\"a\",\"t\xfe\":\"b\"}}", CodeSerialization},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, out := e.rawBytes("AKIDADMIN", "admin-secret", tc.op, []byte(tc.body))
			got, _ := out["__type"].(string)
			if got != tc.code || (tc.code == "") != (status == http.StatusOK) {
				t.Fatalf("%s: status %d %v, want %q", tc.op, status, out, tc.code)
			}
		})
	}
}

// TestCaseCollidingContextForgery: kms:EncryptionContext:<key> conditions
// match the key ignoring case (as on AWS), so with {"tenant": "alice",
// "Tenant": "bob"} which value a condition saw depended on Go's map order.
// The enclave role may Encrypt only for tenant bob; an application reading
// the context case-sensitively would take such a ciphertext as alice's.
// Every attempt must be refused.
func TestCaseCollidingContextForgery(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx := context.Background()
	pol := policyDoc(`{"Sid":"BobEncrypts","Effect":"Allow","Principal":{"AWS":"` + enclaveRole + `"},"Action":["kms:Encrypt","kms:Decrypt"],"Resource":"*",` +
		`"Condition":{"StringEquals":{"kms:EncryptionContext:tenant":"bob"}}}`)
	ck, err := e.admin.CreateKey(ctx, &awskms.CreateKeyInput{Policy: aws.String(pol)})
	if err != nil {
		t.Fatal(err)
	}
	// Control: bob's own context works, alice's does not.
	if _, err := e.enclave.Encrypt(ctx, &awskms.EncryptInput{KeyId: ck.KeyMetadata.KeyId, Plaintext: []byte("x"), EncryptionContext: map[string]string{"tenant": "bob"}}); err != nil {
		t.Fatalf("Encrypt for bob: %v", err)
	}
	_, err = e.enclave.Encrypt(ctx, &awskms.EncryptInput{KeyId: ck.KeyMetadata.KeyId, Plaintext: []byte("x"), EncryptionContext: map[string]string{"tenant": "alice"}})
	wantCode(t, err, CodeAccessDenied)

	forged := map[string]string{"tenant": "alice", "Tenant": "bob"}
	var allowed []string
	for i := range 40 {
		_, err := e.enclave.Encrypt(ctx, &awskms.EncryptInput{KeyId: ck.KeyMetadata.KeyId, Plaintext: []byte("x"), EncryptionContext: forged})
		if code := errCode(t, err); code != CodeValidation {
			allowed = append(allowed, fmt.Sprintf("attempt %d: %q", i, code))
		}
	}
	if len(allowed) > 0 {
		t.Fatalf("Encrypt with context %v was not refused as ValidationException (\"\" = allowed): %s", forged, strings.Join(allowed, ", "))
	}
}
