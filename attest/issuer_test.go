package attest

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/internal/cborx"
)

// fakeClock is a settable clock for Issuer tests.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func pcrs16() map[int][]byte {
	m := map[int][]byte{}
	for i := range 16 {
		m[i] = bytes.Repeat([]byte{byte(i + 1)}, 48)
	}
	return m
}

func TestIssuerRoundTrip(t *testing.T) {
	clk := &fakeClock{t: testNow}
	iss, err := NewIssuer(IssuerConfig{Clock: clk.Now, Name: "test.cloister"})
	if err != nil {
		t.Fatal(err)
	}
	req := IssueRequest{
		ModuleID:  "i-0123-enc4567",
		PCRs:      pcrs16(),
		UserData:  []byte("user"),
		Nonce:     bytes.Repeat([]byte{9}, 1024),
		PublicKey: nil,
	}
	doc, err := iss.Issue(req)
	if err != nil {
		t.Fatal(err)
	}
	// NSM byte layout: untagged, protected a1 01 38 22, empty unprotected map.
	if !bytes.HasPrefix(doc, []byte{0x84, 0x44, 0xa1, 0x01, 0x38, 0x22, 0xa0, 0x59}) {
		t.Errorf("document starts % x", doc[:8])
	}
	u, err := ParseUnverified(doc)
	if err != nil {
		t.Fatal(err)
	}
	// Payload key order and explicit null.
	var keys []string
	dec := cborx.Strict.NewDecoder(bytes.NewReader(u.Payload))
	var raw cbor.RawMessage
	if err := dec.Decode(&raw); err != nil {
		t.Fatal(err)
	}
	for rest := raw[1:]; len(rest) > 0; {
		var k string
		var v cbor.RawMessage
		r, err := cborx.Strict.UnmarshalFirst(rest, &k)
		if err != nil {
			t.Fatal(err)
		}
		if r, err = cborx.Strict.UnmarshalFirst(r, &v); err != nil {
			t.Fatal(err)
		}
		if k == "public_key" && !cborx.IsNull(v) {
			t.Errorf("public_key = % x, want null", v)
		}
		keys = append(keys, k)
		rest = r
	}
	want := []string{"module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle", "public_key", "user_data", "nonce"}
	if diff := cmp.Diff(want, keys); diff != "" {
		t.Errorf("payload keys (-want +got):\n%s", diff)
	}

	v, err := Verify(doc, clk.Now(), VerifierConfig{NoAWSRoot: true, Roots: []*x509.Certificate{iss.Root()}})
	if err != nil {
		t.Fatalf("Verify under the issuer root: %v", err)
	}
	d := v.Document()
	wantDoc := Document{
		ModuleID: req.ModuleID, Digest: "SHA384", Timestamp: testNow, PCRs: req.PCRs,
		Certificate: d.Certificate, CABundle: iss.bundleDER(), UserData: req.UserData, Nonce: req.Nonce,
	}
	if diff := cmp.Diff(wantDoc, d); diff != "" {
		t.Errorf("document (-want +got):\n%s", diff)
	}
	if v.Debug() {
		t.Error("non-zero PCR0..2 reported as debug")
	}
	chain := v.Chain()
	if len(chain) != 5 || !chain[4].Equal(iss.Root()) {
		t.Fatalf("chain of %d, root %v", len(chain), chain[len(chain)-1].Subject)
	}
	for i, wantPath := range []int{-1, 0, 1, 2, -1} { // leaf, instance, zonal, regional, root
		c := chain[i]
		got := c.MaxPathLen
		if c.MaxPathLen == 0 && !c.MaxPathLenZero {
			got = -1
		}
		if got != wantPath {
			t.Errorf("chain[%d] %s pathLen %d, want %d", i, c.Subject, got, wantPath)
		}
	}
	if !strings.Contains(chain[4].Subject.CommonName, "test.cloister") {
		t.Errorf("root CN %q lacks the configured name", chain[4].Subject.CommonName)
	}
	if life := chain[0].NotAfter.Sub(chain[0].NotBefore); life != DefaultLeafLifetime {
		t.Errorf("leaf lifetime %s", life)
	}
	if life := chain[4].NotAfter.Sub(chain[4].NotBefore); life != IssuerRootLifetime {
		t.Errorf("root lifetime %s", life)
	}

	// Never under the AWS root.
	if _, err := Verify(doc, clk.Now(), VerifierConfig{}); !errors.Is(err, ErrUntrustedRoot) {
		t.Errorf("Verify under the AWS root: %v, want ErrUntrustedRoot", err)
	}
	// Debug documents.
	dbg, err := iss.Issue(IssueRequest{PCRs: map[int][]byte{0: make([]byte, 48), 1: make([]byte, 48), 2: make([]byte, 48), 4: bytes.Repeat([]byte{1}, 48)}})
	if err != nil {
		t.Fatal(err)
	}
	vd, err := Verify(dbg, clk.Now(), VerifierConfig{NoAWSRoot: true, Roots: []*x509.Certificate{iss.Root()}})
	if err != nil {
		t.Fatal(err)
	}
	if !vd.Debug() || vd.Document().ModuleID != iss.ModuleID() {
		t.Errorf("debug %v, module %q (want %q)", vd.Debug(), vd.Document().ModuleID, iss.ModuleID())
	}
}

