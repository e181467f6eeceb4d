package attest

import (
	"bytes"
	"crypto/rsa"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"
)

// MaxClockSkew is how far in the future (relative to the evaluation time) a
// document's timestamp may lie when [Policy.MaxAge] is set.
const MaxClockSkew = 5 * time.Minute

// Policy says which verified documents are acceptable. The zero value
// accepts every non-debug document.
type Policy struct {
	// PCRs maps index to expected value; an index absent from the document
	// is a mismatch.
	PCRs map[int][]byte
	// AllowDebug accepts debug-mode documents (PCR0, PCR1, PCR2 all zero).
	AllowDebug bool
	// Nonce is the expected nonce, compared in constant time; nil = not
	// checked. A document without nonce fails a non-nil expectation.
	Nonce []byte
	// UserData, when set, is called with the document's user_data (nil when
	// absent); a non-nil result rejects the document.
	UserData func([]byte) error
	// PublicKey, when set, is called with the document's public_key (nil
	// when absent); a non-nil result rejects the document.
	PublicKey func([]byte) error
	// MaxAge, when non-zero, rejects documents whose timestamp is more than
	// MaxAge before now, or more than MaxClockSkew after now.
	MaxAge time.Duration
}

// Check is the outcome of one policy check.
type Check struct {
	Name   string `json:"check"`            // "debug", "pcr<N>", "nonce", "user_data", "public_key", "max_age"
	OK     bool   `json:"ok"`               // passed
	Detail string `json:"detail,omitempty"` // why it failed
	Err    error  `json:"-"`                // the failure (wraps a sentinel), nil when OK
}

// PolicyReport lists the outcome of every check a policy performed.
type PolicyReport struct {
	OK     bool    `json:"ok"`
	Checks []Check `json:"checks"`
}

// Report runs every check that p configures, plus the debug check, and
// returns each outcome in a fixed order: debug, PCRs by index, nonce,
// user_data, public_key, max_age.
func (p Policy) Report(v *Verified, now time.Time) PolicyReport {
	var checks []Check
	add := func(name string, err error) {
		c := Check{Name: name, OK: err == nil, Err: err}
		if err != nil {
			c.Detail = err.Error()
		}
		checks = append(checks, c)
	}
	if v == nil {
		add("document", fmt.Errorf("%w: nil Verified", ErrMalformed))
		return PolicyReport{Checks: checks}
	}
	d := v.doc

	var err error
	if v.Debug() && !p.AllowDebug {
		err = fmt.Errorf("%w: PCR0, PCR1 and PCR2 are zero (debug mode) and debug is not allowed", ErrDebug)
	}
	add("debug", err)

	idx := make([]int, 0, len(p.PCRs))
	for i := range p.PCRs {
		idx = append(idx, i)
	}
	slices.Sort(idx)
	for _, i := range idx {
		want := p.PCRs[i]
		got, ok := d.PCRs[i]
		err = nil
		if !ok || !bytes.Equal(got, want) {
			err = &PCRMismatchError{Index: i, Want: slices.Clone(want), Got: slices.Clone(got)}
		}
		add(fmt.Sprintf("pcr%d", i), err)
	}

	if p.Nonce != nil {
		err = nil
		switch {
		case d.Nonce == nil:
			err = fmt.Errorf("%w: document has no nonce", ErrNonce)
		case subtle.ConstantTimeCompare(d.Nonce, p.Nonce) != 1:
			err = fmt.Errorf("%w: document nonce differs from the expected one", ErrNonce)
		}
		add("nonce", err)
	}
	if p.UserData != nil {
		err = nil
		if e := p.UserData(slices.Clone(d.UserData)); e != nil {
			err = fmt.Errorf("%w: %w", ErrUserData, e)
		}
		add("user_data", err)
	}
	if p.PublicKey != nil {
		err = nil
		if e := p.PublicKey(slices.Clone(d.PublicKey)); e != nil {
			err = fmt.Errorf("%w: %w", ErrPublicKey, e)
		}
		add("public_key", err)
	}
	if p.MaxAge != 0 {
		err = nil
		age := now.Sub(d.Timestamp)
		switch {
		case age > p.MaxAge:
			err = fmt.Errorf("%w: document is %s old, max age %s", ErrStale, age.Round(time.Millisecond), p.MaxAge)
		case -age > MaxClockSkew:
			err = fmt.Errorf("%w: document timestamp is %s in the future (max skew %s)", ErrStale, (-age).Round(time.Millisecond), MaxClockSkew)
		}
		add("max_age", err)
	}
	ok := true
	for _, c := range checks {
		ok = ok && c.OK
	}
	return PolicyReport{OK: ok, Checks: checks}
}

// Evaluate applies p to v at time now. It returns nil when every check
// passes, and otherwise a *PolicyError listing every failure (see
// [Policy.Report] for the checks and their order).
func (p Policy) Evaluate(v *Verified, now time.Time) error {
	r := p.Report(v, now)
	if r.OK {
		return nil
	}
	pe := &PolicyError{}
	for _, c := range r.Checks {
		if c.Err != nil {
			pe.Failures = append(pe.Failures, c.Err)
		}
	}
	return pe
}

// ExpectUserData returns a matcher that accepts exactly want (compared in
// constant time); nil want accepts only an absent user_data.
func ExpectUserData(want []byte) func([]byte) error { return expectBytes("user_data", want) }

// ExpectPublicKey returns a matcher that accepts exactly want; nil want
// accepts only an absent public_key.
func ExpectPublicKey(want []byte) func([]byte) error { return expectBytes("public_key", want) }

func expectBytes(what string, want []byte) func([]byte) error {
	want = slices.Clone(want)
	return func(got []byte) error {
		if want == nil {
			if got != nil {
				return fmt.Errorf("%s present, want absent", what)
			}
			return nil
		}
		if got == nil {
			return fmt.Errorf("%s absent, want %s", what, hex.EncodeToString(want))
		}
		if subtle.ConstantTimeCompare(got, want) != 1 {
			return fmt.Errorf("%s differs from the expected value", what)
		}
		return nil
	}
}

// RequireRSAPublicKey returns a matcher that accepts a public_key holding a
// DER SubjectPublicKeyInfo of an RSA key of at least minBits bits (what KMS
// requires for a Recipient).
func RequireRSAPublicKey(minBits int) func([]byte) error {
	return func(b []byte) error {
		if b == nil {
			return errors.New("public_key absent, want an RSA SubjectPublicKeyInfo")
		}
		k, err := x509.ParsePKIXPublicKey(b)
		if err != nil {
			return fmt.Errorf("public_key is not a DER SubjectPublicKeyInfo: %w", err)
		}
		rk, ok := k.(*rsa.PublicKey)
		if !ok {
			return fmt.Errorf("public_key is %T, want RSA", k)
		}
		if n := rk.N.BitLen(); n < minBits {
			return fmt.Errorf("public_key is RSA-%d, want at least %d bits", n, minBits)
		}
		return nil
	}
}
