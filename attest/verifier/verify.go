package verifier

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/cloister/cloister/attest"
)

// Media types of POST /v1/verify bodies. Every type except JSON carries the
// document itself: raw CBOR, or hex or base64 text (auto-detected by
// attest.DecodeEvidence).
const (
	MediaTypeNitroEvidence = "application/vnd.aws.nitro.attestation+cbor" // raw CBOR COSE_Sign1 (also the session evidence type)
	MediaTypeJSON          = "application/json"                           // the VerifyRequest envelope; also the response type
)

var evidenceMediaTypes = []string{
	MediaTypeNitroEvidence, "application/cbor", "application/cose", "application/octet-stream", "text/plain",
}

// VerifyRequest is the JSON envelope of POST /v1/verify.
type VerifyRequest struct {
	// Evidence is the attestation document: base64 (standard or URL
	// alphabet, padding optional) or hex.
	Evidence string `json:"evidence"`
	// Policy is a policy name (a JSON string) or an inline [PolicySpec]
	// (a JSON object); absent = the server's default policy.
	Policy json.RawMessage `json:"policy,omitempty"`
	// Nonce is the expected document nonce in hex.
	Nonce string `json:"nonce,omitempty"`
	// Challenge requires the document nonce to be an unused, unexpired
	// challenge from POST /v1/challenges (it is then consumed).
	Challenge bool `json:"challenge,omitempty"`
	// Time is the verification time (RFC 3339); only with the server's
	// time override enabled.
	Time string `json:"time,omitempty"`
}

// Check is the outcome of one check in a [VerifyResponse].
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
}

// VerifyResponse is the body of a 200 response to POST /v1/verify.
type VerifyResponse struct {
	// Verdict is the EAR status: affirming, warning, contraindicated.
	Verdict string `json:"verdict"`
	// Policy is the appraisal policy id (ear.appraisal-policy-id).
	Policy string `json:"policy"`
	// VerifiedAt is the time certificates were checked at (RFC 3339).
	VerifiedAt string `json:"verified_at"`
	// Claims is exactly `cloister verify --json`'s object; null when the
	// signature or the certificate chain did not verify.
	Claims *attest.Claims `json:"claims"`
	// Checks lists every check: certificate_chain, signature, then the
	// policy's (debug, pcrN, nonce, user_data, public_key, max_age) and
	// challenge.
	Checks      []Check     `json:"checks"`
	TrustVector TrustVector `json:"trust_vector"`
	// Token is the EAR as a JWT signed by a key of /.well-known/jwks.json.
	Token string `json:"token"`
}

// requestError is a client error mapped to a problem response.
type requestError struct {
	status int
	slug   string
	detail string
}

func (e *requestError) Error() string { return e.detail }

func badRequest(slug, format string, a ...any) *requestError {
	return &requestError{status: http.StatusBadRequest, slug: slug, detail: fmt.Sprintf(format, a...)}
}

// appraisalRequest is a decoded, validated verification request.
type appraisalRequest struct {
	doc       []byte
	pol       *policy
	nonce     []byte // expected nonce from the request or session; nil = the policy's
	challenge bool   // the request demands a server challenge
	at        time.Time
	override  bool // at is set
}

// readBody reads the request body within the configured limit.
func readBody(r *http.Request) ([]byte, *requestError) {
	var b []byte
	var err error
	if n := r.ContentLength; n > 0 && n <= DefaultMaxBodyBytes {
		// Sized by Content-Length (the MaxBytesReader still enforces the
		// configured limit); a body shorter than announced is an error.
		b = make([]byte, n)
		_, err = io.ReadFull(r.Body, b)
	} else {
		b, err = io.ReadAll(r.Body)
	}
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, &requestError{status: http.StatusRequestEntityTooLarge, slug: "too-large",
				detail: fmt.Sprintf("request body exceeds %d bytes", mbe.Limit)}
		}
		return nil, badRequest("bad-body", "reading the request body: %v", err)
	}
	return b, nil
}

