package main

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/cloister/cloister/attest"
)

func init() { register(newVerifyCmd) }

type verifyFlags struct {
	roots      []string
	at         string
	pcrs       []string
	nonce      string
	allowDebug bool
	maxAge     time.Duration
	json       bool
}

func newVerifyCmd() *cobra.Command {
	var f verifyFlags
	cmd := &cobra.Command{
		Use:   "verify [flags] FILE|-",
		Short: "Verify a Nitro attestation document and check a policy",
		Long: `verify checks an AWS Nitro Enclaves attestation document: strict CBOR and
COSE_Sign1 structure, the certificate chain up to a pinned root (every
certificate valid at --at), and the ES384 signature; then it applies the
policy given by --pcr, --nonce, --allow-debug and --max-age.

The input (a file, or - for stdin) may be raw CBOR, hex or base64 (standard
or URL alphabet, padded or not). Debug-mode documents (PCR0, PCR1, PCR2 all
zero) are rejected unless --allow-debug.

With --json, one JSON object is printed when the document is
cryptographically verified, even if the policy rejects it: module_id,
timestamp, digest, pcrs, user_data, nonce, public_key, debug, certificates
and "policy" with every check's outcome. Nothing is printed on stdout when
verification itself fails.

Exit status: 0 verified and policy holds, 1 rejected (the reason is printed
on stderr), 2 usage error.`,
		Example: `  cloister verify doc.cbor
  cloister verify --at 2022-11-09T23:00:00Z --pcr 0=22f9e1c9... --json doc.b64
  cloister verify --root dev-root.pem --max-age 5m -`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return runVerify(cmd, f, args[0]) },
	}
	fl := cmd.Flags()
	fl.StringArrayVar(&f.roots, "root", nil, `trusted root: "aws" (the embedded AWS Nitro root, the default) or a PEM file; repeatable`)
	fl.StringVar(&f.at, "at", "", "verify certificates at this time (RFC 3339 or Unix seconds; default now)")
	fl.StringArrayVar(&f.pcrs, "pcr", nil, "expected PCR value as N=HEX; repeatable")
	fl.StringVar(&f.nonce, "nonce", "", "expected nonce (hex)")
	fl.BoolVar(&f.allowDebug, "allow-debug", false, "accept debug-mode enclaves (PCR0..2 all zero)")
	fl.DurationVar(&f.maxAge, "max-age", 0, "reject documents older than this relative to --at (e.g. 5m; 0 = unchecked)")
	fl.BoolVar(&f.json, "json", false, "print the verified claims and policy outcome as JSON")
	return cmd
}

// verifyUsageError marks a flag value that does not parse (exit status 2).
func verifyUsageError(format string, a ...any) error { return fmt.Errorf(format, a...) }

