package enclave_test

import (
	"context"
	"crypto/rand"
	"crypto/sha512"
	"errors"
	"fmt"
	"log"
	"math/big"
	"time"

	"github.com/cloister/cloister/enclave"
)

// Open the enclave's security module — /dev/nsm in a Nitro enclave, the
// daemon's emulated module in a microVM or the sandbox — and describe it.
func ExampleOpenSession() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := enclave.OpenSession(ctx, nil) // the world is detected
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	d, err := s.Describe(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("module %s (%v world), NSM API %d.%d.%d, %d PCRs, %s\n",
		d.ModuleID, s.World(), d.VersionMajor, d.VersionMinor, d.VersionPatch, d.MaxPCRs, d.Digest)
}

// Force a world instead of detecting it.
func ExampleOpenSession_world() {
	ctx := context.Background()
	s, err := enclave.OpenSession(ctx, &enclave.SessionConfig{World: enclave.WorldSandbox})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
}

// Answer a verifier's challenge with an attestation document that carries
// its nonce and the enclave's public key.
func ExampleSession_Attest() {
	ctx := context.Background()
	s, err := enclave.OpenSession(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	nonce := []byte("challenge from the verifier")
	var publicKeyDER []byte // e.g. x509.MarshalPKIXPublicKey(&key.PublicKey)
	doc, err := s.Attest(ctx, enclave.AttestOptions{Nonce: nonce, PublicKey: publicKeyDER})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("attestation document: %d bytes (verify it with the attest package)\n", len(doc))
}

// Read a boot measurement.
func ExampleSession_DescribePCR() {
	ctx := context.Background()
	s, err := enclave.OpenSession(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	pcr0, err := s.DescribePCR(ctx, 0)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("PCR0 %x (locked: %v)\n", pcr0.Value, pcr0.Locked)
}

// Measure the application's configuration into PCR16, then lock it so that
// every later attestation document carries it.
func ExampleSession_ExtendPCR() {
	ctx := context.Background()
	s, err := enclave.OpenSession(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	digest := sha512.Sum384([]byte(`{"mode":"production"}`))
	v, err := s.ExtendPCR(ctx, 16, digest[:])
	if err != nil {
		log.Fatal(err)
	}
	if err := s.LockPCR(ctx, 16); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("PCR16 = %x\n", v)
}

// Boot PCRs are read-only; the error says so.
func ExampleSession_LockPCR() {
	ctx := context.Background()
	s, err := enclave.OpenSession(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	err = s.LockPCR(ctx, 0)
	fmt.Println(errors.Is(err, enclave.ErrReadOnlyIndex))
}

// Lock PCRs 0..23 at once.
func ExampleSession_LockPCRs() {
	ctx := context.Background()
	s, err := enclave.OpenSession(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	if err := s.LockPCRs(ctx, 24); err != nil {
		log.Fatal(err)
	}
}

// List the PCRs that attestation documents will contain.
func ExampleSession_Describe() {
	ctx := context.Background()
	s, err := enclave.OpenSession(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	d, err := s.Describe(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("locked PCRs:", d.LockedPCRs)
}

// Fetch entropy from the module.
func ExampleSession_Random() {
	ctx := context.Background()
	s, err := enclave.OpenSession(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	key, err := s.Random(ctx, 32)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%d random bytes\n", len(key))
}

// Use the module as an io.Reader, e.g. for crypto/rand-style helpers.
func ExampleSession_Reader() {
	ctx := context.Background()
	s, err := enclave.OpenSession(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	n, err := rand.Int(s.Reader(), big.NewInt(1000000))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("random number below one million:", n)
}
