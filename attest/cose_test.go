package attest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"testing"

	"github.com/fxamacker/cbor/v2"
	"github.com/veraison/go-cose"
)

// goCOSEVerify verifies doc with go-cose alone, without anything of this
// package: go-cose decodes it (tagged: Sign1Message; untagged:
// UntaggedSign1Message), the leaf certificate is taken from the payload with
// a plain CBOR decoder, and an ES384 go-cose verifier on the leaf key checks
// the signature. It returns go-cose's payload.
func goCOSEVerify(t *testing.T, doc []byte) ([]byte, error) {
	t.Helper()
	var m cose.Sign1Message
	if len(doc) > 0 && doc[0] == 0xd2 {
		if err := m.UnmarshalCBOR(doc); err != nil {
			t.Fatalf("go-cose Sign1Message.UnmarshalCBOR: %v", err)
		}
	} else {
		var um cose.UntaggedSign1Message
		if err := um.UnmarshalCBOR(doc); err != nil {
			t.Fatalf("go-cose UntaggedSign1Message.UnmarshalCBOR: %v", err)
		}
		m = cose.Sign1Message(um)
	}
	var payload struct {
		Certificate []byte `cbor:"certificate"`
	}
	if err := cbor.Unmarshal(m.Payload, &payload); err != nil {
		t.Fatalf("payload: %v", err)
	}
	leaf, err := x509.ParseCertificate(payload.Certificate)
	if err != nil {
		t.Fatalf("leaf certificate: %v", err)
	}
	pub, ok := leaf.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		t.Fatalf("leaf key is %T", leaf.PublicKey)
	}
	v, err := cose.NewVerifier(cose.AlgorithmES384, pub)
	if err != nil {
		t.Fatal(err)
	}
	return m.Payload, m.Verify(nil, v)
}

// TestIssuerDocumentsVerifyWithGoCOSE cross-checks the Issuer against
// go-cose alone, untagged and behind tag 18, and checks that go-cose sees
// the payload ParseUnverified sees and refuses a tampered document.
func TestIssuerDocumentsVerifyWithGoCOSE(t *testing.T) {
	iss := testIssuer(t)
	for name, req := range map[string]IssueRequest{
		"16 PCRs":      {PCRs: pcrs16()},
		"all fields":   {PCRs: pcrs16(), UserData: []byte("u"), Nonce: bytes.Repeat([]byte{9}, MaxFieldSize), PublicKey: []byte{1, 2}},
		"empty fields": {PCRs: map[int][]byte{0: make([]byte, 32), 31: make([]byte, 64)}, UserData: []byte{}, Nonce: []byte{}},
	} {
		t.Run(name, func(t *testing.T) {
			doc, err := iss.Issue(req)
			if err != nil {
				t.Fatal(err)
			}
			u, err := ParseUnverified(doc)
			if err != nil {
				t.Fatal(err)
			}
			for _, in := range [][]byte{doc, append([]byte{0xd2}, doc...)} {
				payload, err := goCOSEVerify(t, in)
				if err != nil {
					t.Fatalf("go-cose rejects an Issuer document (first byte %#x): %v", in[0], err)
				}
				if !bytes.Equal(payload, u.Payload) {
					t.Fatal("go-cose's payload differs from ParseUnverified's")
				}
			}
			bad := bytes.Clone(doc)
			bad[bytes.Index(bad, []byte("SHA384"))+5] ^= 1
			if _, err := goCOSEVerify(t, bad); !errors.Is(err, cose.ErrVerification) {
				t.Fatalf("go-cose on a tampered document: %v, want ErrVerification", err)
			}
		})
	}
}

// TestRealDocumentsWithGoCOSE: go-cose alone reaches the manifest's verdict
// on the signature of every real AWS document (TestRealDocuments runs them
// through Verifier, which verifies with go-cose too).
func TestRealDocumentsWithGoCOSE(t *testing.T) {
	for _, e := range loadManifest(t) {
		raw := readTestdata(t, e.File)
		for _, in := range [][]byte{raw, append([]byte{0xd2}, raw...)} {
			_, err := goCOSEVerify(t, in)
			switch e.Expected {
			case "valid", "valid-debug":
				if err != nil {
					t.Errorf("%s (first byte %#x): go-cose: %v", e.File, in[0], err)
				}
			case "bad-signature":
				if !errors.Is(err, cose.ErrVerification) {
					t.Errorf("%s (first byte %#x): go-cose: %v, want ErrVerification", e.File, in[0], err)
				}
			default:
				t.Fatalf("%s: unknown expected_result %q", e.File, e.Expected)
			}
		}
	}
}
