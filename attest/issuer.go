package attest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/veraison/go-cose"

	"github.com/cloister/cloister/internal/cborx"
)

// Lifetimes of the certificates an [Issuer] creates. AWS's intermediates
// live about 20 days, 6 days and 1 day; the Issuer's live longer because a
// development daemon may run for weeks. A certificate is re-issued (with its
// descendants) when less than a third of its lifetime remains or the clock is
// before its start, so a leaf never outlives its issuer.
const (
	IssuerRootLifetime     = 30 * 365 * 24 * time.Hour
	IssuerRegionalLifetime = 365 * 24 * time.Hour
	IssuerZonalLifetime    = 180 * 24 * time.Hour
	IssuerInstanceLifetime = 30 * 24 * time.Hour
	DefaultLeafLifetime    = 3 * time.Hour
	// MaxLeafLifetime caps IssuerConfig.LeafLifetime so that a leaf always
	// fits in the part of the instance certificate's life that remains
	// before the instance certificate is renewed.
	MaxLeafLifetime = 7 * 24 * time.Hour
)

// IssuerConfig configures an [Issuer]; the zero value is usable.
type IssuerConfig struct {
	Clock func() time.Time // default time.Now
	// Rand supplies certificate serial numbers (default crypto/rand). Since
	// Go 1.26 key generation and ECDSA signing always use crypto/rand.
	Rand io.Reader
	// Name is used in subject CNs (default "dev.cloister").
	Name string
	// LeafLifetime is the leaf certificate's lifetime (default 3h, at most
	// MaxLeafLifetime); the cached leaf is re-issued when less than a third
	// of it remains.
	LeafLifetime time.Duration
	// VerifiedSHA256, when set, is the SHA-256 of the PEM given to
	// LoadIssuer as recorded by a process that loaded those bytes with
	// LoadIssuer itself, and so checked the chain's signatures (the
	// daemon, for its monitors): LoadIssuer checks the bytes against it
	// instead of checking the four signatures again (4 ms of P-384
	// verification per enclave launch), and fails if they differ.
	VerifiedSHA256 []byte
}

func (c IssuerConfig) withDefaults() IssuerConfig {
	if c.Clock == nil {
		c.Clock = time.Now
	}
	if c.Rand == nil {
		c.Rand = rand.Reader
	}
	if c.Name == "" {
		c.Name = "dev.cloister"
	}
	if c.LeafLifetime <= 0 {
		c.LeafLifetime = DefaultLeafLifetime
	}
	c.LeafLifetime = min(c.LeafLifetime, MaxLeafLifetime)
	return c
}

// issued is one certificate with its private key.
type issued struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// Issuer creates attestation documents exactly like the NSM (nitro-reference
// §4): an untagged COSE_Sign1 (signed and encoded by go-cose) with protected
// header a1 01 38 22, an empty unprotected map and a 96-byte ES384 signature
// r‖s; a payload map with the
// keys module_id, digest, timestamp, pcrs, certificate, cabundle,
// public_key, user_data, nonce in that order, absent optional fields as
// explicit null. It signs with a generated P-384 chain shaped like AWS's:
// root (30 years, CA) → regional (CA, pathLen 2) → zonal (CA, pathLen 1) →
// instance (CA, pathLen 0) → leaf (CA:false, keyUsage digitalSignature and
// nonRepudiation); cabundle = [root, regional, zonal, instance]. The
// documents verify with a [Verifier] that trusts [Issuer.Root], never with
// the AWS root. Safe for concurrent use.
type Issuer struct {
	cfg      IssuerConfig
	root     issued
	moduleID string

	mu     sync.Mutex
	chain  [3]issued // regional, zonal, instance
	leaf   issued
	bundle [][]byte // [root, regional, zonal, instance] DER
}

var roleNames = [...]string{"regional", "zonal", "instance"}

