package attest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha512"
	"crypto/x509"
	"testing"
	"time"
)

// benchDoc is a real AWS document (1 KiB fields) and its verification time.
func benchDoc(b *testing.B) ([]byte, time.Time) {
	b.Helper()
	e := loadManifest(b)[0]
	return readTestdata(b, e.File), e.VerifyAt
}

// BenchmarkVerifyCold verifies a real document with caching disabled: 4
// certificate signatures + 1 COSE signature per operation.
func BenchmarkVerifyCold(b *testing.B) {
	doc, at := benchDoc(b)
	v := mustVerifier(b, VerifierConfig{CacheSize: -1})
	b.SetBytes(int64(len(doc)))
	b.ReportAllocs()
	m := startCPU(b)
	for b.Loop() {
		if _, err := v.Verify(doc, at); err != nil {
			b.Fatal(err)
		}
	}
	m.stop()
}

// BenchmarkVerifyWarm verifies the same real document repeatedly with a
// shared Verifier: chain and leaf cached, 1 COSE signature per operation.
func BenchmarkVerifyWarm(b *testing.B) {
	doc, at := benchDoc(b)
	v := mustVerifier(b, VerifierConfig{})
	if _, err := v.Verify(doc, at); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(doc)))
	b.ReportAllocs()
	m := startCPU(b)
	for b.Loop() {
		if _, err := v.Verify(doc, at); err != nil {
			b.Fatal(err)
		}
	}
	m.stop()
}

// BenchmarkVerifyWarmIssuer is the warm path on Issuer documents, each one
// fresh (new nonce), as a key service sees them.
func BenchmarkVerifyWarmIssuer(b *testing.B) {
	iss := testIssuer(b)
	v := mustVerifier(b, VerifierConfig{NoAWSRoot: true, Roots: []*x509.Certificate{iss.Root()}})
	docs := make([][]byte, 64)
	for i := range docs {
		d, err := iss.Issue(IssueRequest{PCRs: pcrs16(), Nonce: []byte{byte(i)}})
		if err != nil {
			b.Fatal(err)
		}
		docs[i] = d
	}
	now := time.Now()
	b.ReportAllocs()
	i := 0
	m := startCPU(b)
	for b.Loop() {
		if _, err := v.Verify(docs[i%len(docs)], now); err != nil {
			b.Fatal(err)
		}
		i++
	}
	m.stop()
}

// BenchmarkP384Verify is the bare cost of one ECDSA P-384 verification of a
// SHA-384 digest (the reference for the Verify benchmarks).
func BenchmarkP384Verify(b *testing.B) {
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	digest := sha512.Sum384([]byte("cloister"))
	r, s, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	m := startCPU(b)
	for b.Loop() {
		if !ecdsa.Verify(&key.PublicKey, digest[:], r, s) {
			b.Fatal("verify failed")
		}
	}
	m.stop()
}

// BenchmarkIssue issues documents with a cached leaf (one signature each).
func BenchmarkIssue(b *testing.B) {
	iss := testIssuer(b)
	req := IssueRequest{PCRs: pcrs16(), Nonce: make([]byte, 32), UserData: make([]byte, 64)}
	b.ReportAllocs()
	m := startCPU(b)
	for b.Loop() {
		if _, err := iss.Issue(req); err != nil {
			b.Fatal(err)
		}
	}
	m.stop()
}

// BenchmarkP384Sign is the bare cost of one ECDSA P-384 signature.
func BenchmarkP384Sign(b *testing.B) {
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	digest := sha512.Sum384([]byte("cloister"))
	b.ReportAllocs()
	m := startCPU(b)
	for b.Loop() {
		if _, _, err := ecdsa.Sign(rand.Reader, key, digest[:]); err != nil {
			b.Fatal(err)
		}
	}
	m.stop()
}

// BenchmarkParseUnverified is the CBOR/COSE parsing cost alone.
func BenchmarkParseUnverified(b *testing.B) {
	doc, _ := benchDoc(b)
	b.SetBytes(int64(len(doc)))
	b.ReportAllocs()
	m := startCPU(b)
	for b.Loop() {
		if _, err := ParseUnverified(doc); err != nil {
			b.Fatal(err)
		}
	}
	m.stop()
}
