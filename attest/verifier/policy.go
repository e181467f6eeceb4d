package verifier

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/cloister/cloister/attest"
)

// DefaultPolicyName is the name of the built-in policy used when no policy
// file is configured: it accepts every non-debug document that verifies.
const DefaultPolicyName = "default"

// PolicySpec is one appraisal policy as written in a policy file or inline
// in a verification request. The zero value accepts every non-debug
// document that verifies under the server's roots.
type PolicySpec struct {
	// PCRs maps a decimal PCR index (0..31) to its expected value in hex
	// (32, 48 or 64 bytes).
	PCRs map[string]string `json:"pcrs,omitempty" yaml:"pcrs"`
	// AllowDebug accepts debug-mode documents (PCR0..2 all zero).
	AllowDebug bool `json:"allow_debug,omitempty" yaml:"allow_debug"`
	// MaxAge rejects documents older than this at the verification time
	// (Go duration syntax, e.g. "5m"; empty or "0" = unchecked).
	MaxAge Duration `json:"max_age,omitempty" yaml:"max_age"`
	// Nonce is an expected nonce in hex (rarely useful in a file; requests
	// usually set it per call).
	Nonce string `json:"nonce,omitempty" yaml:"nonce"`
	// Challenge requires the document's nonce to be a challenge issued by
	// this server (POST /v1/challenges), unused and unexpired; it is
	// consumed by the first verified document that presents it.
	Challenge bool `json:"challenge,omitempty" yaml:"challenge"`
	// UserData and PublicKey constrain those document fields.
	UserData  *Expectation `json:"user_data,omitempty" yaml:"user_data"`
	PublicKey *Expectation `json:"public_key,omitempty" yaml:"public_key"`
	// Roots restricts trust to a subset of the server's roots, each named
	// "aws", by the name it was configured with (the --root argument), or
	// as "sha256:<hex of the DER>". Empty = every server root.
	Roots []string `json:"roots,omitempty" yaml:"roots"`
}

// Expectation constrains a byte-string field of the document. Exactly one
// of its members must be set.
type Expectation struct {
	Equals string `json:"equals,omitempty" yaml:"equals"` // hex; the field must equal it
	SHA256 string `json:"sha256,omitempty" yaml:"sha256"` // hex; SHA-256 of the field must equal it
	Absent bool   `json:"absent,omitempty" yaml:"absent"` // the field must be absent (null)
}

// Duration is a time.Duration written as a Go duration string ("90s",
// "5m") or a number of seconds, in JSON and YAML.
type Duration time.Duration

// UnmarshalJSON accepts a duration string or a number of seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("duration %q: %w", s, err)
		}
		*d = Duration(v)
		return nil
	}
	var n float64
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("duration: want a string like \"5m\" or a number of seconds, got %s", b)
	}
	*d = Duration(n * float64(time.Second))
	return nil
}

// MarshalJSON writes the duration as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// PolicyFile is the content of a --policy-file (YAML or JSON).
type PolicyFile struct {
	// Default names the policy used by requests that name none. When empty,
	// a policy named "default" is used if there is one; otherwise requests
	// must name a policy or give one inline.
	Default  string                `json:"default,omitempty" yaml:"default"`
	Policies map[string]PolicySpec `json:"policies" yaml:"policies"`
}

// ParsePolicyFile decodes a policy file: YAML, or JSON (which YAML
// reads). Unknown fields are errors, reported with their line. Values are
// checked by [New], which compiles the policies against the server's roots.
func ParsePolicyFile(b []byte) (*PolicyFile, error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var pf PolicyFile
	if err := dec.Decode(&pf); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("verifier: policy file is empty")
		}
		return nil, fmt.Errorf("verifier: policy file: %w", err)
	}
	if len(pf.Policies) == 0 {
		return nil, errors.New("verifier: policy file: no policies (want a top-level \"policies:\" map of name to policy)")
	}
	return &pf, nil
}

// UnmarshalYAML accepts a duration string or a number of seconds.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: duration: want a string like \"5m\" or a number of seconds", n.Line)
	}
	if n.Tag == "!!int" || n.Tag == "!!float" {
		f, err := strconv.ParseFloat(n.Value, 64)
		if err != nil {
			return fmt.Errorf("line %d: duration %q: %w", n.Line, n.Value, err)
		}
		*d = Duration(f * float64(time.Second))
		return nil
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: duration %q: %w", n.Line, n.Value, err)
	}
	*d = Duration(v)
	return nil
}

