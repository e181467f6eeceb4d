package attest

import (
	"bytes"
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// fuzzSeeds returns the real documents (and tag-18 copies) plus documents
// made by the Issuer and by the test builder.
func fuzzSeeds(f *testing.F) (docs [][]byte, iss *Issuer, issAt time.Time) {
	for _, e := range loadManifest(f) {
		d := readTestdata(f, e.File)
		docs = append(docs, d, append([]byte{0xd2}, d...))
	}
	issAt = testNow
	iss, err := NewIssuer(IssuerConfig{Clock: func() time.Time { return issAt }})
	if err != nil {
		f.Fatal(err)
	}
	for _, req := range []IssueRequest{
		{PCRs: pcrs16()},
		{PCRs: map[int][]byte{0: make([]byte, 32), 31: make([]byte, 64)}, UserData: []byte("u"), Nonce: []byte{}, PublicKey: []byte{1}},
	} {
		d, err := iss.Issue(req)
		if err != nil {
			f.Fatal(err)
		}
		docs = append(docs, d)
	}
	c := newTestChain(f, nil)
	docs = append(docs, c.doc(f), []byte{}, []byte{0x84, 0x40, 0xa0, 0x40, 0x40}, []byte{0xd2, 0x84, 0x44, 0xa1, 0x01, 0x38, 0x22, 0xa0, 0x41, 0xa0, 0x40})
	return docs, iss, issAt
}

func FuzzParseUnverified(f *testing.F) {
	docs, _, _ := fuzzSeeds(f)
	for _, d := range docs {
		f.Add(d)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		u, err := ParseUnverified(b)
		if err != nil {
			if u != nil {
				t.Fatal("value returned with an error")
			}
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooLarge) && !errors.Is(err, ErrUnsupportedAlgorithm) {
				t.Fatalf("error %v wraps no parse sentinel", err)
			}
			return
		}
		d := u.Document
		if d.ModuleID == "" || d.Digest != "SHA384" || d.Timestamp.IsZero() || len(d.PCRs) == 0 || len(d.PCRs) > 32 ||
			len(d.Certificate) == 0 || len(d.Certificate) > MaxCertificateSize || len(d.CABundle) == 0 ||
			len(d.UserData) > MaxFieldSize || len(d.Nonce) > MaxFieldSize || len(d.PublicKey) > MaxFieldSize ||
			len(u.Signature) != SignatureSize || len(b) > MaxDocumentSize {
			t.Fatalf("accepted a document breaking an invariant: %+v", d)
		}
		for i, p := range d.PCRs {
			if i < 0 || i > 31 || (len(p) != 32 && len(p) != 48 && len(p) != 64) {
				t.Fatalf("accepted PCR %d of %d bytes", i, len(p))
			}
		}
		// Parsing is deterministic and independent of the tag.
		u2, err := ParseUnverified(u.Raw())
		if err != nil {
			t.Fatalf("re-parse of Raw(): %v", err)
		}
		if diff := cmp.Diff(u.Document, u2.Document); diff != "" {
			t.Fatalf("re-parse differs:\n%s", diff)
		}
	})
}

func FuzzVerify(f *testing.F) {
	docs, iss, issAt := fuzzSeeds(f)
	for _, d := range docs {
		f.Add(d)
	}
	v := mustVerifier(f, VerifierConfig{Roots: []*x509.Certificate{iss.Root()}})
	f.Fuzz(func(t *testing.T, b []byte) {
		// Verify at the issuer's time and at the document's own timestamp
		// (when it parses), so mutated real documents reach the signature
		// check too.
		ats := []time.Time{issAt}
		if u, err := ParseUnverified(b); err == nil {
			ats = append(ats, u.Document.Timestamp)
		}
		for _, at := range ats {
			got, err := v.Verify(b, at)
			if err != nil {
				if got != nil {
					t.Fatal("value returned with an error")
				}
				continue
			}
			u, perr := ParseUnverified(b)
			if perr != nil {
				t.Fatalf("verified but does not parse: %v", perr)
			}
			if diff := cmp.Diff(u.Document, got.Document()); diff != "" {
				t.Fatalf("verified document differs from parsed:\n%s", diff)
			}
			if !bytes.Equal(got.Chain()[len(got.Chain())-1].Raw, u.Document.CABundle[0]) {
				t.Fatal("chain root is not cabundle[0]")
			}
			// go-cose alone agrees with the verdict.
			if _, err := goCOSEVerify(t, b); err != nil {
				t.Fatalf("verified, but go-cose alone says: %v", err)
			}
		}
	})
}

func FuzzDecodeEvidence(f *testing.F) {
	for _, e := range loadManifest(f)[:2] {
		d := readTestdata(f, e.File)
		f.Add(d)
		f.Add([]byte(hexEncode(d)))
	}
	f.Add([]byte("hA=="))
	f.Add([]byte(" 84 "))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := DecodeEvidence(b)
		if err != nil {
			if d != nil {
				t.Fatal("value returned with an error")
			}
			return
		}
		if len(d) == 0 || (d[0] != 0x84 && d[0] != 0xd2) {
			t.Fatalf("decoded evidence starts % x", d[:min(len(d), 1)])
		}
	})
}
