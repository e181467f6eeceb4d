package eif

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha512"
	"encoding/asn1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/veraison/go-cose"

	"github.com/cloister/cloister/internal/cborx"
)

func TestSignatureSectionBytes(t *testing.T) {
	// serde_cbor layout: [{"signing_certificate": [uint...], "signature": [uint...]}]
	got := EncodeSignatureSection(SignatureSection{CertificatePEM: []byte{1, 200}, COSESign1: []byte{24}})
	want := append([]byte{0x81, 0xa2, 0x73}, "signing_certificate"...)
	want = append(want, 0x82, 0x01, 0x18, 0xc8, 0x69)
	want = append(want, "signature"...)
	want = append(want, 0x81, 0x18, 0x18)
	if !bytes.Equal(got, want) {
		t.Fatalf("got  % x\nwant % x", got, want)
	}
	back, err := DecodeSignatureSection(got)
	if err != nil || !bytes.Equal(back.CertificatePEM, []byte{1, 200}) || !bytes.Equal(back.COSESign1, []byte{24}) {
		t.Fatalf("decode: %+v %v", back, err)
	}
	// PcrInfo payload: {"register_index": 0, "register_value": [48 uints]}
	p := PCRInfoPayload(0, make([]byte, 48))
	wantP := append([]byte{0xa2, 0x6e}, "register_index"...)
	wantP = append(wantP, 0x00, 0x6e)
	wantP = append(wantP, "register_value"...)
	wantP = append(wantP, 0x98, 0x30)
	wantP = append(wantP, make([]byte, 48)...)
	if !bytes.Equal(p, wantP) {
		t.Fatalf("payload % x", p)
	}
}

func TestDecodeSignatureSectionRejects(t *testing.T) {
	enc := func(v any) []byte { b, _ := cbor.Marshal(v); return b }
	tests := map[string][]byte{
		"byte strings":  enc([]map[string]any{{"signing_certificate": []byte{1}, "signature": []byte{2}}}),
		"two entries":   enc([]map[string]any{{"signing_certificate": []int{1}, "signature": []int{2}}, {"signing_certificate": []int{1}, "signature": []int{2}}}),
		"value > 255":   enc([]map[string]any{{"signing_certificate": []int{256}, "signature": []int{2}}}),
		"unknown field": enc([]map[string]any{{"signing_certificate": []int{1}, "signature": []int{2}, "x": 1}}),
		"empty":         enc([]map[string]any{{"signing_certificate": []int{}, "signature": []int{2}}}),
		"trailing":      append(enc([]map[string]any{{"signing_certificate": []int{1}, "signature": []int{2}}}), 0),
		"indefinite":    {0x9f, 0xff},
		"garbage":       {0xff},
	}
	for name, in := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := DecodeSignatureSection(in); !errors.Is(err, ErrSignature) {
				t.Fatalf("got %v", err)
			}
		})
	}
}