// decodeVerify turns a POST /v1/verify request into an appraisalRequest.
// It never verifies anything.
func (s *Server) decodeVerify(contentType string, query url.Values, body []byte) (*appraisalRequest, *requestError) {
	mt := ""
	if contentType != "" {
		var err error
		if mt, _, err = mime.ParseMediaType(contentType); err != nil {
			return nil, badRequest("bad-content-type", "Content-Type %q: %v", contentType, err)
		}
	}
	if mt == MediaTypeJSON {
		if len(query) != 0 {
			return nil, badRequest("bad-query", "with a JSON body, give the options in the envelope, not the query string")
		}
		var env VerifyRequest
		if err := strictJSON(body, &env); err != nil {
			return nil, badRequest("bad-json", "JSON envelope: %v (want {\"evidence\": \"<base64>\", \"policy\": ..., \"nonce\": \"<hex>\", \"challenge\": bool, \"time\": \"<RFC 3339>\"})", err)
		}
		if env.Evidence == "" {
			return nil, badRequest("bad-evidence", "JSON envelope: evidence is empty")
		}
		return s.buildRequest([]byte(env.Evidence), env.Policy, env.Nonce, env.Challenge, env.Time)
	}
	if mt != "" && !slices.Contains(evidenceMediaTypes, mt) {
		return nil, &requestError{status: http.StatusUnsupportedMediaType, slug: "unsupported-media-type",
			detail: fmt.Sprintf("Content-Type %s is not supported; use %s or %s", mt, strings.Join(evidenceMediaTypes, ", "), MediaTypeJSON)}
	}
	for k := range query {
		switch k {
		case "policy", "nonce", "challenge", "time":
		default:
			return nil, badRequest("bad-query", "unknown query parameter %q (known: policy, nonce, challenge, time)", k)
		}
	}
	for k, v := range query {
		if len(v) > 1 {
			return nil, badRequest("bad-query", "query parameter %q given %d times", k, len(v))
		}
	}
	var pol json.RawMessage
	if name := query.Get("policy"); name != "" {
		pol, _ = json.Marshal(name)
	}
	challenge := false
	switch query.Get("challenge") {
	case "", "false", "0":
	case "true", "1":
		challenge = true
	default:
		return nil, badRequest("bad-query", "challenge=%q: want true or false", query.Get("challenge"))
	}
	return s.buildRequest(body, pol, query.Get("nonce"), challenge, query.Get("time"))
}

func (s *Server) buildRequest(evidence []byte, polRaw json.RawMessage, nonceHex string, challenge bool, at string) (*appraisalRequest, *requestError) {
	doc, err := attest.DecodeEvidence(evidence)
	if err != nil {
		return nil, evidenceError(err)
	}
	req := &appraisalRequest{doc: doc, challenge: challenge}
	if req.pol, err = s.resolvePolicy(polRaw); err != nil {
		var re *requestError
		if errors.As(err, &re) {
			return nil, re
		}
		return nil, badRequest("bad-policy", "%v", err)
	}
	if nonceHex != "" {
		b, err := hex.DecodeString(nonceHex)
		if err != nil || len(b) > attest.MaxFieldSize {
			return nil, badRequest("bad-nonce", "nonce: want 1..%d bytes of hex", attest.MaxFieldSize)
		}
		if req.challenge || req.pol.challenge {
			return nil, badRequest("bad-nonce", "nonce and challenge are exclusive: a challenge is checked against the nonces this server issued")
		}
		if req.pol.attest.Nonce != nil && !bytes.Equal(req.pol.attest.Nonce, b) {
			return nil, badRequest("bad-nonce", "nonce conflicts with the nonce fixed by policy %s", req.pol.id)
		}
		req.nonce = b
	}
	if at != "" {
		if !s.cfg.AllowTimeOverride {
			return nil, badRequest("time-override-disabled", "this verifier does not accept a verification time (start it with --allow-time-override)")
		}
		t, err := time.Parse(time.RFC3339Nano, at)
		if err != nil {
			return nil, badRequest("bad-time", "time %q: want RFC 3339, e.g. 2022-11-09T23:00:00Z", at)
		}
		req.at, req.override = t, true
	}
	return req, nil
}

// evidenceError maps a DecodeEvidence or parse failure to a 4xx.
func evidenceError(err error) *requestError {
	if errors.Is(err, attest.ErrTooLarge) {
		return &requestError{status: http.StatusRequestEntityTooLarge, slug: "too-large", detail: err.Error()}
	}
	return badRequest("bad-evidence", "%v (the evidence must be an NSM attestation document: raw CBOR COSE_Sign1, hex or base64)", err)
}

