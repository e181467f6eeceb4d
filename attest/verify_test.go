package attest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"testing"
	"time"
)

// TestVerifyRejects builds one document per rejection path and checks that
// Verify fails with the expected sentinel (and that a control document from
// the same builder verifies).
func TestVerifyRejects(t *testing.T) {
	base := newTestChain(t, nil)
	fields := base.defaultFields()
	withField := func(k string, v []byte) func(t testing.TB) []byte {
		return func(t testing.TB) []byte { return base.parts(setField(fields, k, v)).encode(t) }
	}
	withParts := func(mod func(p *coseParts)) func(t testing.TB) []byte {
		return func(t testing.TB) []byte {
			p := base.parts(fields)
			mod(&p)
			return p.encode(t)
		}
	}
	withBundle := func(order ...int) func(t testing.TB) []byte {
		return func(t testing.TB) []byte {
			var b [][]byte
			for _, i := range order {
				b = append(b, base.certs[i].cert.Raw)
			}
			return base.parts(setField(fields, "cabundle", cBytesArr(b))).encode(t)
		}
	}
	// chainWith builds a chain with one override; the verifier trusts its root.
	type chainCase struct {
		role int
		opt  certOpt
	}
	chains := map[string]chainCase{
		"leaf P-256":              {roleLeaf, certOpt{curve: elliptic.P256()}},
		"intermediate P-256":      {roleZonal, certOpt{curve: elliptic.P256()}},
		"leaf signed SHA-256":     {roleLeaf, certOpt{sigAlg: x509.ECDSAWithSHA256}},
		"intermediate not CA":     {roleZonal, certOpt{mod: func(c *x509.Certificate) { c.IsCA = false; c.MaxPathLen = -1 }}},
		"instance lacks certSign": {roleInstance, certOpt{mod: func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageDigitalSignature }}},
		"zonal pathLen 0":         {roleZonal, certOpt{mod: func(c *x509.Certificate) { c.MaxPathLen = 0; c.MaxPathLenZero = true }}},
		"regional pathLen 1":      {roleRegional, certOpt{mod: func(c *x509.Certificate) { c.MaxPathLen = 1 }}},
		"root pathLen 2":          {roleRoot, certOpt{mod: func(c *x509.Certificate) { c.MaxPathLen = 2 }}},
		"leaf is CA":              {roleLeaf, certOpt{mod: func(c *x509.Certificate) { c.IsCA = true }}},
		"leaf lacks digitalSig":   {roleLeaf, certOpt{mod: func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageContentCommitment }}},
		"leaf expired":            {roleLeaf, certOpt{mod: func(c *x509.Certificate) { c.NotAfter = testNow.Add(-time.Second) }}},
		"leaf not yet valid":      {roleLeaf, certOpt{mod: func(c *x509.Certificate) { c.NotBefore = testNow.Add(time.Second) }}},
		"zonal expired":           {roleZonal, certOpt{mod: func(c *x509.Certificate) { c.NotAfter = testNow.Add(-time.Minute) }}},
		"root expired":            {roleRoot, certOpt{mod: func(c *x509.Certificate) { c.NotAfter = testNow.Add(-time.Minute) }}},
		"root not yet valid":      {roleRoot, certOpt{mod: func(c *x509.Certificate) { c.NotBefore = testNow.Add(time.Minute) }}},
		"root not CA":             {roleRoot, certOpt{mod: func(c *x509.Certificate) { c.IsCA = false }}},
		"leaf critical unknown ext": {roleLeaf, certOpt{mod: func(c *x509.Certificate) {
			c.ExtraExtensions = append(c.ExtraExtensions, pkixExt([]int{1, 2, 3, 4}, true))
		}}},
	}
	chainErr := map[string]error{
		"leaf P-256":                ErrUnsupportedAlgorithm,
		"intermediate P-256":        ErrUnsupportedAlgorithm,
		"leaf signed SHA-256":       ErrUnsupportedAlgorithm,
		"intermediate not CA":       ErrChain,
		"instance lacks certSign":   ErrChain,
		"zonal pathLen 0":           ErrChain,
		"regional pathLen 1":        ErrChain,
		"root pathLen 2":            ErrChain,
		"leaf is CA":                ErrChain,
		"leaf lacks digitalSig":     ErrChain,
		"leaf expired":              ErrExpired,
		"leaf not yet valid":        ErrNotYetValid,
		"zonal expired":             ErrExpired,
		"root expired":              ErrExpired,
		"root not yet valid":        ErrNotYetValid,
		"root not CA":               ErrChain,
		"leaf critical unknown ext": ErrChain,
	}

	big := bytes.Repeat([]byte{7}, MaxFieldSize+1)
	tests := []struct {
		name  string
		build func(t testing.TB) []byte
		want  error // nil: must verify
	}{
		{"control", func(t testing.TB) []byte { return base.doc(t) }, nil},
		{"control tag18", func(t testing.TB) []byte { return append([]byte{0xd2}, base.doc(t)...) }, nil},
		{"control max fields", func(t testing.TB) []byte {
			f := setField(fields, "user_data", cBytes(big[:MaxFieldSize]))
			f = setField(f, "nonce", cBytes(big[:MaxFieldSize]))
			f = setField(f, "public_key", cBytes(big[:MaxFieldSize]))
			return base.parts(f).encode(t)
		}, nil},
		{"control optional keys absent", func(t testing.TB) []byte {
			f := setField(setField(setField(fields, "user_data", nil), "nonce", nil), "public_key", nil)
			return base.parts(f).encode(t)
		}, nil},
		{"control 32 pcrs of 64 bytes", withField("pcrs", cPCRs(32, 64)), nil},
		{"control 1 pcr of 32 bytes", withField("pcrs", cPCRs(1, 32)), nil},

		// COSE envelope.
		{"empty input", func(testing.TB) []byte { return nil }, ErrMalformed},
		{"not an array", func(testing.TB) []byte { return []byte{0xa0} }, ErrMalformed},
		{"array of 3", func(t testing.TB) []byte { d := base.doc(t); d[0] = 0x83; return d }, ErrMalformed},
		{"array of 5", func(t testing.TB) []byte { d := base.doc(t); d[0] = 0x85; return append(d, 0xf6) }, ErrMalformed},
		// Accepted before go-cose: go-cose decodes only the shortest head.
		{"array head non-shortest", func(t testing.TB) []byte { return append([]byte{0x98, 0x04}, base.doc(t)[1:]...) }, ErrMalformed},
		{"array head non-shortest tag18", func(t testing.TB) []byte { return append([]byte{0xd2, 0x98, 0x04}, base.doc(t)[1:]...) }, ErrMalformed},
		{"trailing byte", func(t testing.TB) []byte { return append(base.doc(t), 0x00) }, ErrMalformed},
		{"trailing item after tagged", func(t testing.TB) []byte { return append(append([]byte{0xd2}, base.doc(t)...), 0xa0) }, ErrMalformed},
		{"double tag 18", func(t testing.TB) []byte { return append([]byte{0xd2, 0xd2}, base.doc(t)...) }, ErrMalformed},
		{"tag 98 (COSE_Sign)", func(t testing.TB) []byte { return append([]byte{0xd8, 0x62}, base.doc(t)...) }, ErrMalformed},
		{"indefinite array", func(t testing.TB) []byte {
			d := base.doc(t)
			return append(append([]byte{0x9f}, d[1:]...), 0xff)
		}, ErrMalformed},
		{"too large", func(testing.TB) []byte { return append([]byte{0x84}, make([]byte, MaxDocumentSize)...) }, ErrTooLarge},
		{"tampered payload", func(t testing.TB) []byte {
			d := base.doc(t)
			i := bytes.Index(d, []byte("hello"))
			d[i] = 'j'
			return d
		}, ErrSignature},
		{"tampered signature", withParts(func(p *coseParts) {
			p.sigMod = func(s []byte) []byte { s[95] ^= 1; return s }
		}), ErrSignature},
		{"signature r=0", withParts(func(p *coseParts) {
			p.sigMod = func(s []byte) []byte { clear(s[:48]); return s }
		}), ErrSignature},
		{"signature by another key", withParts(func(p *coseParts) {
			k, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
			p.key = k
		}), ErrSignature},
		{"signature 95 bytes", withParts(func(p *coseParts) {
			p.sigMod = func(s []byte) []byte { return s[:95] }
		}), ErrMalformed},
		{"signature 97 bytes", withParts(func(p *coseParts) {
			p.sigMod = func(s []byte) []byte { return append(s, 0) }
		}), ErrMalformed},
		{"signature ASN.1", withParts(func(p *coseParts) {
			p.sigMod = func(s []byte) []byte { return append([]byte{0x30, 0x64, 0x02, 0x30}, s...)[:102] }
		}), ErrMalformed},

		// Protected header.
		{"protected ES256", withParts(func(p *coseParts) { p.protected = []byte{0xa1, 0x01, 0x26} }), ErrUnsupportedAlgorithm},
		{"protected ES512", withParts(func(p *coseParts) { p.protected = []byte{0xa1, 0x01, 0x38, 0x23} }), ErrUnsupportedAlgorithm},
		{"protected non-shortest label", withParts(func(p *coseParts) { p.protected = []byte{0xa1, 0x18, 0x01, 0x38, 0x22} }), ErrMalformed},
		{"protected non-shortest alg", withParts(func(p *coseParts) { p.protected = []byte{0xa1, 0x01, 0x39, 0x00, 0x22} }), ErrMalformed},
		{"protected alg text", withParts(func(p *coseParts) { p.protected = append([]byte{0xa1, 0x01}, cText("ES384")...) }), ErrUnsupportedAlgorithm},
		{"protected extra kid", withParts(func(p *coseParts) {
			p.protected = []byte{0xa2, 0x01, 0x38, 0x22, 0x04, 0x41, 0x01}
		}), ErrMalformed},
		{"protected empty bstr", withParts(func(p *coseParts) { p.protected = []byte{} }), ErrMalformed},
		{"protected empty map", withParts(func(p *coseParts) { p.protected = []byte{0xa0} }), ErrMalformed},
		{"protected duplicate alg", withParts(func(p *coseParts) {
			p.protected = []byte{0xa2, 0x01, 0x38, 0x22, 0x01, 0x38, 0x22}
		}), ErrMalformed},
		{"protected trailing byte", withParts(func(p *coseParts) { p.protected = []byte{0xa1, 0x01, 0x38, 0x22, 0x00} }), ErrMalformed},
		{"protected text key", withParts(func(p *coseParts) { p.protected = []byte{0xa1, 0x63, 'a', 'l', 'g', 0x38, 0x22} }), ErrMalformed},
		{"protected as map not bstr", func(t testing.TB) []byte {
			d := base.doc(t)
			return append([]byte{0x84, 0xa1, 0x01, 0x38, 0x22}, d[6:]...)
		}, ErrMalformed},
		{"protected indefinite map", withParts(func(p *coseParts) { p.protected = []byte{0xbf, 0x01, 0x38, 0x22, 0xff} }), ErrMalformed},

		// Unprotected header.
		{"unprotected kid", withParts(func(p *coseParts) { p.unprotected = []byte{0xa1, 0x04, 0x41, 0x01} }), ErrMalformed},
		{"unprotected alg", withParts(func(p *coseParts) { p.unprotected = []byte{0xa1, 0x01, 0x38, 0x22} }), ErrMalformed},
		{"unprotected null", withParts(func(p *coseParts) { p.unprotected = []byte{0xf6} }), ErrMalformed},
		{"unprotected empty bstr", withParts(func(p *coseParts) { p.unprotected = []byte{0x40} }), ErrMalformed},
		{"unprotected indefinite empty map", withParts(func(p *coseParts) { p.unprotected = []byte{0xbf, 0xff} }), ErrMalformed},

		// Payload structure.
		{"payload not a map", withParts(func(p *coseParts) { p.payload = []byte{0x80} }), ErrMalformed},
		{"payload detached (null)", func(t testing.TB) []byte {
			d := base.doc(t)
			u, err := ParseUnverified(d)
			if err != nil {
				t.Fatal(err)
			}
			out := append([]byte{0x84}, cBytes(u.Protected)...)
			out = append(out, 0xa0, 0xf6)
			return append(out, cBytes(u.Signature)...)
		}, ErrMalformed},
		{"payload empty", withParts(func(p *coseParts) { p.payload = []byte{} }), ErrMalformed},
		{"payload trailing byte", withParts(func(p *coseParts) { p.payload = append(p.payload, 0xf6) }), ErrMalformed},
		{"payload indefinite map", withParts(func(p *coseParts) {
			p.payload = append(append([]byte{0xbf}, p.payload[1:]...), 0xff)
		}), ErrMalformed},
		{"payload duplicate key", func(t testing.TB) []byte {
			return base.parts(append(fields, kv{"nonce", cBytes([]byte{9})})).encode(t)
		}, ErrMalformed},
		{"payload unknown key", func(t testing.TB) []byte {
			return base.parts(append(fields, kv{"extra", cNull()})).encode(t)
		}, ErrMalformed},
		{"payload integer key", withParts(func(p *coseParts) {
			p.payload = append(append([]byte{0xaa}, p.payload[1:]...), 0x01, 0xf6)
		}), ErrMalformed},
		{"payload with tag", withField("user_data", append([]byte{0xd8, 0x18}, cBytes([]byte{1})...)), ErrMalformed},

		// Required fields: missing, null, wrong type, out of range.
		{"missing module_id", withField("module_id", nil), ErrMalformed},
		{"missing digest", withField("digest", nil), ErrMalformed},
		{"missing timestamp", withField("timestamp", nil), ErrMalformed},
		{"missing pcrs", withField("pcrs", nil), ErrMalformed},
		{"missing certificate", withField("certificate", nil), ErrMalformed},
		{"missing cabundle", withField("cabundle", nil), ErrMalformed},
		{"null module_id", withField("module_id", cNull()), ErrMalformed},
		{"null digest", withField("digest", cNull()), ErrMalformed},
		{"null timestamp", withField("timestamp", cNull()), ErrMalformed},
		{"null pcrs", withField("pcrs", cNull()), ErrMalformed},
		{"null certificate", withField("certificate", cNull()), ErrMalformed},
		{"null cabundle", withField("cabundle", cNull()), ErrMalformed},
		{"module_id bytes", withField("module_id", cBytes([]byte("i-1"))), ErrMalformed},
		{"module_id empty", withField("module_id", cText("")), ErrMalformed},
		{"module_id invalid utf8", withField("module_id", []byte{0x62, 0xff, 0xfe}), ErrMalformed},
		{"module_id indefinite text", withField("module_id", []byte{0x7f, 0x61, 'a', 0xff}), ErrMalformed},
		{"digest SHA256", withField("digest", cText("SHA256")), ErrMalformed},
		{"digest bytes", withField("digest", cBytes([]byte("SHA384"))), ErrMalformed},
		{"timestamp zero", withField("timestamp", cUint(0)), ErrMalformed},
		{"timestamp negative", withField("timestamp", []byte{0x20}), ErrMalformed},
		{"timestamp text", withField("timestamp", cText("1700000000000")), ErrMalformed},
		{"timestamp float", withField("timestamp", []byte{0xfb, 0x42, 0x78, 0xbc, 0xfe, 0x56, 0x80, 0x00, 0x00}), ErrMalformed},
		{"timestamp huge", withField("timestamp", []byte{0x1b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}), ErrMalformed},
		{"pcrs array", withField("pcrs", cBytesArr([][]byte{make([]byte, 48)})), ErrMalformed},
		{"pcrs empty", withField("pcrs", []byte{0xa0}), ErrMalformed},
		{"pcrs 33 entries", withField("pcrs", cPCRs(33, 48)), ErrMalformed},
		{"pcr index 32", withField("pcrs", append([]byte{0xa1, 0x18, 0x20}, cBytes(make([]byte, 48))...)), ErrMalformed},
		{"pcr index negative", withField("pcrs", append([]byte{0xa1, 0x20}, cBytes(make([]byte, 48))...)), ErrMalformed},
		{"pcr index text", withField("pcrs", append([]byte{0xa1, 0x61, '0'}, cBytes(make([]byte, 48))...)), ErrMalformed},
		{"pcr 47 bytes", withField("pcrs", cPCRs(1, 47)), ErrMalformed},
		{"pcr null", withField("pcrs", []byte{0xa1, 0x00, 0xf6}), ErrMalformed},
		{"pcr duplicate index", withField("pcrs", append(append([]byte{0xa2, 0x00}, cBytes(make([]byte, 48))...),
			append([]byte{0x00}, cBytes(make([]byte, 48))...)...)), ErrMalformed},
		{"pcr duplicate index non-minimal", withField("pcrs", append(append([]byte{0xa2, 0x00}, cBytes(make([]byte, 48))...),
			append([]byte{0x18, 0x00}, cBytes(make([]byte, 48))...)...)), ErrMalformed},
		{"certificate empty", withField("certificate", cBytes(nil)), ErrMalformed},
		{"certificate 1025 bytes", withField("certificate", cBytes(big)), ErrMalformed},
		{"certificate text", withField("certificate", cText("MIIB")), ErrMalformed},
		{"cabundle empty", withField("cabundle", []byte{0x80}), ErrMalformed},
		{"cabundle bytes", withField("cabundle", cBytes(base.certs[0].cert.Raw)), ErrMalformed},
		{"cabundle 17 entries", withField("cabundle", cBytesArr(bytes17(base.certs[0].cert.Raw))), ErrMalformed},
		{"cabundle entry 1025 bytes", withField("cabundle", cBytesArr([][]byte{base.certs[0].cert.Raw, big})), ErrMalformed},
		{"cabundle entry null", withField("cabundle", append([]byte{0x82}, append(cBytes(base.certs[0].cert.Raw), 0xf6)...)), ErrMalformed},
		{"cabundle entry garbage", withField("cabundle", cBytesArr([][]byte{base.certs[0].cert.Raw, {1, 2, 3}})), ErrChain},

		// Optional fields.
		{"user_data 1025 bytes", withField("user_data", cBytes(big)), ErrMalformed},
		{"nonce 1025 bytes", withField("nonce", cBytes(big)), ErrMalformed},
		{"public_key 1025 bytes", withField("public_key", cBytes(big)), ErrMalformed},
		{"user_data text", withField("user_data", cText("hello")), ErrMalformed},
		{"nonce integer", withField("nonce", cUint(5)), ErrMalformed},
		{"public_key array", withField("public_key", []byte{0x80}), ErrMalformed},
		{"user_data undefined", withField("user_data", []byte{0xf7}), ErrMalformed},

		// Certificate chain.
		{"foreign root", func(t testing.TB) []byte { return newTestChain(t, nil).doc(t) }, ErrUntrustedRoot},
		{"AWS-shaped but issuer root", func(t testing.TB) []byte {
			d, err := testIssuer(t).Issue(IssueRequest{PCRs: map[int][]byte{0: make([]byte, 48)}})
			if err != nil {
				t.Fatal(err)
			}
			return d
		}, ErrUntrustedRoot},
		{"bundle swapped", withBundle(roleRoot, roleZonal, roleRegional, roleInstance), ErrChain},
		{"bundle missing zonal", withBundle(roleRoot, roleRegional, roleInstance), ErrChain},
		{"bundle missing instance", withBundle(roleRoot, roleRegional, roleZonal), ErrChain},
		{"bundle reversed", withBundle(roleInstance, roleZonal, roleRegional, roleRoot), ErrUntrustedRoot},
		{"bundle without root", withBundle(roleRegional, roleZonal, roleInstance), ErrUntrustedRoot},
		{"bundle only root", withBundle(roleRoot), ErrChain},
		{"bundle root twice", withBundle(roleRoot, roleRoot, roleRegional, roleZonal, roleInstance), ErrChain},
		{"leaf replaced by instance", withField("certificate", cBytes(base.certs[roleInstance].cert.Raw)), ErrChain},
		{"leaf garbage", withField("certificate", cBytes([]byte{0x30, 0x03, 0x02, 0x01, 0x01})), ErrChain},
	}
	for name, cc := range chains {
		want := chainErr[name]
		tests = append(tests, struct {
			name  string
			build func(t testing.TB) []byte
			want  error
		}{"chain: " + name, func(t testing.TB) []byte {
			c := newTestChain(t, map[int]certOpt{cc.role: cc.opt})
			return c.doc(t)
		}, want})
	}

	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			doc := tc.build(t)
			// Trust the base chain's root, and the root of any chain the
			// test built for itself (the foreign-root cases build theirs
			// and must not be trusted).
			cfg := VerifierConfig{NoAWSRoot: true, Roots: []*x509.Certificate{base.root()}}
			if isChainCase(tc.name) {
				if u, err := ParseUnverified(doc); err == nil {
					if r, err := x509.ParseCertificate(u.Document.CABundle[0]); err == nil {
						cfg.Roots = append(cfg.Roots, r)
					}
				}
			}
			got, err := Verify(doc, testNow, cfg)
			if tc.want == nil {
				if err != nil || got == nil {
					t.Fatalf("Verify = (verified %v), %v; want success", got != nil, err)
				}
				return
			}
			if got != nil || !errors.Is(err, tc.want) {
				t.Fatalf("Verify = (verified %v), %v; want %v", got != nil, err, tc.want)
			}
			for _, other := range allVerifySentinels {
				if other != tc.want && errors.Is(err, other) && !(tc.want == ErrMalformed && other == ErrTooLarge) {
					t.Errorf("error %v also matches %v", err, other)
				}
			}
			// ParseUnverified fails for exactly the parse-level sentinels.
			_, perr := ParseUnverified(doc)
			parseLevel := tc.want == ErrMalformed || tc.want == ErrTooLarge ||
				(tc.want == ErrUnsupportedAlgorithm && !isChainCase(tc.name))
			if parseLevel != (perr != nil) {
				t.Errorf("ParseUnverified error = %v, want failure %v", perr, parseLevel)
			}
		})
	}
}

