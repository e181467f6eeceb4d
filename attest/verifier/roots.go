package verifier

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/cloister/cloister/attest"
)

// Root is a trusted root certificate with the name policies use to refer
// to it (see [PolicySpec.Roots]).
type Root struct {
	Name string
	Cert *x509.Certificate
}

// maxTrustSets bounds the cache of verifiers for inline root subsets.
const maxTrustSets = 64

type rootEntry struct {
	name string
	fp   string // "sha256:<hex>"
	cert *x509.Certificate
}

// rootSet is the server's trusted roots and a cache of verifiers for
// subsets of them.
type rootSet struct {
	entries []rootEntry
	mu      sync.Mutex
	sets    map[string]*trustSet // key: sorted fingerprints joined by ","
	all     *trustSet
}

// trustSet is a verifier that trusts exactly some of the server's roots.
type trustSet struct {
	v *attest.Verifier
}

func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func newRootSet(roots []Root, noAWS bool) (*rootSet, error) {
	rs := &rootSet{sets: make(map[string]*trustSet)}
	if !noAWS {
		aws := attest.AWSRootCertificate()
		rs.entries = append(rs.entries, rootEntry{name: "aws", fp: fingerprint(aws), cert: aws})
	}
	for i, r := range roots {
		if r.Cert == nil || len(r.Cert.Raw) == 0 {
			return nil, fmt.Errorf("verifier: root %d (%q) has no certificate", i, r.Name)
		}
		if r.Name == "" {
			return nil, fmt.Errorf("verifier: root %d has no name", i)
		}
		rs.entries = append(rs.entries, rootEntry{name: r.Name, fp: fingerprint(r.Cert), cert: r.Cert})
	}
	if len(rs.entries) == 0 {
		return nil, fmt.Errorf("verifier: no trusted root (give a root, or do not disable the AWS root)")
	}
	all, err := rs.subset(nil)
	if err != nil {
		return nil, err
	}
	rs.all = all
	return rs, nil
}

// subset returns a verifier trusting the named roots (every root when names
// is empty). A name is a root's configured name, "aws", or a fingerprint
// "sha256:<hex>"; a name that matches several certificates (a PEM file with
// several) selects them all.
func (rs *rootSet) subset(names []string) (*trustSet, error) {
	if len(names) > 2*len(rs.entries)+16 {
		return nil, fmt.Errorf("roots: %d entries, too many", len(names))
	}
	var chosen []*x509.Certificate
	fps := make(map[string]bool)
	if len(names) == 0 {
		for _, e := range rs.entries {
			if !fps[e.fp] {
				fps[e.fp] = true
				chosen = append(chosen, e.cert)
			}
		}
	}
	for _, n := range names {
		found := false
		for _, e := range rs.entries {
			if e.name == n || strings.EqualFold(e.fp, n) {
				found = true
				if !fps[e.fp] {
					fps[e.fp] = true
					chosen = append(chosen, e.cert)
				}
			}
		}
		if !found {
			return nil, fmt.Errorf("roots: %q is not a configured root (known: %s)", n, rs.names())
		}
	}
	keys := make([]string, 0, len(fps))
	for k := range fps {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	key := strings.Join(keys, ",")

	rs.mu.Lock()
	defer rs.mu.Unlock()
	if ts, ok := rs.sets[key]; ok {
		return ts, nil
	}
	cfg := attest.VerifierConfig{NoAWSRoot: true, Roots: chosen}
	if len(rs.sets) >= maxTrustSets {
		cfg.CacheSize = -1 // a one-off verifier: no cache to keep
	}
	v, err := attest.NewVerifier(cfg)
	if err != nil {
		return nil, fmt.Errorf("roots: %w", err)
	}
	ts := &trustSet{v: v}
	if len(rs.sets) < maxTrustSets {
		rs.sets[key] = ts
	}
	return ts, nil
}

func (rs *rootSet) names() string {
	var out []string
	for _, e := range rs.entries {
		out = append(out, e.name)
	}
	return strings.Join(slices.Compact(out), ", ") + ", or sha256:<hex of a root's DER>"
}

// isAWSRoot reports whether c is the embedded AWS Nitro Enclaves root.
func isAWSRoot(c *x509.Certificate) bool {
	if c == nil {
		return false
	}
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:]) == attest.AWSRootSHA256
}