// resolvePolicy returns the named, inline or default policy.
func (s *Server) resolvePolicy(raw json.RawMessage) (*policy, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		if s.defaultPolicy == "" {
			return nil, badRequest("no-policy", "no default policy is configured: name one of %s or give one inline", s.policyNames())
		}
		return s.policies[s.defaultPolicy], nil
	}
	switch raw[0] {
	case '"':
		var name string
		if err := json.Unmarshal(raw, &name); err != nil {
			return nil, badRequest("bad-policy", "policy: %v", err)
		}
		return s.namedPolicy(name)
	case '{':
		var spec PolicySpec
		if err := strictJSON(raw, &spec); err != nil {
			return nil, badRequest("bad-policy", "inline policy: %v", err)
		}
		p, err := compile(spec, s.roots, inlinePolicyID(spec))
		if err != nil {
			return nil, badRequest("bad-policy", "inline policy: %v", err)
		}
		return p, nil
	}
	return nil, badRequest("bad-policy", "policy: want a policy name (string) or an inline policy (object)")
}

func (s *Server) namedPolicy(name string) (*policy, error) {
	p, ok := s.policies[name]
	if !ok {
		return nil, badRequest("unknown-policy", "policy %q is not defined (defined: %s)", name, s.policyNames())
	}
	return p, nil
}

func (s *Server) policyNames() string {
	var n []string
	for k := range s.policies {
		n = append(n, k)
	}
	slices.Sort(n)
	return strings.Join(n, ", ")
}

// verdictFor classifies a Verify error: the check that failed, the metrics
// reason and the trust vector.
func verdictFor(err error) (check, reason string, tv TrustVector) {
	crypto := TrustVector{InstanceIdentity: ClaimCryptoValidationFail, Hardware: ClaimCryptoValidationFail}
	switch {
	case errors.Is(err, attest.ErrSignature):
		return "signature", "signature", crypto
	case errors.Is(err, attest.ErrUntrustedRoot):
		return "certificate_chain", "untrusted_root", TrustVector{InstanceIdentity: ClaimUnrecognized, Hardware: ClaimUnrecognized}
	case errors.Is(err, attest.ErrExpired):
		return "certificate_chain", "expired", crypto
	case errors.Is(err, attest.ErrNotYetValid):
		return "certificate_chain", "not_yet_valid", crypto
	case errors.Is(err, attest.ErrUnsupportedAlgorithm):
		return "certificate_chain", "unsupported_algorithm", crypto
	case errors.Is(err, attest.ErrChain):
		return "certificate_chain", "chain", crypto
	}
	return "certificate_chain", "verification", crypto
}

// unhex decodes a hex claim of attest.Claims (nil for an absent field).
func unhex(s *string) []byte {
	if s == nil {
		return nil
	}
	b, err := hex.DecodeString(*s)
	if err != nil { // attest writes valid hex: cannot happen
		return nil
	}
	return b
}

// errServiceFault marks an appraisal failure that is the server's fault.
var errServiceFault = errors.New("verifier: service fault")

