package kms

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cloister/cloister/attest"
	"github.com/cloister/cloister/internal/jsonx"
	"github.com/cloister/cloister/kms/policy"
	"github.com/cloister/cloister/kms/sigv4"
	"github.com/cloister/cloister/kms/store"
)

// Defaults.
const (
	DefaultRegion            = "us-east-1"
	DefaultMaxAttestationAge = 5 * time.Minute
	DefaultMaxBodySize       = 1 << 20
	// MinRecipientRSABits is the smallest RSA key a Recipient may carry.
	MinRecipientRSABits = 2048
)

// Config configures a Server. Store and Credentials are required; every
// other field works at its zero value.
type Config struct {
	// Store holds keys, aliases and material.
	Store store.Store
	// Credentials are the accepted access keys (SigV4).
	Credentials *sigv4.Credentials
	// Region appears in key ARNs and, when RequireRegion, must be the
	// signing region. Default DefaultRegion.
	Region        string
	RequireRegion bool
	// Attestation verifies Recipient documents. Nil: a verifier trusting
	// only the AWS Nitro root.
	Attestation *attest.Verifier
	// MaxAttestationAge is the oldest Recipient document accepted (its
	// timestamp against the clock); default 5 minutes.
	MaxAttestationAge time.Duration
	// MaxBodySize bounds request bodies; default 1 MiB.
	MaxBodySize int64
	// Clock returns the current time; default time.Now.
	Clock func() time.Time
	// Rand is the randomness source; default crypto/rand.
	Rand io.Reader
	// Logger receives one audit line per decision and errors; default
	// slog.Default().
	Logger *slog.Logger
	// DenialRetention is how long the reasons of denied requests are kept
	// for `cloister kms explain --request-id`; default 24 hours.
	DenialRetention time.Duration
	// Registry receives the Prometheus metrics, also served at GET
	// /metrics; default a registry of the server's own (with the Go and
	// process collectors).
	Registry *prometheus.Registry
}

// Server is the AWS-KMS-compatible key service, an http.Handler speaking the
// KMS JSON 1.1 protocol (POST /, X-Amz-Target: TrentService.<Op>) with
// SigV4 authentication. Safe for concurrent use.
type Server struct {
	cfg    Config
	sig    *sigv4.Verifier
	attest *attest.Verifier
	log    *slog.Logger
	ops    map[string]opFunc
	m      *metrics
}

var _ http.Handler = (*Server)(nil)

// call is one authenticated request.
type call struct {
	ctx   context.Context
	op    string
	cred  sigv4.Credential
	body  []byte
	audit *auditRecord
	// grant is the grant that allowed the request, if one did.
	grant *store.Grant
}

type opFunc func(s *Server, c *call) (any, error)