// NewIssuer generates a new root and chain.
func NewIssuer(cfg IssuerConfig) (*Issuer, error) {
	cfg = cfg.withDefaults()
	i := &Issuer{cfg: cfg}
	now := cfg.Clock()
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("attest: issuer: generate root key: %w", err)
	}
	nb := now.Add(-time.Hour).Truncate(time.Second)
	tmpl := &x509.Certificate{
		Subject:               i.name(cfg.Name),
		NotBefore:             nb,
		NotAfter:              nb.Add(IssuerRootLifetime),
		BasicConstraintsValid: true,
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	if i.root, err = i.sign(tmpl, key, issued{}); err != nil {
		return nil, err
	}
	if err := i.init(now); err != nil {
		return nil, err
	}
	return i, nil
}

func (i *Issuer) init(now time.Time) error {
	id, err := i.randHex(8)
	if err != nil {
		return err
	}
	enc, err := i.randHex(8)
	if err != nil {
		return err
	}
	i.moduleID = "i-" + id + "-enc" + enc
	i.mu.Lock()
	defer i.mu.Unlock()
	// The leaf waits for the first Issue: its key and certificate cost
	// about 1.5 ms, which a monitor would otherwise pay on every launch.
	return i.refresh(now, false)
}

func (i *Issuer) name(cn string) pkix.Name {
	return pkix.Name{CommonName: cn, Organization: []string{"Cloister"},
		OrganizationalUnit: []string{"development attestation, not AWS"}}
}