var allVerifySentinels = []error{ErrMalformed, ErrTooLarge, ErrUnsupportedAlgorithm, ErrChain,
	ErrUntrustedRoot, ErrExpired, ErrNotYetValid, ErrSignature}

func isChainCase(name string) bool { return len(name) > 7 && name[:7] == "chain: " }

func bytes17(b []byte) [][]byte {
	out := make([][]byte, 17)
	for i := range out {
		out[i] = b
	}
	return out
}

func TestCertificateErrorDetail(t *testing.T) {
	c := newTestChain(t, map[int]certOpt{roleZonal: {mod: func(c *x509.Certificate) { c.NotAfter = testNow.Add(-time.Minute) }}})
	_, err := c.verifierFor(t).Verify(c.doc(t), testNow)
	var ce *CertificateError
	if !errors.As(err, &ce) {
		t.Fatalf("error %v is not a *CertificateError", err)
	}
	// Chain index: leaf 0, instance 1, zonal 2.
	if ce.Index != 2 || ce.Subject != "CN=zonal.test" || !errors.Is(ce, ErrExpired) {
		t.Errorf("CertificateError = %+v", ce)
	}
}

// TestVerifierCache checks that the warm path still enforces validity and
// the COSE signature, and that cache entries are keyed by exact bytes.
func TestVerifierCache(t *testing.T) {
	c := newTestChain(t, nil)
	v := c.verifierFor(t)
	doc := c.doc(t)
	if _, err := v.Verify(doc, testNow); err != nil {
		t.Fatal(err)
	}
	if v.chains.len() != 1 || v.leaves.len() != 1 {
		t.Fatalf("cache sizes %d, %d; want 1, 1", v.chains.len(), v.leaves.len())
	}
	// Warm: validity is re-checked.
	if _, err := v.Verify(doc, testNow.Add(4*time.Hour)); !errors.Is(err, ErrExpired) {
		t.Errorf("warm Verify 4h later: %v, want ErrExpired", err)
	}
	if _, err := v.Verify(doc, testNow.Add(-2*time.Hour)); !errors.Is(err, ErrNotYetValid) {
		t.Errorf("warm Verify 2h earlier: %v, want ErrNotYetValid", err)
	}
	// Warm: the COSE signature is re-checked.
	bad := bytes.Clone(doc)
	bad[len(bad)-1] ^= 1
	if _, err := v.Verify(bad, testNow); !errors.Is(err, ErrSignature) {
		t.Errorf("warm Verify with bad signature: %v, want ErrSignature", err)
	}
	// A different leaf under the same chain is checked (and cached) anew.
	other := newTestChain(t, nil)
	f := setField(c.defaultFields(), "certificate", cBytes(other.certs[roleLeaf].cert.Raw))
	p := c.parts(f)
	p.key = other.certs[roleLeaf].key
	if _, err := v.Verify(p.encode(t), testNow); !errors.Is(err, ErrChain) {
		t.Errorf("foreign leaf under cached chain: %v, want ErrChain", err)
	}
	if v.leaves.len() != 1 {
		t.Errorf("a rejected leaf was cached")
	}
	// Disabled cache.
	nc := mustVerifier(t, VerifierConfig{NoAWSRoot: true, Roots: []*x509.Certificate{c.root()}, CacheSize: -1})
	for range 2 {
		if _, err := nc.Verify(doc, testNow); err != nil {
			t.Fatal(err)
		}
	}
	if nc.chains.len() != 0 || nc.leaves.len() != 0 {
		t.Error("disabled cache holds entries")
	}
}

