package attest

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

func TestDecodeEvidence(t *testing.T) {
	raw := readTestdata(t, "veracruz-go-1.cbor")
	tagged := append([]byte{0xd2}, raw...)
	wrap := func(s string) string {
		var b strings.Builder
		for len(s) > 64 {
			b.WriteString(s[:64] + "\n")
			s = s[64:]
		}
		return b.String() + s + "\n"
	}
	tests := []struct {
		name string
		in   []byte
		want []byte
	}{
		{"raw", raw, raw},
		{"raw tagged", tagged, tagged},
		{"hex", []byte(hex.EncodeToString(raw)), raw},
		{"HEX with newline", []byte(strings.ToUpper(hex.EncodeToString(raw)) + "\n"), raw},
		{"base64 std", []byte(base64.StdEncoding.EncodeToString(raw)), raw},
		{"base64 std wrapped", []byte(wrap(base64.StdEncoding.EncodeToString(raw))), raw},
		{"base64 std raw", []byte(base64.RawStdEncoding.EncodeToString(raw)), raw},
		{"base64 url", []byte(base64.URLEncoding.EncodeToString(raw)), raw},
		{"base64 url raw", []byte(base64.RawURLEncoding.EncodeToString(raw)), raw},
		{"base64 tagged", []byte(base64.StdEncoding.EncodeToString(tagged)), tagged},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeEvidence(tc.in)
			if err != nil || !bytes.Equal(got, tc.want) {
				t.Fatalf("DecodeEvidence = %d bytes, %v", len(got), err)
			}
		})
	}
	for name, in := range map[string][]byte{
		"empty":          nil,
		"whitespace":     []byte(" \n"),
		"json":           []byte(`{"doc":"x"}`),
		"hex of garbage": []byte("0011"),
		"base64 garbage": []byte("aGVsbG8="),
	} {
		if _, err := DecodeEvidence(in); !errors.Is(err, ErrMalformed) {
			t.Errorf("DecodeEvidence(%s) = %v, want ErrMalformed", name, err)
		}
	}
	if _, err := DecodeEvidence(bytes.Repeat([]byte("A"), 4*MaxDocumentSize+1)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("huge input: %v", err)
	}
	if _, err := DecodeEvidence(append([]byte{0x84}, make([]byte, MaxDocumentSize)...)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("huge raw input: %v", err)
	}
}

func TestAWSRoot(t *testing.T) {
	r := AWSRootCertificate()
	if r.Subject.CommonName != "aws.nitro-enclaves" || r.NotAfter.Year() != 2049 {
		t.Errorf("root %s valid to %s", r.Subject, r.NotAfter)
	}
	certs, err := ParseCertificatesPEM(AWSRootPEM())
	if err != nil || len(certs) != 1 || !certs[0].Equal(r) {
		t.Errorf("AWSRootPEM: %v", err)
	}
	roots, aws, err := LoadRoots([]string{"AWS"})
	if err != nil || !aws || len(roots) != 0 {
		t.Errorf("LoadRoots(aws) = %v, %v, %v", roots, aws, err)
	}
	if _, _, err := LoadRoots([]string{"/nonexistent/root.pem"}); err == nil {
		t.Error("LoadRoots of a missing file succeeded")
	}
}