// strictJSON decodes exactly one JSON value into v, rejecting unknown fields.
func strictJSON(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after the JSON value")
	}
	return nil
}

// policy is a validated, compiled PolicySpec.
type policy struct {
	id        string // ear.appraisal-policy-id
	name      string // "" for inline policies
	attest    attest.Policy
	challenge bool
	trust     *trustSet
}

// compile validates spec and turns it into a policy. roots resolves root
// names; id is the appraisal policy id.
func compile(spec PolicySpec, roots *rootSet, id string) (*policy, error) {
	p := &policy{id: id, challenge: spec.Challenge}
	p.attest.AllowDebug = spec.AllowDebug
	if spec.MaxAge < 0 {
		return nil, fmt.Errorf("max_age %s: must not be negative", time.Duration(spec.MaxAge))
	}
	p.attest.MaxAge = time.Duration(spec.MaxAge)
	for k, v := range spec.PCRs {
		i, err := strconv.Atoi(k)
		if err != nil || i < 0 || i > 31 || strconv.Itoa(i) != k {
			return nil, fmt.Errorf("pcrs: index %q: want a decimal number 0..31", k)
		}
		b, err := hex.DecodeString(strings.TrimPrefix(v, "0x"))
		if err != nil || (len(b) != 32 && len(b) != 48 && len(b) != 64) {
			return nil, fmt.Errorf("pcrs: PCR%d: want 32, 48 or 64 bytes of hex", i)
		}
		if p.attest.PCRs == nil {
			p.attest.PCRs = make(map[int][]byte)
		}
		p.attest.PCRs[i] = b
	}
	if spec.Nonce != "" {
		if spec.Challenge {
			return nil, errors.New("nonce and challenge are exclusive: a challenge nonce is issued by the server")
		}
		b, err := hex.DecodeString(spec.Nonce)
		if err != nil || len(b) == 0 || len(b) > attest.MaxFieldSize {
			return nil, fmt.Errorf("nonce: want 1..%d bytes of hex", attest.MaxFieldSize)
		}
		p.attest.Nonce = b
	}
	var err error
	if p.attest.UserData, err = spec.UserData.matcher("user_data"); err != nil {
		return nil, err
	}
	if p.attest.PublicKey, err = spec.PublicKey.matcher("public_key"); err != nil {
		return nil, err
	}
	if p.trust, err = roots.subset(spec.Roots); err != nil {
		return nil, err
	}
	return p, nil
}

// matcher validates e and returns the attest matcher it describes (nil for
// a nil Expectation).
func (e *Expectation) matcher(field string) (func([]byte) error, error) {
	if e == nil {
		return nil, nil
	}
	set := 0
	for _, b := range []bool{e.Equals != "", e.SHA256 != "", e.Absent} {
		if b {
			set++
		}
	}
	if set != 1 {
		return nil, fmt.Errorf("%s: set exactly one of equals, sha256, absent", field)
	}
	expect := attest.ExpectUserData
	if field == "public_key" {
		expect = attest.ExpectPublicKey
	}
	switch {
	case e.Absent:
		return expect(nil), nil // nil want accepts only absence
	case e.Equals != "":
		b, err := hex.DecodeString(e.Equals)
		if err != nil || len(b) == 0 || len(b) > attest.MaxFieldSize {
			return nil, fmt.Errorf("%s: equals: want 1..%d bytes of hex", field, attest.MaxFieldSize)
		}
		return expect(b), nil
	default:
		want, err := hex.DecodeString(e.SHA256)
		if err != nil || len(want) != sha256.Size {
			return nil, fmt.Errorf("%s: sha256: want 32 bytes of hex", field)
		}
		return func(got []byte) error {
			if got == nil {
				return fmt.Errorf("%s absent, want one whose SHA-256 is %x", field, want)
			}
			sum := sha256.Sum256(got)
			if subtle.ConstantTimeCompare(sum[:], want) != 1 {
				return fmt.Errorf("SHA-256 of %s is %x, want %x", field, sum, want)
			}
			return nil
		}, nil
	}
}

// inlinePolicyID names an inline policy by the SHA-256 of its canonical
// JSON form.
func inlinePolicyID(spec PolicySpec) string {
	roots := slices.Clone(spec.Roots)
	sort.Strings(roots)
	spec.Roots = roots
	b, _ := json.Marshal(spec) // cannot fail: plain data; map keys sorted
	sum := sha256.Sum256(b)
	return "policy:cloister/inline-" + hex.EncodeToString(sum[:8])
}