func TestSignVerify(t *testing.T) {
	now := time.Now()
	for _, curve := range []elliptic.Curve{elliptic.P256(), elliptic.P384(), elliptic.P521()} {
		t.Run(curve.Params().Name, func(t *testing.T) {
			certPEM, key := testCert(t, curve, now.Add(-time.Hour), now.Add(time.Hour))
			img := testImage()
			before, _ := Measure(img)
			if err := Sign(img, certPEM, key); err != nil {
				t.Fatal(err)
			}
			if !CheckCRC(img) {
				t.Fatal("CRC not updated by Sign")
			}
			b, err := Marshal(img)
			if err != nil {
				t.Fatal(err)
			}
			img2, err := Unmarshal(b, ReadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			cert, err := VerifySignature(img2, now)
			if err != nil {
				t.Fatal(err)
			}
			m, err := Measure(img2)
			if err != nil {
				t.Fatal(err)
			}
			if m.PCR0 != before.PCR0 || m.PCR8 == nil {
				t.Fatal("signing changed PCR0 or PCR8 missing")
			}
			want, err := PCR8FromCertificate(certPEM)
			if err != nil || *m.PCR8 != want {
				t.Fatalf("PCR8 %x, pcr --signing-certificate %x (%v)", *m.PCR8, want, err)
			}
			if d := sha512.Sum384(cert.Raw); Extend(PCR{}, d[:]) != want {
				t.Fatal("PCR8 is not SHA384(0^48 ‖ SHA384(DER))")
			}
			// Expired or not yet valid certificates fail only when a time is given.
			if _, err := VerifySignature(img2, now.Add(2*time.Hour)); !errors.Is(err, ErrCertificateNotValidTime) {
				t.Fatalf("expired: %v", err)
			}
			if _, err := VerifySignature(img2, time.Time{}); err != nil {
				t.Fatalf("zero time: %v", err)
			}
			// Re-signing replaces the section, it does not add one.
			if err := Sign(img2, certPEM, key); err != nil {
				t.Fatal(err)
			}
			n := 0
			for _, s := range img2.Sections {
				if s.Type == SectionSignature {
					n++
				}
			}
			if n != 1 {
				t.Fatalf("%d signature sections after re-signing", n)
			}
			// Tampering with a measured section breaks the signature.
			img2.Sections[4].Data = []byte("evil")
			if _, err := VerifySignature(img2, now); !errors.Is(err, ErrSignatureVerify) {
				t.Fatalf("tampered: %v", err)
			}
		})
	}
}

func TestSignRejects(t *testing.T) {
	now := time.Now()
	certPEM, _ := testCert(t, elliptic.P384(), now.Add(-time.Hour), now.Add(time.Hour))
	other, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	img := testImage()
	if err := Sign(img, certPEM, other); !errors.Is(err, ErrKey) {
		t.Fatalf("mismatched key: %v", err)
	}
	rk, _ := rsa.GenerateKey(rand.Reader, 1024)
	if err := Sign(img, certPEM, rk); !errors.Is(err, ErrKey) {
		t.Fatalf("RSA key: %v", err)
	}
	if err := Sign(img, []byte("not a cert"), other); !errors.Is(err, ErrCertificate) {
		t.Fatalf("bad cert: %v", err)
	}
	if img.Section(SectionSignature) != nil {
		t.Fatal("failed Sign modified the image")
	}
	if _, err := VerifySignature(img, now); !errors.Is(err, ErrNotSigned) {
		t.Fatalf("unsigned: %v", err)
	}
}

// TestCOSEInterop checks our COSE_Sign1 against an independent
// implementation (veraison/go-cose) in both directions, and that the bytes
// go-cose produces have exactly our layout apart from the random signature.
func TestCOSEInterop(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	payload := PCRInfoPayload(0, bytes.Repeat([]byte{7}, 48))

	ours, err := SignCOSE(payload, key)
	if err != nil {
		t.Fatal(err)
	}
	var msg cose.UntaggedSign1Message
	if err := msg.UnmarshalCBOR(ours); err != nil {
		t.Fatal(err)
	}
	v, err := cose.NewVerifier(cose.AlgorithmES384, key.Public())
	if err != nil {
		t.Fatal(err)
	}
	if err := msg.Verify(nil, v); err != nil {
		t.Fatalf("go-cose rejects our signature: %v", err)
	}

	s, err := cose.NewSigner(cose.AlgorithmES384, key)
	if err != nil {
		t.Fatal(err)
	}
	theirs := cose.UntaggedSign1Message{Headers: cose.Headers{Protected: cose.ProtectedHeader{cose.HeaderLabelAlgorithm: cose.AlgorithmES384}}, Payload: payload}
	if err := theirs.Sign(rand.Reader, nil, s); err != nil {
		t.Fatal(err)
	}
	tb, err := theirs.MarshalCBOR()
	if err != nil {
		t.Fatal(err)
	}
	got, err := VerifyCOSE(tb, key.Public())
	if err != nil {
		t.Fatalf("we reject go-cose's signature: %v", err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatal("payload differs")
	}
	// Same bytes except the 96 signature bytes at the end.
	if len(tb) != len(ours) || !bytes.Equal(tb[:len(tb)-96], ours[:len(ours)-96]) {
		t.Fatalf("layout differs:\n go-cose % x\n ours    % x", tb[:len(tb)-96], ours[:len(ours)-96])
	}
	// Exact prefix: array(4), bstr(4){1: -35}, {}, bstr(payload), bstr(96)
	wantPrefix := []byte{0x84, 0x44, 0xa1, 0x01, 0x38, 0x22, 0xa0, 0x58, byte(len(payload))}
	if !bytes.HasPrefix(ours, wantPrefix) {
		t.Fatalf("prefix % x", ours[:9])
	}
	// Tagged form is accepted too.
	if _, err := VerifyCOSE(append([]byte{0xd2}, ours...), key.Public()); err != nil {
		t.Fatal(err)
	}
	// A signature made with ES256 over a P-384 key's message is refused.
	bad := append([]byte(nil), ours...)
	bad[5] = 0x26 // alg -7
	if _, err := VerifyCOSE(bad, key.Public()); !errors.Is(err, ErrSignatureVerify) {
		t.Fatalf("wrong alg: %v", err)
	}
}

func TestDescribeJSON(t *testing.T) {
	nb := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	certPEM, key := testCert(t, elliptic.P384(), nb, nb.AddDate(10, 0, 0))
	img := testImage()
	md := Metadata{ImageName: "app", ImageVersion: "abc", BuildMetadata: BuildMetadata{BuildTime: "2025-01-01T00:00:00+00:00", BuildTool: "cloister",
		BuildToolVersion: "v1", OperatingSystem: "Linux/x86", KernelVersion: "6.6"},
		DockerInfo: json.RawMessage(`{"Id":"sha256:x"}`), CustomMetadata: json.RawMessage(`{"zeta":1,"alpha":"<b>"}`)}
	mb, err := MarshalMetadata(&md)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"ImageName":"app","ImageVersion":"abc","BuildMetadata":{"BuildTime":"2025-01-01T00:00:00+00:00","BuildTool":"cloister","BuildToolVersion":"v1","OperatingSystem":"Linux/x86","KernelVersion":"6.6"},"DockerInfo":{"Id":"sha256:x"},"CustomMetadata":{"zeta":1,"alpha":"<b>"}}`; string(mb) != want {
		t.Fatalf("metadata\n got %s\nwant %s", mb, want)
	}
	img.Sections[2].Data = mb
	if err := Sign(img, certPEM, key); err != nil {
		t.Fatal(err)
	}
	d, err := Describe(img)
	if err != nil {
		t.Fatal(err)
	}
	j, err := marshalNoHTML(d)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := Measure(img)
	c, _ := ParseCertificate(certPEM)
	var sig []string
	for _, b := range c.Signature {
		sig = append(sig, strings.ToUpper(hex.EncodeToString([]byte{b})))
	}
	want := `{"EifVersion":4,"Measurements":{"HashAlgorithm":"Sha384 { ... }","PCR0":"` + hex.EncodeToString(m.PCR0[:]) +
		`","PCR1":"` + hex.EncodeToString(m.PCR1[:]) + `","PCR2":"` + hex.EncodeToString(m.PCR2[:]) + `","PCR8":"` + hex.EncodeToString(m.PCR8[:]) +
		`"},"IsSigned":true,"SigningCertificate":{"IssuerName":{"commonName":"signer","countryName":"DE","localityName":"Berlin","organizationName":"Cloister Test","organizationalUnitName":"QA","stateOrProvinceName":"Berlin"},` +
		`"Algorithm":"ecdsa-with-SHA384","NotBefore":"Mar  4 05:06:07 2025 GMT","NotAfter":"Mar  4 05:06:07 2035 GMT","Signature":"` + strings.Join(sig, ":") +
		`"},"CheckCRC":true,"SignatureCheck":true,"ImageName":"app","ImageVersion":"abc","Metadata":{"BuildTime":"2025-01-01T00:00:00+00:00","BuildTool":"cloister","BuildToolVersion":"v1","OperatingSystem":"Linux/x86","KernelVersion":"6.6","DockerInfo":{"Id":"sha256:x"},"alpha":"<b>","zeta":1}}`
	if string(j) != want {
		t.Fatalf("describe\n got %s\nwant %s", j, want)
	}
	// An unsigned image has no SigningCertificate or SignatureCheck keys.
	d2, err := Describe(testImage())
	if err != nil {
		t.Fatal(err)
	}
	j2, _ := json.Marshal(d2)
	if strings.Contains(string(j2), "SigningCertificate") || strings.Contains(string(j2), "SignatureCheck") || !strings.Contains(string(j2), `"IsSigned":false`) {
		t.Fatalf("unsigned describe: %s", j2)
	}
	var back BuildInfo
	if err := json.Unmarshal([]byte(`{"Measurements":`+string(mustJSON(t, m))+`}`), &back); err != nil || back.Measurements.PCR0 != m.PCR0 || back.Measurements.PCR8 == nil {
		t.Fatalf("Measurements JSON round trip: %v", err)
	}
}

func mustJSON(t *testing.T, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// optsSigner is a crypto.Signer that is not an *ecdsa.PrivateKey (as an HSM
// or KMS signer would be) and insists on being told the hash; bad replaces
// its signature when set.
type optsSigner struct {
	key  *ecdsa.PrivateKey
	hash crypto.Hash
	bad  []byte
}

func (s optsSigner) Public() crypto.PublicKey { return s.key.Public() }

func (s optsSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts == nil || opts.HashFunc() != s.hash {
		return nil, fmt.Errorf("signer wants hash %v, got opts %v", s.hash, opts)
	}
	if s.bad != nil {
		return s.bad, nil
	}
	return s.key.Sign(r, digest, opts)
}

func TestSignCOSECryptoSigner(t *testing.T) {
	for _, tc := range []struct {
		curve elliptic.Curve
		hash  crypto.Hash
	}{{elliptic.P256(), crypto.SHA256}, {elliptic.P384(), crypto.SHA384}, {elliptic.P521(), crypto.SHA512}} {
		key, err := ecdsa.GenerateKey(tc.curve, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		payload := PCRInfoPayload(0, bytes.Repeat([]byte{3}, 48))
		msg, err := SignCOSE(payload, optsSigner{key: key, hash: tc.hash})
		if err != nil {
			t.Fatalf("%s: %v", tc.curve.Params().Name, err)
		}
		if got, err := VerifyCOSE(msg, key.Public()); err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("%s: verify: %v", tc.curve.Params().Name, err)
		}
	}
	// A signer returning something that is not a valid signature is refused.
	key, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	zero, _ := asn1.Marshal(struct{ R, S *big.Int }{big.NewInt(0), big.NewInt(0)})
	huge, _ := asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).Lsh(big.NewInt(1), 400), big.NewInt(1)})
	other, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	otherSig, _ := other.Sign(rand.Reader, make([]byte, 48), crypto.SHA384)
	for name, bad := range map[string][]byte{"garbage": {1, 2, 3}, "zero r and s": zero, "r too large": huge, "another key": otherSig} {
		if _, err := SignCOSE([]byte{0xa0}, optsSigner{key: key, hash: crypto.SHA384, bad: bad}); !errors.Is(err, ErrKey) {
			t.Errorf("%s: %v, want ErrKey", name, err)
		}
	}
}

// TestVerifyCOSERejects checks nitro's COSE profile in front of go-cose:
// each case is a well-signed message (where it can be) that breaks one rule.
func TestVerifyCOSERejects(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	payload := PCRInfoPayload(0, bytes.Repeat([]byte{7}, 48))
	// build signs protected and payload with key over the Sig_structure and
	// encodes [protected, unprotected, payload, signature] with the given
	// raw items, so that only the broken rule fails.
	build := func(protected, unprotected []byte, sigLen int) []byte {
		tbs := cborx.AppendHead(nil, cborx.MajorArray, 4)
		tbs = cborx.AppendText(tbs, "Signature1")
		tbs = cborx.AppendBytes(tbs, protected)
		tbs = cborx.AppendBytes(tbs, nil)
		tbs = cborx.AppendBytes(tbs, payload)
		d := sha512.Sum384(tbs)
		r, s, err := ecdsa.Sign(rand.Reader, key, d[:])
		if err != nil {
			t.Fatal(err)
		}
		sig := make([]byte, 96)
		r.FillBytes(sig[:48])
		s.FillBytes(sig[48:])
		if sigLen < 96 {
			sig = sig[:sigLen]
		} else {
			sig = append(sig, make([]byte, sigLen-96)...)
		}
		b := cborx.AppendHead(nil, cborx.MajorArray, 4)
		b = cborx.AppendBytes(b, protected)
		b = append(b, unprotected...)
		b = cborx.AppendBytes(b, payload)
		return cborx.AppendBytes(b, sig)
	}
	es384 := []byte{0xa1, 0x01, 0x38, 0x22}
	good := build(es384, []byte{0xa0}, 96)
	if _, err := VerifyCOSE(good, key.Public()); err != nil {
		t.Fatalf("control: %v", err)
	}
	// Same content, payload as a serde-style array instead of a byte string.
	payloadArray := append([]byte{0x84, 0x44}, es384...)
	payloadArray = append(payloadArray, 0xa0, 0x81, 0x00)
	payloadArray = cborx.AppendBytes(payloadArray, make([]byte, 96))
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		// Rejected before this redesign as well.
		{"empty", nil, ErrSignature},
		{"trailing byte", append(slices.Clone(good), 0x00), ErrSignature},
		{"double tag 18", append([]byte{0xd2, 0xd2}, good...), ErrSignature},
		{"tag 98", append([]byte{0xd8, 0x62}, good...), ErrSignature},
		{"indefinite array", append(append([]byte{0x9f}, good[1:]...), 0xff), ErrSignature},
		{"array of 3", append([]byte{0x83}, good[1:]...), ErrSignature},
		{"protected ES256", build([]byte{0xa1, 0x01, 0x26}, []byte{0xa0}, 96), ErrSignatureVerify},
		{"protected ES512", build([]byte{0xa1, 0x01, 0x38, 0x23}, []byte{0xa0}, 96), ErrSignatureVerify},
		{"protected without alg", build([]byte{0xa0}, []byte{0xa0}, 96), ErrSignatureVerify},
		{"protected not a map", build([]byte{0x80}, []byte{0xa0}, 96), ErrSignature},
		{"protected duplicate alg", build([]byte{0xa2, 0x01, 0x38, 0x22, 0x01, 0x38, 0x22}, []byte{0xa0}, 96), ErrSignature},
		{"signature 95 bytes", build(es384, []byte{0xa0}, 95), ErrSignatureVerify},
		{"signature 97 bytes", build(es384, []byte{0xa0}, 97), ErrSignatureVerify},
		{"tampered signature", func() []byte { b := slices.Clone(good); b[len(b)-1] ^= 1; return b }(), ErrSignatureVerify},
		{"tampered payload", func() []byte {
			b := slices.Clone(good)
			b[bytes.Index(b, []byte("register_value"))+20] ^= 1
			return b
		}(), ErrSignatureVerify},
		// Accepted before this redesign: nitro's cose crate writes exactly
		// {1: alg} and {} and a byte-string payload, and so must a signer.
		{"protected extra kid", build([]byte{0xa2, 0x01, 0x38, 0x22, 0x04, 0x41, 0x01}, []byte{0xa0}, 96), ErrSignatureVerify},
		{"protected non-shortest label", build([]byte{0xa1, 0x18, 0x01, 0x38, 0x22}, []byte{0xa0}, 96), ErrSignatureVerify},
		{"unprotected kid", build(es384, []byte{0xa1, 0x04, 0x41, 0x01}, 96), ErrSignature},
		{"unprotected non-shortest empty map", build(es384, []byte{0xb8, 0x00}, 96), ErrSignature},
		{"array head non-shortest", append([]byte{0x98, 0x04}, good[1:]...), ErrSignature},
		{"payload as array", payloadArray, ErrSignature},
		{"payload detached (null)", append(append([]byte{0x84, 0x44}, es384...), append([]byte{0xa0, 0xf6}, good[len(good)-98:]...)...), ErrSignature},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, in := range [][]byte{tc.in, append([]byte{0xd2}, tc.in...)} {
				got, err := VerifyCOSE(in, key.Public())
				if got != nil || !errors.Is(err, tc.want) {
					t.Fatalf("VerifyCOSE(% x…) = %v, %v; want %v", in[:min(len(in), 8)], got != nil, err, tc.want)
				}
			}
		})
	}
}