func parseVerifyTime(s string) (time.Time, error) {
	if s == "" {
		return time.Now(), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if sec, err := strconv.ParseFloat(s, 64); err == nil && sec > 0 && sec < 1e12 {
		whole := int64(sec)
		return time.Unix(whole, int64((sec-float64(whole))*1e9)).UTC(), nil
	}
	return time.Time{}, verifyUsageError("--at %q: want RFC 3339 (2022-11-09T23:00:00Z) or Unix seconds", s)
}

func parseVerifyPolicy(f verifyFlags) (attest.Policy, error) {
	p := attest.Policy{AllowDebug: f.allowDebug, MaxAge: f.maxAge}
	if f.maxAge < 0 {
		return p, verifyUsageError("--max-age %s: must not be negative", f.maxAge)
	}
	for _, s := range f.pcrs {
		k, v, ok := strings.Cut(s, "=")
		idx, err := strconv.Atoi(k)
		if !ok || err != nil || idx < 0 || idx > 31 {
			return p, verifyUsageError("--pcr %q: want N=HEX with N in 0..31", s)
		}
		b, err := hex.DecodeString(strings.TrimPrefix(v, "0x"))
		if err != nil || (len(b) != 32 && len(b) != 48 && len(b) != 64) {
			return p, verifyUsageError("--pcr %q: value must be 32, 48 or 64 bytes of hex", s)
		}
		if p.PCRs == nil {
			p.PCRs = map[int][]byte{}
		}
		if _, dup := p.PCRs[idx]; dup {
			return p, verifyUsageError("--pcr %d given twice", idx)
		}
		p.PCRs[idx] = b
	}
	if f.nonce != "" {
		b, err := hex.DecodeString(f.nonce)
		if err != nil {
			return p, verifyUsageError("--nonce: not hex: %v", err)
		}
		p.Nonce = b
	}
	return p, nil
}

func readVerifyEvidence(cmd *cobra.Command, path string) ([]byte, error) {
	var r io.Reader
	if path == "-" {
		r = cmd.InOrStdin()
	} else {
		fh, err := os.Open(path)
		if err != nil {
			return nil, withExit(1, fmt.Errorf("verify: %w", err))
		}
		defer fh.Close()
		r = fh
	}
	b, err := io.ReadAll(io.LimitReader(r, 4*attest.MaxDocumentSize+1))
	if err != nil {
		return nil, withExit(1, fmt.Errorf("verify: read %s: %w", path, err))
	}
	return b, nil
}

func runVerify(cmd *cobra.Command, f verifyFlags, path string) error {
	at, err := parseVerifyTime(f.at)
	if err != nil {
		return err
	}
	policy, err := parseVerifyPolicy(f)
	if err != nil {
		return err
	}
	roots, includeAWS, err := attest.LoadRoots(f.roots)
	if err != nil {
		return withExit(1, fmt.Errorf("verify: %w (give --root aws or a readable PEM file)", err))
	}
	in, err := readVerifyEvidence(cmd, path)
	if err != nil {
		return err
	}
	doc, err := attest.DecodeEvidence(in)
	if err != nil {
		return withExit(1, fmt.Errorf("verify: %w", err))
	}
	v, err := attest.Verify(doc, at, attest.VerifierConfig{Roots: roots, NoAWSRoot: !includeAWS})
	if err != nil {
		return withExit(1, fmt.Errorf("verify: rejected: %w%s", err, verifyHint(err)))
	}
	report := policy.Report(v, at)
	out := cmd.OutOrStdout()
	if f.json {
		c := v.Claims()
		c.Policy = &report
		if err := printJSON(out, c, cloisterJSON); err != nil {
			return withExit(1, err)
		}
	} else {
		printVerifySummary(out, v, report)
	}
	if err := policy.Evaluate(v, at); err != nil {
		return withExit(1, fmt.Errorf("verify: rejected: %w", err))
	}
	return nil
}

// verifyHint says what the user can do about a verification failure.
func verifyHint(err error) string {
	switch {
	case errors.Is(err, attest.ErrExpired), errors.Is(err, attest.ErrNotYetValid):
		return " (a Nitro leaf certificate lives about 3 hours: pass --at with a time inside its validity to check an old document)"
	case errors.Is(err, attest.ErrUntrustedRoot):
		return " (documents from Cloister's development NSM need --root with the daemon's root PEM)"
	case errors.Is(err, attest.ErrMalformed):
		return " (the input must be an NSM attestation document: raw CBOR, hex or base64)"
	}
	return ""
}

func printVerifySummary(w io.Writer, v *attest.Verified, r attest.PolicyReport) {
	c := v.Claims()
	orNone := func(s *string) string {
		if s == nil {
			return "(none)"
		}
		return *s
	}
	fmt.Fprintf(w, "signature and certificate chain: verified (root %s)\n", c.Certificates[len(c.Certificates)-1].Subject)
	fmt.Fprintf(w, "module_id:  %s\ntimestamp:  %s\ndigest:     %s\ndebug:      %v\n", c.ModuleID, c.Timestamp, c.Digest, c.Debug)
	fmt.Fprintln(w, "pcrs:")
	idx := make([]int, 0, len(c.PCRs))
	for k := range c.PCRs {
		n, _ := strconv.Atoi(k)
		idx = append(idx, n)
	}
	sort.Ints(idx)
	for _, i := range idx {
		fmt.Fprintf(w, "  %2d: %s\n", i, c.PCRs[strconv.Itoa(i)])
	}
	fmt.Fprintf(w, "user_data:  %s\nnonce:      %s\npublic_key: %s\n", orNone(c.UserData), orNone(c.Nonce), orNone(c.PublicKey))
	fmt.Fprintln(w, "certificates (leaf first):")
	for _, cert := range c.Certificates {
		fmt.Fprintf(w, "  %s  [%s .. %s]\n", cert.Subject, cert.NotBefore, cert.NotAfter)
	}
	verdict := "ACCEPTED"
	if !r.OK {
		verdict = "REJECTED"
	}
	fmt.Fprintf(w, "policy: %s\n", verdict)
	for _, ch := range r.Checks {
		if ch.OK {
			fmt.Fprintf(w, "  ok    %s\n", ch.Name)
		} else {
			fmt.Fprintf(w, "  FAIL  %s: %s\n", ch.Name, ch.Detail)
		}
	}
}