func (i *Issuer) randHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := io.ReadFull(i.cfg.Rand, b); err != nil {
		return "", fmt.Errorf("attest: issuer: random: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// sign creates a certificate from tmpl for key, signed by parent (self-signed
// when parent.cert is nil).
func (i *Issuer) sign(tmpl *x509.Certificate, key *ecdsa.PrivateKey, parent issued) (issued, error) {
	serial, err := rand.Int(i.cfg.Rand, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return issued{}, fmt.Errorf("attest: issuer: serial: %w", err)
	}
	tmpl.SerialNumber = serial.Add(serial, big.NewInt(1))
	tmpl.SignatureAlgorithm = x509.ECDSAWithSHA384
	pc, pk := tmpl, key
	if parent.cert != nil {
		pc, pk = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(i.cfg.Rand, tmpl, pc, &key.PublicKey, pk)
	if err != nil {
		return issued{}, fmt.Errorf("attest: issuer: create %s certificate: %w", tmpl.Subject.CommonName, err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return issued{}, fmt.Errorf("attest: issuer: parse created certificate: %w", err)
	}
	return issued{cert: c, key: key}, nil
}

// stale reports whether c must be re-issued at now.
func stale(c *x509.Certificate, now time.Time) bool {
	if c == nil || now.Before(c.NotBefore) {
		return true
	}
	life := c.NotAfter.Sub(c.NotBefore)
	return c.NotAfter.Sub(now) < life/3
}

// refresh re-issues every certificate below the root that is stale at now,
// and everything below it; the leaf only if leaf is set (it is dropped
// when the chain is renewed). i.mu must be held.
func (i *Issuer) refresh(now time.Time, leaf bool) error {
	if now.Before(i.root.cert.NotBefore) || now.After(i.root.cert.NotAfter) {
		return fmt.Errorf("attest: issuer: root certificate is not valid at %s", now.UTC().Format(time.RFC3339))
	}
	lifetimes := [3]time.Duration{IssuerRegionalLifetime, IssuerZonalLifetime, IssuerInstanceLifetime}
	renew := false
	parent := i.root
	for k := range i.chain {
		if renew || stale(i.chain[k].cert, now) {
			renew = true
			key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
			if err != nil {
				return fmt.Errorf("attest: issuer: generate key: %w", err)
			}
			h, err := i.randHex(8)
			if err != nil {
				return err
			}
			cn := h + "." + roleNames[k] + "." + i.cfg.Name
			if k == 2 {
				cn = "i-" + h + "." + i.cfg.Name
			}
			nb := now.Add(-time.Minute).Truncate(time.Second)
			tmpl := &x509.Certificate{
				Subject:               i.name(cn),
				NotBefore:             nb,
				NotAfter:              minTime(nb.Add(lifetimes[k]), parent.cert.NotAfter),
				BasicConstraintsValid: true,
				IsCA:                  true,
				MaxPathLen:            2 - k,
				MaxPathLenZero:        k == 2,
				KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
			}
			if i.chain[k], err = i.sign(tmpl, key, parent); err != nil {
				return err
			}
		}
		parent = i.chain[k]
	}
	if renew || i.bundle == nil {
		i.bundle = [][]byte{i.root.cert.Raw, i.chain[0].cert.Raw, i.chain[1].cert.Raw, i.chain[2].cert.Raw}
	}
	if renew {
		i.leaf = issued{} // signed by the old chain
	}
	if leaf && (i.leaf.cert == nil || now.Before(i.leaf.cert.NotBefore) || now.After(i.leaf.cert.NotAfter) ||
		i.leaf.cert.NotAfter.Sub(now) < i.cfg.LeafLifetime/3) {
		key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		if err != nil {
			return fmt.Errorf("attest: issuer: generate leaf key: %w", err)
		}
		nb := now.Add(-time.Minute).Truncate(time.Second)
		tmpl := &x509.Certificate{
			Subject:               i.name(i.moduleID + "." + i.cfg.Name),
			NotBefore:             nb,
			NotAfter:              minTime(nb.Add(i.cfg.LeafLifetime), parent.cert.NotAfter),
			BasicConstraintsValid: true,
			KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment,
		}
		if i.leaf, err = i.sign(tmpl, key, parent); err != nil {
			return err
		}
	}
	return nil
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// Root returns the issuer's root certificate (trust it with
// VerifierConfig.Roots).
func (i *Issuer) Root() *x509.Certificate { return i.root.cert }

// RootPEM returns the root certificate in PEM form.
func (i *Issuer) RootPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: i.root.cert.Raw})
}

// ModuleID returns the module_id used when an IssueRequest leaves it empty.
func (i *Issuer) ModuleID() string { return i.moduleID }

// IssueRequest is what an enclave asks the NSM to attest, plus the values
// the NSM itself contributes.
type IssueRequest struct {
	ModuleID  string         // empty: Issuer.ModuleID()
	PCRs      map[int][]byte // 1..32 entries, index 0..31, 32/48/64 bytes each
	UserData  []byte         // nil: null in the document; ≤ 1024 bytes
	Nonce     []byte         // nil: null; ≤ 1024 bytes
	PublicKey []byte         // nil: null; ≤ 1024 bytes
	Timestamp time.Time      // zero: the issuer's clock
}

// Issue returns a signed attestation document for req. It rejects, wrapping
// [ErrMalformed] or [ErrTooLarge], what the NSM or [ParseUnverified] would:
// no PCRs or more than 32, an index outside 0..31, a PCR not 32/48/64 bytes,
// user_data, nonce or public_key over 1024 bytes, a timestamp before the
// epoch. Certificates are managed with the issuer's clock (not
// req.Timestamp): the cached leaf is reused, so one document costs one
// ECDSA P-384 signature.
func (i *Issuer) Issue(req IssueRequest) ([]byte, error) {
	if len(req.PCRs) < 1 || len(req.PCRs) > 32 {
		return nil, fmt.Errorf("%w: issue: %d PCRs, want 1..32", ErrMalformed, len(req.PCRs))
	}
	idx := make([]int, 0, len(req.PCRs))
	for k, v := range req.PCRs {
		if k < 0 || k > 31 {
			return nil, fmt.Errorf("%w: issue: PCR index %d out of range 0..31", ErrMalformed, k)
		}
		if n := len(v); n != 32 && n != 48 && n != 64 {
			return nil, fmt.Errorf("%w: issue: PCR%d is %d bytes, want 32, 48 or 64", ErrMalformed, k, n)
		}
		idx = append(idx, k)
	}
	sort.Ints(idx)
	for name, f := range map[string][]byte{"user_data": req.UserData, "nonce": req.Nonce, "public_key": req.PublicKey} {
		if len(f) > MaxFieldSize {
			return nil, fmt.Errorf("%w: issue: %s is %d bytes, limit %d", ErrTooLarge, name, len(f), MaxFieldSize)
		}
	}
	moduleID := req.ModuleID
	if moduleID == "" {
		moduleID = i.moduleID
	}
	if len(moduleID) > MaxModuleIDSize {
		return nil, fmt.Errorf("%w: issue: module_id is %d bytes, limit %d", ErrMalformed, len(moduleID), MaxModuleIDSize)
	}

	now := i.cfg.Clock()
	ts := req.Timestamp
	if ts.IsZero() {
		ts = now
	}
	if ts.UnixMilli() <= 0 {
		return nil, fmt.Errorf("%w: issue: timestamp %s not after the epoch", ErrMalformed, ts)
	}

	i.mu.Lock()
	if err := i.refresh(now, true); err != nil {
		i.mu.Unlock()
		return nil, err
	}
	leaf, bundle := i.leaf, i.bundle
	i.mu.Unlock()

	p := make([]byte, 0, 512+len(bundle)*600+len(req.UserData)+len(req.Nonce)+len(req.PublicKey))
	p = cborx.AppendHead(p, cborx.MajorMap, 9)
	p = cborx.AppendText(p, "module_id")
	p = cborx.AppendText(p, moduleID)
	p = cborx.AppendText(p, "digest")
	p = cborx.AppendText(p, "SHA384")
	p = cborx.AppendText(p, "timestamp")
	p = cborx.AppendHead(p, cborx.MajorUint, uint64(ts.UnixMilli()))
	p = cborx.AppendText(p, "pcrs")
	p = cborx.AppendHead(p, cborx.MajorMap, uint64(len(idx)))
	for _, k := range idx {
		p = cborx.AppendHead(p, cborx.MajorUint, uint64(k))
		p = cborx.AppendBytes(p, req.PCRs[k])
	}
	p = cborx.AppendText(p, "certificate")
	p = cborx.AppendBytes(p, leaf.cert.Raw)
	p = cborx.AppendText(p, "cabundle")
	p = cborx.AppendHead(p, cborx.MajorArray, uint64(len(bundle)))
	for _, c := range bundle {
		p = cborx.AppendBytes(p, c)
	}
	p = cborx.AppendText(p, "public_key")
	p = appendOptBytes(p, req.PublicKey)
	p = cborx.AppendText(p, "user_data")
	p = appendOptBytes(p, req.UserData)
	p = cborx.AppendText(p, "nonce")
	p = appendOptBytes(p, req.Nonce)
	return signCOSE(leaf.key, p)
}

// signCOSE signs payload with go-cose and returns the untagged COSE_Sign1
// [protected, {}, payload, r‖s]. The protected header is pinned to the
// NSM's bytes rather than left to go-cose's encoding of {1: -35} (the same
// bytes today), so the document layout cannot drift with go-cose.
func signCOSE(key *ecdsa.PrivateKey, payload []byte) ([]byte, error) {
	signer, err := cose.NewSigner(cose.AlgorithmES384, key)
	if err != nil {
		return nil, fmt.Errorf("attest: issue: %w", err)
	}
	msg := cose.UntaggedSign1Message{
		Headers: cose.Headers{
			Protected:    cose.ProtectedHeader{cose.HeaderLabelAlgorithm: cose.AlgorithmES384},
			RawProtected: rawProtectedES384,
		},
		Payload: payload,
	}
	if err := msg.Sign(rand.Reader, nil, signer); err != nil {
		return nil, fmt.Errorf("attest: issue: sign: %w", err)
	}
	out, err := msg.MarshalCBOR()
	if err != nil {
		return nil, fmt.Errorf("attest: issue: encode COSE_Sign1: %w", err)
	}
	return out, nil
}

func appendOptBytes(b []byte, v []byte) []byte {
	if v == nil {
		return append(b, cborx.Null)
	}
	return cborx.AppendBytes(b, v)
}

// PEM block header naming the role of a certificate or key in MarshalPEM.
const pemRoleHeader = "Cloister-Role"

// MarshalPEM returns the root and intermediate certificates and their private
// keys (PKCS#8) as PEM blocks, each with a "Cloister-Role" header (root,
// regional, zonal, instance). The leaf is not included: it is short-lived and
// re-created on load. The output contains private keys: store it with mode
// 0600.
func (i *Issuer) MarshalPEM() ([]byte, error) {
	i.mu.Lock()
	parts := []issued{i.root, i.chain[0], i.chain[1], i.chain[2]}
	i.mu.Unlock()
	roles := []string{"root", roleNames[0], roleNames[1], roleNames[2]}
	out := []byte("# Cloister development attestation issuer (NOT an AWS root).\n# Contains private keys: keep secret.\n")
	for k, p := range parts {
		kd, err := x509.MarshalPKCS8PrivateKey(p.key)
		if err != nil {
			return nil, fmt.Errorf("attest: issuer: marshal %s key: %w", roles[k], err)
		}
		hdr := map[string]string{pemRoleHeader: roles[k]}
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Headers: hdr, Bytes: p.cert.Raw})...)
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Headers: hdr, Bytes: kd})...)
	}
	return out, nil
}