func TestLRUEviction(t *testing.T) {
	c := newLRU[int, int](2)
	c.put(1, 1)
	c.put(2, 2)
	c.get(1)
	c.put(3, 3) // evicts 2, the least recently used
	if _, ok := c.get(2); ok {
		t.Error("2 not evicted")
	}
	for _, k := range []int{1, 3} {
		if v, ok := c.get(k); !ok || v != k {
			t.Errorf("get(%d) = %d, %v", k, v, ok)
		}
	}
	if c.len() != 2 {
		t.Errorf("len %d", c.len())
	}
}

func TestVerifierConcurrent(t *testing.T) {
	c := newTestChain(t, nil)
	v := mustVerifier(t, VerifierConfig{NoAWSRoot: true, Roots: []*x509.Certificate{c.root()}, CacheSize: 1})
	docs := [][]byte{c.doc(t), newTestChain(t, nil).doc(t)}
	errs := make(chan error, 16)
	for g := range 8 {
		go func() {
			var err error
			for i := range 10 {
				_, e := v.Verify(docs[(g+i)%2], testNow)
				if (g+i)%2 == 0 && e != nil {
					err = e
				}
				if (g+i)%2 == 1 && !errors.Is(e, ErrUntrustedRoot) {
					err = errors.New("foreign document accepted or wrong error")
				}
			}
			errs <- err
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

func TestNewVerifierNoRoots(t *testing.T) {
	if _, err := NewVerifier(VerifierConfig{NoAWSRoot: true}); err == nil {
		t.Error("NewVerifier with no roots succeeded")
	}
	if _, err := NewVerifier(VerifierConfig{Roots: []*x509.Certificate{nil}}); err == nil {
		t.Error("NewVerifier with a nil root succeeded")
	}
}
