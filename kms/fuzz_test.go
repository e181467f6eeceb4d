package kms

import (
	"context"
	"errors"
	"sort"
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