// NewServer checks cfg and returns a Server.
func NewServer(cfg Config) (*Server, error) {
	if cfg.Store == nil {
		return nil, errors.New("kms: Config.Store is required")
	}
	if cfg.Region == "" {
		cfg.Region = DefaultRegion
	}
	if cfg.MaxAttestationAge <= 0 {
		cfg.MaxAttestationAge = DefaultMaxAttestationAge
	}
	if cfg.MaxBodySize <= 0 {
		cfg.MaxBodySize = DefaultMaxBodySize
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.DenialRetention <= 0 {
		cfg.DenialRetention = 24 * time.Hour
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	sc := sigv4.Config{Credentials: cfg.Credentials, Service: "kms", Clock: cfg.Clock}
	if cfg.RequireRegion {
		sc.Region = cfg.Region
	}
	sv, err := sigv4.NewVerifier(sc)
	if err != nil {
		return nil, fmt.Errorf("kms: %w", err)
	}
	av := cfg.Attestation
	if av == nil {
		if av, err = attest.NewVerifier(attest.VerifierConfig{}); err != nil {
			return nil, fmt.Errorf("kms: %w", err)
		}
	}
	m, err := newMetrics(cfg.Registry)
	if err != nil {
		return nil, fmt.Errorf("kms: metrics: %w", err)
	}
	s := &Server{cfg: cfg, sig: sv, attest: av, log: cfg.Logger, m: m}
	s.ops = map[string]opFunc{
		"CreateKey":                       (*Server).createKey,
		"DescribeKey":                     (*Server).describeKey,
		"ListKeys":                        (*Server).listKeys,
		"EnableKey":                       (*Server).enableKey,
		"DisableKey":                      (*Server).disableKey,
		"CreateAlias":                     (*Server).createAlias,
		"ListAliases":                     (*Server).listAliases,
		"DeleteAlias":                     (*Server).deleteAlias,
		"Encrypt":                         (*Server).encrypt,
		"Decrypt":                         (*Server).decrypt,
		"ReEncrypt":                       (*Server).reEncrypt,
		"GenerateDataKey":                 (*Server).generateDataKey,
		"GenerateDataKeyWithoutPlaintext": (*Server).generateDataKeyWithoutPlaintext,
		"GenerateRandom":                  (*Server).generateRandom,
		"GetKeyPolicy":                    (*Server).getKeyPolicy,
		"PutKeyPolicy":                    (*Server).putKeyPolicy,
		"EnableKeyRotation":               (*Server).enableKeyRotation,
		"DisableKeyRotation":              (*Server).disableKeyRotation,
		"GetKeyRotationStatus":            (*Server).getKeyRotationStatus,
		"RotateKeyOnDemand":               (*Server).rotateKeyOnDemand,
		"ScheduleKeyDeletion":             (*Server).scheduleKeyDeletion,
		"CancelKeyDeletion":               (*Server).cancelKeyDeletion,
		"CloisterExplain":                 (*Server).explain,
		// Asymmetric and HMAC keys.
		"Sign":                                (*Server).sign,
		"Verify":                              (*Server).verify,
		"GetPublicKey":                        (*Server).getPublicKey,
		"GenerateMac":                         (*Server).generateMac,
		"VerifyMac":                           (*Server).verifyMac,
		"GenerateDataKeyPair":                 (*Server).generateDataKeyPair,
		"GenerateDataKeyPairWithoutPlaintext": (*Server).generateDataKeyPairWithoutPlaintext,
		"DeriveSharedSecret":                  (*Server).deriveSharedSecret,
		// Tags, aliases, descriptions, lists.
		"TagResource":          (*Server).tagResource,
		"UntagResource":        (*Server).untagResource,
		"ListResourceTags":     (*Server).listResourceTags,
		"UpdateAlias":          (*Server).updateAlias,
		"UpdateKeyDescription": (*Server).updateKeyDescription,
		"ListKeyPolicies":      (*Server).listKeyPolicies,
		"ListKeyRotations":     (*Server).listKeyRotations,
		// Grants.
		"CreateGrant":         (*Server).createGrant,
		"ListGrants":          (*Server).listGrants,
		"ListRetirableGrants": (*Server).listRetirableGrants,
		"RetireGrant":         (*Server).retireGrant,
		"RevokeGrant":         (*Server).revokeGrant,
	}
	return s, nil
}

// ServeHTTP implements the JSON 1.1 protocol: POST to "/", X-Amz-Target
// "TrentService.<Op>", body ≤ MaxBodySize, SigV4 verified before the body
// is decoded, errors as {"__type": code, "message": text} with AWS's HTTP
// status (AccessDeniedException uses "Message", as AWS does). Every
// response carries x-amzn-RequestId. GET /metrics (Prometheus) and GET
// /healthz are served without authentication.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet {
		switch r.URL.Path {
		case "/metrics":
			s.m.handler.ServeHTTP(w, r)
			return
		case "/healthz":
			s.serveHealthz(w, r)
			return
		}
	}
	start := time.Now()
	reqID := uuid.NewString()
	w.Header().Set("x-amzn-RequestId", reqID)
	rw := &codeRecorder{ResponseWriter: w}
	w = rw
	opName := ""
	defer func() { s.m.observe(opName, rw.code, time.Since(start)) }()
	if r.Method != http.MethodPost || (r.URL.Path != "/" && r.URL.Path != "") {
		s.writeError(w, apiErr(CodeUnknownOperation, "only POST / with X-Amz-Target is served"))
		return
	}
	target := r.Header.Get("X-Amz-Target")
	name, ok := strings.CutPrefix(target, "TrentService.")
	op := s.ops[name]
	if !ok || op == nil {
		s.writeError(w, apiErr(CodeUnknownOperation, "unknown operation %q", target))
		return
	}
	opName = name
	body, err := io.ReadAll(io.LimitReader(r.Body, s.cfg.MaxBodySize+1))
	if err != nil {
		s.writeError(w, apiErr(CodeSerialization, "reading the request body: %v", err))
		return
	}
	if int64(len(body)) > s.cfg.MaxBodySize {
		s.writeError(w, apiErr(CodeValidation, "request body exceeds %d bytes", s.cfg.MaxBodySize))
		return
	}
	cred, err := s.sig.Verify(r, body)
	if err != nil {
		var se *sigv4.Error
		if errors.As(err, &se) {
			s.log.Warn("kms authentication failed", "op", opName, "code", se.Code, "reason", se.Message, "request_id", reqID)
			s.writeError(w, &APIError{Code: se.Code, Status: http.StatusBadRequest, Message: se.Message})
			return
		}
		s.writeError(w, apiErr(CodeInternal, "authentication: %v", err))
		return
	}
	c := &call{ctx: r.Context(), op: opName, cred: cred, body: body, audit: &auditRecord{requestID: reqID}}
	out, err := op(s, c)
	s.audit(c, err)
	switch c.audit.decision {
	case "":
	case "Allow":
		s.m.decision.WithLabelValues(opName, "allowed").Inc()
	default:
		s.m.decision.WithLabelValues(opName, "denied").Inc()
	}
	if err != nil {
		var ae *APIError
		if !errors.As(err, &ae) {
			s.log.Error("kms internal error", "op", opName, "err", err, "request_id", reqID)
			ae = apiErr(CodeInternal, "internal error (request %s)", reqID)
		}
		if ae.Code == CodeAccessDenied {
			ae = s.recordDenial(c, ae)
		}
		s.writeError(w, ae)
		return
	}
	b, err := json.Marshal(out)
	if err != nil {
		s.writeError(w, apiErr(CodeInternal, "encoding the response: %v", err))
		return
	}
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.WriteHeader(http.StatusOK)
	w.Write(b)
}

