package nsmemu_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha512"
	"testing"

	"github.com/cloister/cloister/internal/nsm"
	"github.com/cloister/cloister/parent/nsmemu"
)

// BenchmarkEmulatorAttestation measures documents issued per second
// through Handle: decode the request, snapshot the locked PCRs, build and
// sign the document (one ECDSA P-384 signature with the cached leaf),
// encode the response. Compare with BenchmarkP384Sign.
func BenchmarkEmulatorAttestation(b *testing.B) {
	e := newEmulator(b, nsmemu.Config{})
	req, err := nsm.EncodeRequest(nsm.AttestationRequest{Nonce: make([]byte, 32), UserData: make([]byte, 64)})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	// Warm the issuer's certificate cache.
	if r, err := nsm.DecodeResponse(e.Handle(ctx, req)); err != nil || r.Name() != "Attestation" {
		b.Fatalf("warm-up: %#v, %v", r, err)
	}
	b.ReportAllocs()
	for b.Loop() {
		resp := e.Handle(ctx, req)
		if len(resp) < 1000 {
			b.Fatalf("short response %x", resp)
		}
	}
}

// BenchmarkP384Sign is the floor: a bare ecdsa.Sign of a SHA-384 digest.
func BenchmarkP384Sign(b *testing.B) {
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	digest := sha512.Sum384([]byte("payload"))
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := ecdsa.Sign(rand.Reader, key, digest[:]); err != nil {
			b.Fatal(err)
		}
	}
}
