package attest

// A test-only builder for attestation documents with per-certificate
// overrides and raw control over every CBOR item, to exercise each rejection
// path of ParseUnverified and Verify.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"testing"
	"time"

	"github.com/cloister/cloister/internal/cborx"
)

// Roles of a test chain, in cabundle order followed by the leaf.
const (
	roleRoot = iota
	roleRegional
	roleZonal
	roleInstance
	roleLeaf
	numRoles
)

// certOpt overrides one certificate of a test chain.
type certOpt struct {
	curve  elliptic.Curve               // key curve (default P-384)
	sigAlg x509.SignatureAlgorithm      // how its issuer signs it (default ECDSAWithSHA384)
	mod    func(tmpl *x509.Certificate) // edits the template before signing
}

type testChain struct {
	certs [numRoles]issued
}

// testNow is the instant test chains are built around.
var testNow = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

// newTestChain builds root → regional → zonal → instance → leaf shaped like
// AWS's chain, valid at testNow, applying opts per role.
func newTestChain(t testing.TB, opts map[int]certOpt) *testChain {
	t.Helper()
	c := &testChain{}
	nb := testNow.Add(-time.Hour)
	lifetimes := [numRoles]time.Duration{30 * 365 * 24 * time.Hour, 20 * 24 * time.Hour, 6 * 24 * time.Hour, 24 * time.Hour, 3 * time.Hour}
	for role := 0; role < numRoles; role++ {
		o := opts[role]
		curve := o.curve
		if curve == nil {
			curve = elliptic.P384()
		}
		key, err := ecdsa.GenerateKey(curve, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber:          big.NewInt(int64(role + 100)),
			Subject:               pkix.Name{CommonName: [...]string{"root", "regional", "zonal", "instance", "leaf"}[role] + ".test"},
			NotBefore:             nb,
			NotAfter:              nb.Add(lifetimes[role]),
			BasicConstraintsValid: true,
			IsCA:                  role != roleLeaf,
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
			SignatureAlgorithm:    x509.ECDSAWithSHA384,
		}
		switch role {
		case roleRegional, roleZonal:
			tmpl.MaxPathLen = roleInstance - role + 1 // 2, 1
		case roleInstance:
			tmpl.MaxPathLenZero = true
		case roleLeaf:
			tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment
		}
		if o.sigAlg != 0 {
			tmpl.SignatureAlgorithm = o.sigAlg
		}
		if o.mod != nil {
			o.mod(tmpl)
		}
		parentCert, parentKey := tmpl, key
		if role > 0 {
			parentCert, parentKey = c.certs[role-1].cert, c.certs[role-1].key
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parentCert, &key.PublicKey, parentKey)
		if err != nil {
			t.Fatalf("create %s: %v", tmpl.Subject.CommonName, err)
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		c.certs[role] = issued{cert: cert, key: key}
	}
	return c
}

func (c *testChain) root() *x509.Certificate { return c.certs[roleRoot].cert }

func (c *testChain) bundle() [][]byte {
	return [][]byte{c.certs[0].cert.Raw, c.certs[1].cert.Raw, c.certs[2].cert.Raw, c.certs[3].cert.Raw}
}

// kv is one payload map entry: a text key and a raw CBOR value.
type kv struct {
	k string
	v []byte
}

func cText(s string) []byte  { return cborx.AppendText(nil, s) }
func cBytes(b []byte) []byte { return cborx.AppendBytes(nil, b) }
func cUint(n uint64) []byte  { return cborx.AppendHead(nil, cborx.MajorUint, n) }
func cNull() []byte          { return []byte{0xf6} }
func cBytesArr(bs [][]byte) []byte {
	out := cborx.AppendHead(nil, cborx.MajorArray, uint64(len(bs)))
	for _, b := range bs {
		out = cborx.AppendBytes(out, b)
	}
	return out
}

func cPCRs(n int, size int) []byte {
	out := cborx.AppendHead(nil, cborx.MajorMap, uint64(n))
	for i := 0; i < n; i++ {
		out = cborx.AppendHead(out, cborx.MajorUint, uint64(i))
		b := make([]byte, size)
		b[0] = byte(i + 1)
		out = cborx.AppendBytes(out, b)
	}
	return out
}

// defaultFields returns a valid payload for chain c, in the NSM's key order.
func (c *testChain) defaultFields() []kv {
	return []kv{
		{"module_id", cText("i-0123456789abcdef0-enc0123456789abcdef")},
		{"digest", cText("SHA384")},
		{"timestamp", cUint(uint64(testNow.UnixMilli()))},
		{"pcrs", cPCRs(16, 48)},
		{"certificate", cBytes(c.certs[roleLeaf].cert.Raw)},
		{"cabundle", cBytesArr(c.bundle())},
		{"public_key", cNull()},
		{"user_data", cBytes([]byte("hello"))},
		{"nonce", cBytes([]byte{1, 2, 3, 4})},
	}
}

func encodeMap(kvs []kv) []byte {
	out := cborx.AppendHead(nil, cborx.MajorMap, uint64(len(kvs)))
	for _, e := range kvs {
		out = cborx.AppendText(out, e.k)
		out = append(out, e.v...)
	}
	return out
}

// setField replaces (or appends) key k; a nil v deletes it.
func setField(kvs []kv, k string, v []byte) []kv {
	out := make([]kv, 0, len(kvs)+1)
	found := false
	for _, e := range kvs {
		if e.k == k {
			found = true
			if v == nil {
				continue
			}
			e.v = v
		}
		out = append(out, e)
	}
	if !found && v != nil {
		out = append(out, kv{k, v})
	}
	return out
}

// coseParts are the raw items of a COSE_Sign1 under construction.
type coseParts struct {
	protected   []byte // bstr content
	unprotected []byte // raw CBOR item
	payload     []byte // bstr content
	key         *ecdsa.PrivateKey
	sigMod      func(sig []byte) []byte
}

// sigStructure returns the COSE Sig_structure of a COSE_Sign1 with empty
// external_aad: ["Signature1", protected, empty bstr, payload]. The builder signs
// by hand because go-cose (rightly) will not produce most of the hostile
// documents the tests need.
func sigStructure(protected, payload []byte) []byte {
	b := cborx.AppendHead(nil, cborx.MajorArray, 4)
	b = cborx.AppendText(b, "Signature1")
	b = cborx.AppendBytes(b, protected)
	b = cborx.AppendBytes(b, nil)
	return cborx.AppendBytes(b, payload)
}

func (p coseParts) encode(t testing.TB) []byte {
	t.Helper()
	digest := sha512.Sum384(sigStructure(p.protected, p.payload))
	r, s, err := ecdsa.Sign(rand.Reader, p.key, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 96)
	r.FillBytes(sig[:48])
	s.FillBytes(sig[48:])
	if p.sigMod != nil {
		sig = p.sigMod(sig)
	}
	out := []byte{0x84}
	out = cborx.AppendBytes(out, p.protected)
	out = append(out, p.unprotected...)
	out = cborx.AppendBytes(out, p.payload)
	return cborx.AppendBytes(out, sig)
}

// parts returns valid COSE parts for payload fields kvs signed by c's leaf.
func (c *testChain) parts(kvs []kv) coseParts {
	return coseParts{
		protected:   []byte{0xa1, 0x01, 0x38, 0x22},
		unprotected: []byte{0xa0},
		payload:     encodeMap(kvs),
		key:         c.certs[roleLeaf].key,
	}
}

// doc returns a valid document signed by c's leaf.
func (c *testChain) doc(t testing.TB) []byte {
	t.Helper()
	return c.parts(c.defaultFields()).encode(t)
}

// verifierFor trusts c's root only.
func (c *testChain) verifierFor(t testing.TB) *Verifier {
	t.Helper()
	return mustVerifier(t, VerifierConfig{NoAWSRoot: true, Roots: []*x509.Certificate{c.root()}})
}