func FuzzVerifyCOSE(f *testing.F) {
	keys := map[string]*ecdsa.PrivateKey{}
	for _, c := range []elliptic.Curve{elliptic.P256(), elliptic.P384(), elliptic.P521()} {
		k, err := ecdsa.GenerateKey(c, rand.Reader)
		if err != nil {
			f.Fatal(err)
		}
		keys[c.Params().Name] = k
		msg, err := SignCOSE(PCRInfoPayload(0, bytes.Repeat([]byte{1}, 48)), k)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(msg)
		f.Add(append([]byte{0xd2}, msg...))
	}
	f.Add([]byte{0x84, 0x44, 0xa1, 0x01, 0x38, 0x22, 0xa0, 0x40, 0x40})
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, k := range keys {
			payload, err := VerifyCOSE(b, k.Public())
			if err != nil {
				if payload != nil {
					t.Fatal("payload returned with an error")
				}
				continue
			}
			// Whatever passes the profile and go-cose also verifies with
			// go-cose alone and carries the same payload.
			data, _ := cborx.StripTag(b, 18)
			var m cose.UntaggedSign1Message
			if err := m.UnmarshalCBOR(data); err != nil {
				t.Fatalf("accepted, but go-cose cannot decode it: %v", err)
			}
			p, _ := paramsFor(k.Public())
			v, err := cose.NewVerifier(p.alg, k.Public())
			if err != nil {
				t.Fatal(err)
			}
			if err := m.Verify(nil, v); err != nil || !bytes.Equal(m.Payload, payload) {
				t.Fatalf("accepted, but go-cose alone says %v (payload equal %v)", err, bytes.Equal(m.Payload, payload))
			}
		}
	})
}