// appraise verifies req.doc, applies the policy, consumes a challenge when
// one is demanded and signs the EAR. A malformed document is a
// *requestError; anything else but errServiceFault yields a response.
func (s *Server) appraise(ctx context.Context, req *appraisalRequest, issuer string) (*VerifyResponse, *EAR, error) {
	start := time.Now()
	now := s.cfg.Clock()
	at := now
	if req.override {
		at = req.at
	}
	resp := &VerifyResponse{Policy: req.pol.id, VerifiedAt: at.UTC().Format(time.RFC3339Nano)}
	ap := Appraisal{PolicyID: req.pol.id}
	ear := &EAR{
		Profile:    EATProfile,
		IssuedAt:   now.Unix(),
		Expiry:     now.Add(s.cfg.TokenTTL).Unix(),
		Issuer:     issuer,
		ID:         uuid.NewString(),
		VerifierID: VerifierID{Build: s.cfg.Build, Developer: VerifierDeveloper},
	}
	var (
		tv      TrustVector
		reason  = "ok"
		problem string
	)
	v, err := req.pol.trust.v.Verify(req.doc, at)
	if err != nil {
		if errors.Is(err, attest.ErrMalformed) || errors.Is(err, attest.ErrTooLarge) {
			return nil, nil, evidenceError(err)
		}
		var check string
		check, reason, tv = verdictFor(err)
		resp.Checks = []Check{{Name: check, Detail: err.Error()}}
		problem = err.Error()
	} else {
		chain := v.Chain()
		root := chain[len(chain)-1]
		pol := req.pol.attest
		if req.nonce != nil {
			pol.Nonce = req.nonce
		}
		report := pol.Report(v, at)
		claims := v.Claims()
		claims.Policy = &report
		docNonce, docPublicKey := unhex(claims.Nonce), unhex(claims.PublicKey)
		resp.Checks = append(resp.Checks,
			Check{Name: "certificate_chain", OK: true, Detail: "root " + claims.Certificates[len(claims.Certificates)-1].Subject},
			Check{Name: "signature", OK: true})
		resp.Claims = &claims
		failed := map[string]bool{}
		for _, c := range report.Checks {
			resp.Checks = append(resp.Checks, Check{Name: c.Name, OK: c.OK, Detail: c.Detail})
		}
		if req.challenge || req.pol.challenge {
			c := Check{Name: "challenge", OK: true}
			var cerr error
			if docNonce == nil {
				cerr = errors.New("document has no nonce, want a challenge issued by POST /v1/challenges")
			} else if cerr = s.store.consumeChallenge(ctx, docNonce, now); cerr != nil {
				if !errors.Is(cerr, ErrUnknownChallenge) && !errors.Is(cerr, ErrChallengeUsed) && !errors.Is(cerr, ErrChallengeExpired) {
					return nil, nil, fmt.Errorf("%w: challenge store: %w", errServiceFault, cerr)
				}
				cerr = fmt.Errorf("document nonce: %w", cerr)
			}
			if cerr != nil {
				c.OK, c.Detail = false, cerr.Error()
			}
			resp.Checks = append(resp.Checks, c)
		}
		for _, c := range resp.Checks {
			if !c.OK {
				name := c.Name
				if strings.HasPrefix(name, "pcr") {
					name = "pcr"
				}
				failed[name] = true
				if problem == "" {
					problem, reason = c.Detail, name
				}
			}
		}
		tv = TrustVector{InstanceIdentity: ClaimTrustworthyInstance, Hardware: ClaimGenuineHardware, Configuration: ClaimApproved}
		if failed["nonce"] || failed["challenge"] || failed["max_age"] || failed["user_data"] || failed["public_key"] {
			tv.InstanceIdentity = ClaimUntrustworthy
		}
		if !isAWSRoot(root) {
			tv.Hardware = ClaimUnsafe
		}
		switch {
		case failed["debug"]:
			tv.Configuration = ClaimUntrustworthy
		case v.Debug():
			tv.Configuration = ClaimUnsafe
		}
		if failed["pcr"] {
			tv.Executables = ClaimUntrustworthy
		} else if len(pol.PCRs) > 0 {
			tv.Executables = ClaimApproved
		}
		ap.Evidence = nitroEvidence(claims)
		ap.KeyAttestation = keyAttestation(docPublicKey)
		ear.Nonce = eatNonce(docNonce)
	}
	if req.nonce != nil { // the relying party's nonce, as Veraison sessions do
		ear.Nonce = eatNonce(req.nonce)
	}
	ap.TrustVector = tv
	ap.Status = tv.Status()
	if problem != "" {
		pc := &PolicyClaims{Problem: problem}
		for _, c := range resp.Checks {
			if !c.OK {
				pc.Failed = append(pc.Failed, c)
			}
		}
		ap.PolicyClaims = pc
	}
	ear.Submods = map[string]Appraisal{SubmodName: ap}
	resp.Verdict = ap.Status
	resp.TrustVector = tv
	tok, err := s.keys.sign(ear, now)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", errServiceFault, err)
	}
	resp.Token = tok
	s.m.verdicts.WithLabelValues(resp.Verdict, reason).Inc()
	s.m.appraise.Observe(time.Since(start).Seconds())
	return resp, ear, nil
}

