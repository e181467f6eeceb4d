package attest

import (
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

type manifestEntry struct {
	File       string            `json:"file"`
	Expected   string            `json:"expected_result"`
	VerifyAt   time.Time         `json:"verify_at"`
	ModuleID   string            `json:"module_id"`
	Timestamp  time.Time         `json:"timestamp_utc"`
	Debug      bool              `json:"debug_mode"`
	NonzeroPCR map[string]string `json:"nonzero_pcrs"`
	UserData   *string           `json:"user_data"`
	Nonce      *string           `json:"nonce"`
	PublicKey  *string           `json:"public_key"`
}

func loadManifest(t testing.TB) []manifestEntry {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m []manifestEntry
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if len(m) == 0 {
		t.Fatal("empty manifest")
	}
	return m
}

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func optHexBytes(t *testing.T, s *string) []byte {
	t.Helper()
	if s == nil {
		return nil
	}
	b, err := hex.DecodeString(*s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func isZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

func TestRealDocuments(t *testing.T) {
	v, err := NewVerifier(VerifierConfig{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range loadManifest(t) {
		raw := readTestdata(t, e.File)
		for _, variant := range []struct {
			name string
			doc  []byte
		}{{"untagged", raw}, {"tag18", append([]byte{0xd2}, raw...)}} {
			t.Run(e.File+"/"+variant.name, func(t *testing.T) {
				// A fresh verifier (cold path) and the shared one (warm
				// path after the first variant) must agree.
				for _, ver := range []*Verifier{mustVerifier(t, VerifierConfig{}), v} {
					checkRealDocument(t, ver, e, variant.doc)
				}
			})
		}
	}
}

func mustVerifier(t testing.TB, cfg VerifierConfig) *Verifier {
	t.Helper()
	v, err := NewVerifier(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func checkRealDocument(t *testing.T, v *Verifier, e manifestEntry, doc []byte) {
	t.Helper()
	got, err := v.Verify(doc, e.VerifyAt)
	switch e.Expected {
	case "bad-signature":
		if !errors.Is(err, ErrSignature) || got != nil {
			t.Fatalf("Verify = %v, %v; want ErrSignature", got, err)
		}
		// The payload still parses and matches the manifest.
		u, err := ParseUnverified(doc)
		if err != nil {
			t.Fatal(err)
		}
		checkFields(t, e, u.Document)
	case "valid", "valid-debug":
		if err != nil {
			t.Fatalf("Verify: %v", err)
		}
		checkFields(t, e, got.Document())
		if got.Debug() != e.Debug || (e.Expected == "valid-debug") != e.Debug {
			t.Errorf("Debug() = %v, manifest %v (%s)", got.Debug(), e.Debug, e.Expected)
		}
		if n := len(got.Chain()); n != 5 {
			t.Errorf("chain length %d, want 5", n)
		}
		if !got.Chain()[4].Equal(AWSRootCertificate()) {
			t.Error("chain does not end in the AWS root")
		}
		err = Policy{}.Evaluate(got, e.VerifyAt)
		if e.Debug {
			var pe *PolicyError
			if !errors.Is(err, ErrDebug) || !errors.As(err, &pe) || len(pe.Failures) != 1 {
				t.Errorf("default policy on a debug document: %v, want exactly ErrDebug", err)
			}
			if err := (Policy{AllowDebug: true}).Evaluate(got, e.VerifyAt); err != nil {
				t.Errorf("AllowDebug policy: %v", err)
			}
		} else if err != nil {
			t.Errorf("default policy: %v", err)
		}
		// A policy matching every non-zero PCR, the nonce and user_data passes.
		p := Policy{AllowDebug: true, PCRs: map[int][]byte{}, MaxAge: time.Hour,
			UserData: ExpectUserData(optHexBytes(t, e.UserData)), PublicKey: ExpectPublicKey(optHexBytes(t, e.PublicKey))}
		for k, h := range e.NonzeroPCR {
			i, err := strconv.Atoi(k)
			if err != nil {
				t.Fatal(err)
			}
			p.PCRs[i] = optHexBytes(t, &h)
		}
		if e.Nonce != nil {
			p.Nonce = optHexBytes(t, e.Nonce)
		}
		if err := p.Evaluate(got, e.VerifyAt); err != nil {
			t.Errorf("full policy: %v", err)
		}
	default:
		t.Fatalf("unknown expected_result %q", e.Expected)
	}
	// Four hours later the leaf has expired.
	if _, err := v.Verify(doc, e.VerifyAt.Add(4*time.Hour)); !errors.Is(err, ErrExpired) {
		t.Errorf("Verify 4h later: %v, want ErrExpired", err)
	}
	var ce *CertificateError
	if _, err := v.Verify(doc, e.VerifyAt.Add(4*time.Hour)); !errors.As(err, &ce) || ce.Index != 0 {
		t.Errorf("Verify 4h later: %v, want a CertificateError on the leaf", err)
	}
	// Not under a foreign root.
	iss := testIssuer(t)
	if _, err := Verify(doc, e.VerifyAt, VerifierConfig{NoAWSRoot: true, Roots: []*x509.Certificate{iss.Root()}}); !errors.Is(err, ErrUntrustedRoot) {
		t.Errorf("Verify under a foreign root: %v, want ErrUntrustedRoot", err)
	}
}

func checkFields(t *testing.T, e manifestEntry, d Document) {
	t.Helper()
	if d.ModuleID != e.ModuleID {
		t.Errorf("module_id %q, want %q", d.ModuleID, e.ModuleID)
	}
	if !d.Timestamp.Equal(e.Timestamp) {
		t.Errorf("timestamp %s, want %s", d.Timestamp, e.Timestamp)
	}
	if d.Digest != "SHA384" {
		t.Errorf("digest %q", d.Digest)
	}
	nonzero := map[string]string{}
	for i, p := range d.PCRs {
		if !isZero(p) {
			nonzero[strconv.Itoa(i)] = hex.EncodeToString(p)
		}
	}
	if diff := cmp.Diff(e.NonzeroPCR, nonzero); diff != "" {
		t.Errorf("non-zero PCRs (-manifest +doc):\n%s", diff)
	}
	if diff := cmp.Diff(optHexBytes(t, e.UserData), d.UserData); diff != "" {
		t.Errorf("user_data:\n%s", diff)
	}
	if diff := cmp.Diff(optHexBytes(t, e.Nonce), d.Nonce); diff != "" {
		t.Errorf("nonce:\n%s", diff)
	}
	if diff := cmp.Diff(optHexBytes(t, e.PublicKey), d.PublicKey); diff != "" {
		t.Errorf("public_key:\n%s", diff)
	}
	if len(d.CABundle) != 4 {
		t.Errorf("cabundle has %d entries, want 4", len(d.CABundle))
	}
}
