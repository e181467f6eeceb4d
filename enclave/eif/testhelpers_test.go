package eif

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"testing"
	"time"
)

// testImage returns a small valid version 4 image.
func testImage() *Image {
	return &Image{Sections: []Section{
		{Type: SectionKernel, Data: []byte("kernel-bytes")},
		{Type: SectionCmdline, Data: []byte("console=ttyS0")},
		{Type: SectionMetadata, Data: []byte(`{"ImageName":"x","ImageVersion":"1","BuildMetadata":{"BuildTime":"t","BuildTool":"b","BuildToolVersion":"v","OperatingSystem":"o","KernelVersion":"k"},"DockerInfo":null,"CustomMetadata":null}`)},
		{Type: SectionRamdisk, Data: []byte("ramdisk-zero")},
		{Type: SectionRamdisk, Data: []byte("ramdisk-one-customer")},
	}}
}

// testCert makes a self-signed certificate for a new key on curve.
func testCert(t testing.TB, curve elliptic.Curve, notBefore, notAfter time.Time) ([]byte, crypto.Signer) {
	t.Helper()
	key, err := ecdsa.GenerateKey(curve, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(42),
		Subject: pkix.Name{CommonName: "signer", Organization: []string{"Cloister Test"}, Country: []string{"DE"},
			Province: []string{"Berlin"}, Locality: []string{"Berlin"}, OrganizationalUnit: []string{"QA"}},
		NotBefore: notBefore,
		NotAfter:  notAfter,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), key
}

func ellipticP384() elliptic.Curve { return elliptic.P384() }
func timeNow() time.Time           { return time.Now() }

// MarshalJSONTest returns the JSON of b as a string.
func (b BuildInfo) MarshalJSONTest() (string, error) {
	j, err := marshalNoHTML(b)
	return string(j), err
}