func (s *Server) handleVerify(w http.ResponseWriter, r *http.Request) {
	body, rerr := readBody(r)
	if rerr != nil {
		s.problem(w, r, rerr.status, rerr.slug, rerr.detail)
		return
	}
	req, rerr := s.decodeVerify(r.Header.Get("Content-Type"), r.URL.Query(), body)
	if rerr != nil {
		if rerr.status == http.StatusUnsupportedMediaType {
			w.Header().Set("Accept", strings.Join(append(slices.Clone(evidenceMediaTypes), MediaTypeJSON), ", "))
		}
		s.problem(w, r, rerr.status, rerr.slug, rerr.detail)
		return
	}
	resp, _, err := s.appraise(r.Context(), req, s.issuer(r))
	if err != nil {
		s.appraisalError(w, r, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, MediaTypeJSON, resp)
}

func (s *Server) appraisalError(w http.ResponseWriter, r *http.Request, err error) {
	var re *requestError
	if errors.As(err, &re) {
		s.problem(w, r, re.status, re.slug, re.detail)
		return
	}
	s.problem(w, r, http.StatusInternalServerError, "internal", err.Error())
}

// Challenge is the body of a 201 response to POST /v1/challenges.
type Challenge struct {
	Nonce       string `json:"nonce"`        // hex: pass these bytes to the NSM as the nonce
	NonceBase64 string `json:"nonce_base64"` // the same bytes, standard base64
	ExpiresAt   string `json:"expires_at"`   // RFC 3339
	TTLSeconds  int64  `json:"ttl_seconds"`
}

// ChallengeRequest is the optional JSON body of POST /v1/challenges.
type ChallengeRequest struct {
	Size int `json:"size,omitempty"` // nonce length in bytes, 8..64 (default 32)
}

func (s *Server) handleNewChallenge(w http.ResponseWriter, r *http.Request) {
	body, rerr := readBody(r)
	if rerr != nil {
		s.problem(w, r, rerr.status, rerr.slug, rerr.detail)
		return
	}
	size := DefaultChallengeSize
	if len(bytes.TrimSpace(body)) > 0 {
		var cr ChallengeRequest
		if err := strictJSON(body, &cr); err != nil {
			s.problem(w, r, http.StatusBadRequest, "bad-json", fmt.Sprintf("challenge request: %v (want {\"size\": 8..64} or an empty body)", err))
			return
		}
		if cr.Size != 0 {
			size = cr.Size
		}
	}
	if size < 8 || size > 64 {
		s.problem(w, r, http.StatusBadRequest, "bad-size", fmt.Sprintf("size %d: want 8..64 bytes", size))
		return
	}
	client := s.clientOf.of(r)
	nonce, exp, err := s.newNonce(size, func(n []byte, now time.Time) (time.Time, bool, error) {
		exp := now.Add(s.cfg.ChallengeTTL)
		if err := s.limiter.admit(client, holdChallenge, now, exp); err != nil {
			return time.Time{}, false, err
		}
		ok, err := s.store.issueChallenge(r.Context(), n, client, now, exp)
		if err != nil || !ok {
			s.limiter.release(client, holdChallenge, exp)
			return time.Time{}, ok, err
		}
		return exp, true, nil
	})
	if err != nil {
		s.storeError(w, r, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusCreated, MediaTypeJSON, Challenge{
		Nonce:       hex.EncodeToString(nonce),
		NonceBase64: b64std(nonce),
		ExpiresAt:   exp.UTC().Format(time.RFC3339Nano),
		TTLSeconds:  int64(s.cfg.ChallengeTTL / time.Second),
	})
}

// newNonce draws random nonces until add accepts one (a collision of
// random nonces practically never happens; three tries bound it).
func (s *Server) newNonce(size int, add func([]byte, time.Time) (time.Time, bool, error)) ([]byte, time.Time, error) {
	for range 3 {
		n := make([]byte, size)
		if _, err := io.ReadFull(s.cfg.Rand, n); err != nil {
			return nil, time.Time{}, fmt.Errorf("%w: random nonce: %w", errServiceFault, err)
		}
		exp, ok, err := add(n, s.cfg.Clock())
		if err != nil {
			return nil, time.Time{}, err
		}
		if ok {
			return n, exp, nil
		}
	}
	return nil, time.Time{}, fmt.Errorf("%w: random nonces collide", errServiceFault)
}

func (s *Server) storeError(w http.ResponseWriter, r *http.Request, err error) {
	var le *LimitError
	if errors.As(err, &le) {
		s.m.limited.WithLabelValues(le.Reason).Inc()
		w.Header().Set("Retry-After", strconv.FormatInt(int64(max(1, math.Ceil(le.RetryAfter.Seconds()))), 10))
		s.problem(w, r, http.StatusTooManyRequests, "client-limit", err.Error())
		return
	}
	if errors.Is(err, ErrStoreFull) {
		w.Header().Set("Retry-After", "10")
		s.problem(w, r, http.StatusTooManyRequests, "too-many", err.Error()+"; retry later")
		return
	}
	s.problem(w, r, http.StatusInternalServerError, "internal", err.Error())
}