// LoadIssuer restores an Issuer from [Issuer.MarshalPEM] output. The root
// certificate and key are required and must match. Intermediates that are
// missing, do not match their key, are not signed by their parent or are
// stale at the clock's time are re-issued. With cfg.VerifiedSHA256 the
// signatures are not checked again; the bytes must hash to it.
func LoadIssuer(pemBytes []byte, cfg IssuerConfig) (*Issuer, error) {
	cfg = cfg.withDefaults()
	certs := map[string]*x509.Certificate{}
	keys := map[string]*ecdsa.PrivateKey{}
	for rest := pemBytes; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		role := blk.Headers[pemRoleHeader]
		if role == "" {
			continue
		}
		switch blk.Type {
		case "CERTIFICATE":
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("attest: load issuer: %s certificate: %w", role, err)
			}
			certs[role] = c
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("attest: load issuer: %s key: %w", role, err)
			}
			ek, ok := k.(*ecdsa.PrivateKey)
			if !ok || ek.Curve != elliptic.P384() {
				return nil, fmt.Errorf("attest: load issuer: %s key is not ECDSA P-384", role)
			}
			keys[role] = ek
		}
	}
	match := func(role string) (issued, bool) {
		c, k := certs[role], keys[role]
		if c == nil || k == nil {
			return issued{}, false
		}
		pub, ok := c.PublicKey.(*ecdsa.PublicKey)
		return issued{cert: c, key: k}, ok && pub.Equal(&k.PublicKey)
	}
	// signedBy checks c's signature by parent, unless the caller vouched
	// for these very bytes (cfg.VerifiedSHA256).
	vouched := false
	if cfg.VerifiedSHA256 != nil {
		sum := sha256.Sum256(pemBytes)
		if !bytes.Equal(sum[:], cfg.VerifiedSHA256) {
			return nil, errors.New("attest: load issuer: the PEM is not the one whose chain was verified (its SHA-256 differs)")
		}
		vouched = true
	}
	signedBy := func(c, parent *x509.Certificate) bool { return vouched || c.CheckSignatureFrom(parent) == nil }
	root, ok := match("root")
	if !ok {
		return nil, errors.New("attest: load issuer: no matching root certificate and key (Cloister-Role: root)")
	}
	if !root.cert.IsCA || !signedBy(root.cert, root.cert) {
		return nil, errors.New("attest: load issuer: root is not a self-signed CA certificate")
	}
	i := &Issuer{cfg: cfg, root: root}
	parent := root
	for k, role := range roleNames {
		p, ok := match(role)
		if !ok || !signedBy(p.cert, parent.cert) || p.cert.MaxPathLen != 2-k {
			break // refresh re-issues this one and all below
		}
		i.chain[k] = p
		parent = p
	}
	if err := i.init(cfg.Clock()); err != nil {
		return nil, err
	}
	return i, nil
}

// bundleDER returns the current cabundle (for tests and tools).
func (i *Issuer) bundleDER() [][]byte {
	i.mu.Lock()
	defer i.mu.Unlock()
	return slices.Clone(i.bundle)
}
