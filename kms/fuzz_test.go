package kms

import (
	"context"
	"crypto/rand"
	"errors"
	"sort"
	"strings"
	"testing"
)

// FuzzDecodeRequest feeds arbitrary bodies to every operation as an
// authenticated admin: nothing may panic, and every failure must be an
// *APIError (never an internal error).
func FuzzDecodeRequest(f *testing.F) {
	mem := newMemStore()
	e := newEnv(f, envOpts{store: mem})
	var ops []string
	for op := range e.srv.ops {
		ops = append(ops, op)
	}
	sort.Strings(ops)
	seeds := []string{
		`{}`, ``, `null`, `[]`, `{"KeyId":"alias/x"}`, `{"KeyId":5}`,
		`{"KeyId":"alias/x","Plaintext":"aGVsbG8=","EncryptionContext":{"a":"b"}}`,
		`{"CiphertextBlob":"Q0tNUwEBYQAAAAE=","Recipient":{"AttestationDocument":"AAAA","KeyEncryptionAlgorithm":"RSAES_OAEP_SHA_256"}}`,
		`{"NumberOfBytes":32}`, `{"NumberOfBytes":-1,"KeySpec":"AES_256"}`, `{"Limit":1,"Marker":"!!"}`,
		`{"Policy":"{\"Statement\":{}}","Action":"Decrypt"}`, `{"AliasName":"alias/a","TargetKeyId":"arn:aws:kms:us-east-1:1:key/x"}`,
		`{"KeyId":"alias/x","KeyId":"alias/y"}`, `{"keyid":"alias/x"}`, `{"EncryptionContext":{"a":"1","A":"2"}}`,
		`{"Policy":"{\"Statement\":{\"Effect\":\"Deny\",\"effect\":\"Allow\"}}","Action":"Decrypt"}`,
		`{"KeySpec":"ECC_NIST_P256","KeyUsage":"SIGN_VERIFY","Tags":[{"TagKey":"a","TagValue":"b"}]}`,
		`{"KeySpec":"HMAC_256","KeyUsage":"GENERATE_VERIFY_MAC"}`, `{"KeySpec":"ECC_SECG_P256K1","KeyUsage":"SIGN_VERIFY"}`,
		`{"KeyId":"alias/x","Message":"bQ==","MessageType":"DIGEST","SigningAlgorithm":"ECDSA_SHA_256","Signature":"MAA="}`,
		`{"KeyId":"alias/x","Message":"bQ==","SigningAlgorithm":"ECDSA_SHA_256","CloisterAttestation":{"AttestationDocument":"AAAA"}}`,
		`{"KeyId":"alias/x","Message":"bQ==","MacAlgorithm":"HMAC_SHA_256","Mac":"AAAA"}`,
		`{"KeyId":"alias/x","KeyPairSpec":"ECC_SECG_P256K1"}`, `{"KeyId":"alias/x","KeyAgreementAlgorithm":"ECDH","PublicKey":"MAA="}`,
		`{"KeyId":"alias/x","GranteePrincipal":"arn:aws:iam::111122223333:role/r","Operations":["Decrypt"],"Constraints":{"EncryptionContextSubset":{"a":"b"}}}`,
		`{"GrantToken":"CGT1YS9i","GrantTokens":["CGT1"]}`, `{"RequestId":"r"}`, `{"NoSuchMember":1}`,
	}
	for i, s := range seeds {
		f.Add(uint8(i), []byte(s))
	}
	cred, _ := e.srv.cfg.Credentials.Lookup("AKIDADMIN")
	f.Fuzz(func(t *testing.T, opIdx uint8, body []byte) {
		if len(body) > 1<<16 {
			return
		}
		mem.reset(64)
		op := ops[int(opIdx)%len(ops)]
		c := &call{ctx: context.Background(), op: op, cred: cred, body: body, audit: &auditRecord{}}
		out, err := e.srv.ops[op](e.srv, c)
		if err == nil {
			if out == nil {
				t.Fatalf("%s: nil output without error", op)
			}
			return
		}
		var ae *APIError
		if !errors.As(err, &ae) {
			t.Fatalf("%s(%q): non-API error %v", op, body, err)
		}
	})
}

// FuzzParsePublic feeds arbitrary DER to the SubjectPublicKeyInfo parser
// DeriveSharedSecret uses on the caller's PublicKey: nothing may panic, and
// a key it accepts must encode back to a key it accepts.
func FuzzParsePublic(f *testing.F) {
	for _, spec := range []string{specP256, specP384, specP256K1} {
		m, err := newMaterial(rand.Reader, spec)
		if err != nil {
			f.Fatal(err)
		}
		k, err := parsePrivate(spec, m)
		if err != nil {
			f.Fatal(err)
		}
		der, _ := marshalPublic(k.Public())
		f.Add(der)
	}
	f.Add([]byte{0x30, 0})
	f.Fuzz(func(t *testing.T, der []byte) {
		pub, err := parsePublic(der)
		if err != nil {
			return
		}
		again, err := marshalPublic(pub)
		if err != nil {
			return // a key type Cloister does not use (e.g. Ed25519)
		}
		if _, err := parsePublic(again); err != nil {
			t.Fatalf("re-encoded key does not parse: %v", err)
		}
	})
}

// FuzzParseGrantToken: nothing may panic, and an accepted token names a
// key and a 64-character grant id and is what grantToken makes of them.
func FuzzParseGrantToken(f *testing.F) {
	f.Add(grantToken("1234abcd-12ab-34cd-56ef-1234567890ab", strings.Repeat("a", 64)))
	f.Add("CGT1")
	f.Add("CGT1////")
	f.Fuzz(func(t *testing.T, tok string) {
		k, g, ok := parseGrantToken(tok)
		if !ok {
			return
		}
		if k == "" || !grantIDOK(g) || grantToken(k, g) != tok {
			t.Fatalf("accepted %q as key %q grant %q", tok, k, g)
		}
	})
}
