package attest

import (
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"sync"
	"testing"
)

var (
	sharedIssuerOnce sync.Once
	sharedIssuer     *Issuer
	sharedIssuerErr  error
)

// testIssuer returns one Issuer shared by the tests (key generation is slow
// under -race).
func testIssuer(t testing.TB) *Issuer {
	t.Helper()
	sharedIssuerOnce.Do(func() { sharedIssuer, sharedIssuerErr = NewIssuer(IssuerConfig{}) })
	if sharedIssuerErr != nil {
		t.Fatal(sharedIssuerErr)
	}
	return sharedIssuer
}

func pkixExt(oid []int, critical bool) pkix.Extension {
	return pkix.Extension{Id: asn1.ObjectIdentifier(oid), Critical: critical, Value: []byte{0x05, 0x00}}
}

func hexEncode(b []byte) string { return hex.EncodeToString(b) }