// codeRecorder remembers the error code a response carried, for metrics.
type codeRecorder struct {
	http.ResponseWriter
	code string
}

func (s *Server) writeError(w http.ResponseWriter, e *APIError) {
	if rw, ok := w.(*codeRecorder); ok {
		rw.code = e.Code
	}
	msgKey := "message"
	if e.Code == CodeAccessDenied {
		msgKey = "Message"
	}
	b, _ := json.Marshal(map[string]string{"__type": e.Code, msgKey: e.Message})
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.WriteHeader(e.Status)
	w.Write(b)
}

// decode unmarshals the request body into v: "" (or only whitespace) is an
// empty request; anything else must be one strict JSON value (internal/jsonx:
// valid UTF-8, no object with a repeated member name, however escaped,
// member names matched to fields case-sensitively) whose members have the
// right types. A member the operation does not define (AWS's input shape,
// plus the documented Cloister extensions) is a ValidationException, as on
// AWS; any other failure is SerializationException.
func decode(body []byte, v any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	if err := jsonx.Unmarshal(body, v, jsonx.Options{DisallowUnknownFields: true}); err != nil {
		var je *jsonx.Error
		if errors.Is(err, jsonx.ErrUnknownField) && errors.As(err, &je) {
			return apiErr(CodeValidation, "1 validation error detected: %s at %s is not a member of this operation's request", je.Msg, orTop(je.Path))
		}
		return apiErr(CodeSerialization, "cannot decode the request body: %v", err)
	}
	return nil
}

func orTop(path string) string {
	if path == "" {
		return "the top level"
	}
	return "'" + path + "'"
}

// auditRecord collects what the audit line reports.
type auditRecord struct {
	requestID string
	keyID     string // the key's ARN (or "src -> dst")
	keyUUID   string // the key whose policy decided
	action    string // the action the policy decided
	pcrs      map[string]string
	decision  string
	reason    string
	// explanation is the policy's statement-by-statement reasoning of the
	// last authorization.
	explanation *policy.Explanation
}

// audit logs one line per request: principal, op, key, PCRs presented,
// allowed/denied and the reason.
func (s *Server) audit(c *call, err error) {
	a := c.audit
	allowed := err == nil
	reason := a.reason
	if err != nil {
		var ae *APIError
		switch {
		case errors.As(err, &ae) && ae.Code == CodeAccessDenied && a.decision != "" && a.decision != "Allow":
			reason = ae.Code + ": " + a.reason // the policy's own reasoning
		case ae != nil:
			reason = ae.Code + ": " + ae.Message
		default:
			reason = err.Error()
		}
	}
	if reason == "" {
		reason = a.decision
	}
	attrs := []any{
		"request_id", a.requestID,
		"principal", c.cred.PrincipalARN,
		"op", c.op,
		"key", a.keyID,
		"allowed", allowed,
		"reason", reason,
	}
	if a.pcrs != nil {
		attrs = append(attrs, "pcrs", a.pcrs)
	}
	if !allowed && a.explanation != nil && a.decision != "Allow" {
		attrs = append(attrs, "explanation", a.explanation)
	}
	s.log.Info("kms decision", attrs...)
}

// recordDenial stores why an AccessDeniedException was returned, under the
// request id (best effort: a store failure is logged) and points the
// message at `cloister kms explain --request-id`.
func (s *Server) recordDenial(c *call, ae *APIError) *APIError {
	a := c.audit
	d := store.Denial{RequestID: a.requestID, At: s.now(), Account: c.cred.Account, Principal: c.cred.PrincipalARN,
		Action: a.action, KeyID: a.keyUUID, KeyARN: a.keyID, Reason: a.reason}
	if d.Action == "" {
		d.Action = "kms:" + c.op
	}
	if d.Reason == "" || a.decision == "Allow" {
		d.Reason = ae.Message
	}
	if a.explanation != nil && a.decision != "Allow" {
		d.Explanation, _ = json.Marshal(a.explanation)
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(c.ctx), 2*time.Second)
	defer cancel()
	if err := s.cfg.Store.PutDenial(ctx, d); err != nil {
		s.log.Error("kms: recording a denial failed", "request_id", a.requestID, "err", err)
		return ae
	}
	out := *ae
	out.Message += " (request " + a.requestID + "; `cloister kms explain --request-id " + a.requestID + "` shows why)"
	return &out
}