func TestIssuerRenewal(t *testing.T) {
	clk := &fakeClock{t: testNow}
	iss, err := NewIssuer(IssuerConfig{Clock: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	v := mustVerifier(t, VerifierConfig{NoAWSRoot: true, Roots: []*x509.Certificate{iss.Root()}})
	issue := func() *Verified {
		t.Helper()
		doc, err := iss.Issue(IssueRequest{PCRs: pcrs16()})
		if err != nil {
			t.Fatal(err)
		}
		vd, err := v.Verify(doc, clk.Now())
		if err != nil {
			t.Fatalf("Verify at %s: %v", clk.Now(), err)
		}
		return vd
	}
	first := issue().Chain()
	clk.Add(time.Hour) // 2h of 3h remain: leaf reused
	second := issue().Chain()
	if !first[0].Equal(second[0]) {
		t.Error("leaf re-issued although 2/3 of its life remained")
	}
	clk.Add(time.Hour + time.Minute) // < 1/3 remains: new leaf, same intermediates
	third := issue().Chain()
	if first[0].Equal(third[0]) || !first[1].Equal(third[1]) {
		t.Error("leaf not renewed, or intermediates changed")
	}
	clk.Add(21 * 24 * time.Hour) // instance (30 days) has < 1/3 left
	fourth := issue().Chain()
	if first[1].Equal(fourth[1]) || !first[2].Equal(fourth[2]) || !first[4].Equal(fourth[4]) {
		t.Error("instance not renewed, or zonal/root changed")
	}
	clk.Add(300 * 24 * time.Hour) // regional (1 year) has < 1/3 left
	fifth := issue().Chain()
	if first[3].Equal(fifth[3]) || !first[4].Equal(fifth[4]) {
		t.Error("regional not renewed, or root changed")
	}
	for _, c := range fifth[:4] {
		if c.NotAfter.After(fifth[4].NotAfter) {
			t.Errorf("%s outlives the root", c.Subject)
		}
	}
	// The clock going back before the chain's start re-issues it.
	clk.Add(-200 * 24 * time.Hour)
	issue()
	// Past the root's life: no document.
	clk.Add(31 * 365 * 24 * time.Hour)
	if _, err := iss.Issue(IssueRequest{PCRs: pcrs16()}); err == nil {
		t.Error("Issue succeeded after the root expired")
	}
}

func TestIssuerRejects(t *testing.T) {
	iss := testIssuer(t)
	big := make([]byte, MaxFieldSize+1)
	tests := []struct {
		name string
		req  IssueRequest
		want error
	}{
		{"no pcrs", IssueRequest{}, ErrMalformed},
		{"33 pcrs", IssueRequest{PCRs: func() map[int][]byte {
			m := map[int][]byte{}
			for i := range 33 {
				m[i] = make([]byte, 48)
			}
			return m
		}()}, ErrMalformed},
		{"index 32", IssueRequest{PCRs: map[int][]byte{32: make([]byte, 48)}}, ErrMalformed},
		{"index -1", IssueRequest{PCRs: map[int][]byte{-1: make([]byte, 48)}}, ErrMalformed},
		{"pcr 47 bytes", IssueRequest{PCRs: map[int][]byte{0: make([]byte, 47)}}, ErrMalformed},
		{"user_data 1025", IssueRequest{PCRs: pcrs16(), UserData: big}, ErrTooLarge},
		{"nonce 1025", IssueRequest{PCRs: pcrs16(), Nonce: big}, ErrTooLarge},
		{"public_key 1025", IssueRequest{PCRs: pcrs16(), PublicKey: big}, ErrTooLarge},
		{"module_id too long", IssueRequest{PCRs: pcrs16(), ModuleID: strings.Repeat("x", MaxModuleIDSize+1)}, ErrMalformed},
		{"timestamp before epoch", IssueRequest{PCRs: pcrs16(), Timestamp: time.Unix(-5, 0)}, ErrMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			doc, err := iss.Issue(tc.req)
			if doc != nil || !errors.Is(err, tc.want) {
				t.Errorf("Issue = %d bytes, %v; want %v", len(doc), err, tc.want)
			}
		})
	}
	// Empty (non-nil) fields are empty byte strings, not null.
	doc, err := iss.Issue(IssueRequest{PCRs: pcrs16(), UserData: []byte{}})
	if err != nil {
		t.Fatal(err)
	}
	u, err := ParseUnverified(doc)
	if err != nil {
		t.Fatal(err)
	}
	if u.Document.UserData == nil || len(u.Document.UserData) != 0 || u.Document.Nonce != nil {
		t.Errorf("user_data %v nonce %v", u.Document.UserData, u.Document.Nonce)
	}
}

func TestIssuerPersistence(t *testing.T) {
	clk := &fakeClock{t: testNow}
	iss, err := NewIssuer(IssuerConfig{Clock: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	p, err := iss.MarshalPEM()
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(p, []byte("-----BEGIN PRIVATE KEY-----")); n != 4 {
		t.Errorf("%d private keys in the PEM, want 4", n)
	}
	loaded, err := LoadIssuer(p, IssuerConfig{Clock: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	if !loaded.Root().Equal(iss.Root()) {
		t.Fatal("loaded root differs")
	}
	if diff := cmp.Diff(iss.bundleDER(), loaded.bundleDER()); diff != "" {
		t.Error("fresh intermediates were re-issued on load")
	}
	doc, err := loaded.Issue(IssueRequest{PCRs: pcrs16()})
	if err != nil {
		t.Fatal(err)
	}
	roots, aws, err := LoadRoots(nil)
	if err != nil || !aws || roots != nil {
		t.Fatalf("LoadRoots(nil) = %v, %v, %v", roots, aws, err)
	}
	certs, err := ParseCertificatesPEM(iss.RootPEM())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(doc, clk.Now(), VerifierConfig{NoAWSRoot: true, Roots: certs}); err != nil {
		t.Errorf("document from the loaded issuer under the original root PEM: %v", err)
	}
	// Loaded 200 days later: intermediates are re-issued under the same root.
	clk.Add(200 * 24 * time.Hour)
	later, err := LoadIssuer(p, IssuerConfig{Clock: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	if later.bundleDER()[1] == nil || bytes.Equal(later.bundleDER()[3], iss.bundleDER()[3]) {
		t.Error("stale instance certificate kept")
	}
	doc, err = later.Issue(IssueRequest{PCRs: pcrs16()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(doc, clk.Now(), VerifierConfig{NoAWSRoot: true, Roots: certs}); err != nil {
		t.Errorf("document after renewal on load: %v", err)
	}

	// Broken inputs.
	for name, in := range map[string][]byte{
		"empty":     nil,
		"root only": iss.RootPEM(),
		"garbage":   []byte("-----BEGIN PRIVATE KEY-----\nCloister-Role: root\n\nAAAA\n-----END PRIVATE KEY-----\n"),
		"keys swapped": bytes.Replace(bytes.Replace(p, []byte("Cloister-Role: root"), []byte("Cloister-Role: tmp"), 2),
			[]byte("Cloister-Role: regional"), []byte("Cloister-Role: root"), 2),
	} {
		if _, err := LoadIssuer(in, IssuerConfig{Clock: clk.Now}); err == nil {
			t.Errorf("LoadIssuer(%s) succeeded", name)
		}
	}
}

func TestIssuerConcurrent(t *testing.T) {
	clk := &fakeClock{t: testNow}
	iss, err := NewIssuer(IssuerConfig{Clock: clk.Now, LeafLifetime: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	v := mustVerifier(t, VerifierConfig{NoAWSRoot: true, Roots: []*x509.Certificate{iss.Root()}})
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for range 4 {
		wg.Go(func() {
			for range 5 {
				clk.Add(15 * time.Second)
				doc, err := iss.Issue(IssueRequest{PCRs: pcrs16()})
				if err != nil {
					errs <- err
					return
				}
				if _, err := v.Verify(doc, clk.Now()); err != nil && !errors.Is(err, ErrExpired) {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestLoadIssuerVerifiedSHA256: with the SHA-256 of the bytes a verifying
// load accepted, LoadIssuer gives the same issuer without checking the
// signatures again; other bytes (a changed or a re-signed chain) fail,
// even ones that would load on their own.
func TestLoadIssuerVerifiedSHA256(t *testing.T) {
	clk := &fakeClock{t: testNow}
	iss, err := NewIssuer(IssuerConfig{Clock: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	p, err := iss.MarshalPEM()
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(p)
	loaded, err := LoadIssuer(p, IssuerConfig{Clock: clk.Now, VerifiedSHA256: sum[:]})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(iss.bundleDER(), loaded.bundleDER()); diff != "" {
		t.Error("vouched load re-issued the intermediates")
	}
	doc, err := loaded.Issue(IssueRequest{PCRs: pcrs16()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(doc, clk.Now(), VerifierConfig{NoAWSRoot: true, Roots: []*x509.Certificate{iss.Root()}}); err != nil {
		t.Errorf("document from the vouched issuer: %v", err)
	}

	other, err := NewIssuer(IssuerConfig{Clock: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	op, err := other.MarshalPEM()
	if err != nil {
		t.Fatal(err)
	}
	for name, in := range map[string][]byte{
		"another valid issuer": op,
		"one byte appended":    append(slices.Clone(p), '\n'),
	} {
		if _, err := LoadIssuer(in, IssuerConfig{Clock: clk.Now, VerifiedSHA256: sum[:]}); err == nil || !strings.Contains(err.Error(), "SHA-256 differs") {
			t.Errorf("LoadIssuer(%s) with another PEM's digest = %v, want a digest mismatch", name, err)
		}
	}
}

// BenchmarkLoadIssuer is a monitor's load of the daemon's development
// root, with and without the daemon's digest.
func BenchmarkLoadIssuer(b *testing.B) {
	iss, err := NewIssuer(IssuerConfig{})
	if err != nil {
		b.Fatal(err)
	}
	p, err := iss.MarshalPEM()
	if err != nil {
		b.Fatal(err)
	}
	sum := sha256.Sum256(p)
	for _, bc := range []struct {
		name string
		cfg  IssuerConfig
	}{{"verify-signatures", IssuerConfig{}}, {"verified-sha256", IssuerConfig{VerifiedSHA256: sum[:]}}} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := LoadIssuer(p, bc.cfg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
