package verifier

import (
	"context"
	"encoding/base64"
	"errors"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
)

// Veraison challenge-response API (nitro-reference §13.a2).
const (
	// MediaTypeSession is the required Accept type of the session API.
	MediaTypeSession = "application/vnd.veraison.challenge-response-session+json"
	// MediaTypeDiscovery is the media type of the discovery document.
	MediaTypeDiscovery = "application/vnd.veraison.discovery+json"
	// AttestationScheme names this verifier's only scheme in discovery.
	AttestationScheme = "AWS_NITRO"
	sessionPathPrefix = "/challenge-response/v1/session/"
)

// sessionMediaTypes are the evidence types a session accepts: the Nitro
// document as raw CBOR (untagged or tag 18 COSE_Sign1).
var sessionMediaTypes = []string{MediaTypeNitroEvidence, "application/cose"}

// Session is a Veraison challenge-response session resource.
type Session struct {
	Status   string           `json:"status"` // waiting, processing, complete, failed
	Nonce    string           `json:"nonce"`  // standard base64, as Veraison's []byte field
	Expiry   string           `json:"expiry"` // RFC 3339
	Accept   []string         `json:"accept"`
	Evidence *SessionEvidence `json:"evidence,omitempty"`
	Result   *string          `json:"result,omitempty"` // the EAR JWT
}

// SessionEvidence is the evidence submitted to a session.
type SessionEvidence struct {
	Type  string `json:"type"`  // media type
	Value string `json:"value"` // standard base64
}

type session struct {
	client   string // who created it (clientIdentity), for the per-client limits
	nonce    []byte
	policy   *policy
	status   string
	evidence *SessionEvidence
	result   *string
}

// sessionStore is the in-process store of sessions.
type sessionStore struct {
	s *ttlStore[*session]
}

func newSessionStore(max int, ttl time.Duration) *sessionStore {
	return &sessionStore{s: newTTLStore[*session](max, ttl)}
}

func b64std(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// decodeB64 accepts base64 in the URL or standard alphabet, padded or not.
func decodeB64(s string) ([]byte, bool) {
	t := strings.TrimRight(s, "=")
	for _, enc := range []*base64.Encoding{base64.RawURLEncoding, base64.RawStdEncoding} {
		if b, err := enc.DecodeString(t); err == nil {
			return b, true
		}
	}
	return nil, false
}

// acceptsSession reports whether the Accept header admits the session type.
func acceptsSession(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept"), ",") {
		mt, _, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err == nil && mt == MediaTypeSession {
			return true
		}
	}
	return false
}

func (s *Server) requireSessionAccept(w http.ResponseWriter, r *http.Request) bool {
	if acceptsSession(r) {
		return true
	}
	s.problem(w, r, http.StatusNotAcceptable, "not-acceptable", "the Accept header must include "+MediaTypeSession)
	return false
}

func (s *Server) sessionView(sess *session, expires time.Time) Session {
	return Session{
		Status:   sess.status,
		Nonce:    b64std(sess.nonce),
		Expiry:   expires.UTC().Format(time.RFC3339Nano),
		Accept:   slices.Clone(sessionMediaTypes),
		Evidence: sess.evidence,
		Result:   sess.result,
	}
}

// handleNewSession: POST /challenge-response/v1/newSession?nonce=|nonceSize=[&policy=]
func (s *Server) handleNewSession(w http.ResponseWriter, r *http.Request) {
	if !s.requireSessionAccept(w, r) {
		return
	}
	q := r.URL.Query()
	for k, v := range q {
		if k != "nonce" && k != "nonceSize" && k != "policy" {
			s.problem(w, r, http.StatusBadRequest, "bad-query", "unknown query parameter "+strconv.Quote(k)+" (known: nonce, nonceSize, policy)")
			return
		}
		if len(v) != 1 {
			s.problem(w, r, http.StatusBadRequest, "bad-query", "query parameter "+strconv.Quote(k)+" must be given once")
			return
		}
	}
	if q.Has("nonce") && q.Has("nonceSize") {
		s.problem(w, r, http.StatusBadRequest, "bad-nonce", "nonce and nonceSize are mutually exclusive")
		return
	}
	pol, err := s.resolvePolicy(nil)
	if name := q.Get("policy"); name != "" {
		pol, err = s.namedPolicy(name)
	}
	if err != nil {
		s.appraisalError(w, r, err)
		return
	}
	if pol.challenge || pol.attest.Nonce != nil {
		s.problem(w, r, http.StatusBadRequest, "bad-policy", "policy "+pol.id+" fixes its own nonce or challenge; a session supplies the nonce")
		return
	}
	sess := &session{client: s.clientOf.of(r), policy: pol, status: "waiting"}
	var id string
	var exp time.Time
	add := func(n []byte, now time.Time) (time.Time, bool, error) {
		exp := now.Add(s.cfg.SessionTTL)
		if err := s.limiter.admit(sess.client, holdSession, now, exp); err != nil {
			return time.Time{}, false, err
		}
		id = uuid.NewString()
		sess.nonce = n
		ok, err := s.store.addSession(r.Context(), id, sess, now, exp)
		if err != nil || !ok {
			s.limiter.release(sess.client, holdSession, exp)
			return time.Time{}, ok, err
		}
		return exp, true, nil
	}
	switch {
	case q.Has("nonce"):
		n, ok := decodeB64(q.Get("nonce"))
		if !ok || len(n) < 8 || len(n) > 64 {
			s.problem(w, r, http.StatusBadRequest, "bad-nonce", "nonce: want 8..64 bytes in base64url")
			return
		}
		e, ok, err := add(n, s.cfg.Clock())
		if err != nil {
			s.storeError(w, r, err)
			return
		}
		if !ok {
			s.problem(w, r, http.StatusInternalServerError, "internal", "session id collision")
			return
		}
		exp = e
	default:
		size := DefaultChallengeSize
		if q.Has("nonceSize") {
			n, err := strconv.Atoi(q.Get("nonceSize"))
			if err != nil || n < 8 || n > 64 {
				s.problem(w, r, http.StatusBadRequest, "bad-nonce", "nonceSize: want 8..64")
				return
			}
			size = n
		}
		if _, exp, err = s.newNonce(size, add); err != nil {
			s.storeError(w, r, err)
			return
		}
	}
	w.Header().Set("Location", "session/"+id)
	writeJSON(w, http.StatusCreated, MediaTypeSession, s.sessionView(sess, exp))
}

func sessionID(r *http.Request) (string, bool) {
	id := r.PathValue("id")
	u, err := uuid.Parse(id)
	if err != nil || u.String() != id {
		return "", false
	}
	return id, true
}

func (s *Server) handleGetSession(w http.ResponseWriter, r *http.Request) {
	if !s.requireSessionAccept(w, r) {
		return
	}
	id, ok := sessionID(r)
	if !ok {
		s.problem(w, r, http.StatusBadRequest, "bad-id", "session id must be a UUID")
		return
	}
	sess, exp, err := s.store.getSession(r.Context(), id, s.cfg.Clock())
	if errors.Is(err, ErrUnknownSession) {
		s.problem(w, r, http.StatusNotFound, "unknown-session", "no session "+id+" (never created, deleted or expired)")
		return
	}
	if err != nil {
		s.storeError(w, r, err)
		return
	}
	view := s.sessionView(sess, exp)
	writeJSON(w, http.StatusOK, MediaTypeSession, view)
}

func (s *Server) handleDeleteSession(w http.ResponseWriter, r *http.Request) {
	id, ok := sessionID(r)
	if !ok {
		s.problem(w, r, http.StatusBadRequest, "bad-id", "session id must be a UUID")
		return
	}
	sess, exp, err := s.store.deleteSession(r.Context(), id, s.cfg.Clock())
	if errors.Is(err, ErrUnknownSession) {
		s.problem(w, r, http.StatusNotFound, "unknown-session", "no session "+id)
		return
	}
	if err != nil {
		s.storeError(w, r, err)
		return
	}
	s.limiter.release(sess.client, holdSession, exp)
	w.WriteHeader(http.StatusNoContent)
}

// handlePostSession appraises evidence against the session nonce and
// completes the session synchronously (200). A session takes evidence once:
// a second submission gets 409.
func (s *Server) handlePostSession(w http.ResponseWriter, r *http.Request) {
	if !s.requireSessionAccept(w, r) {
		return
	}
	id, ok := sessionID(r)
	if !ok {
		s.problem(w, r, http.StatusBadRequest, "bad-id", "session id must be a UUID")
		return
	}
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || !slices.Contains(sessionMediaTypes, mt) {
		w.Header().Set("Accept", strings.Join(sessionMediaTypes, ", "))
		s.problem(w, r, http.StatusUnsupportedMediaType, "unsupported-media-type",
			"evidence Content-Type must be one of "+strings.Join(sessionMediaTypes, ", "))
		return
	}
	body, rerr := readBody(r)
	if rerr != nil {
		s.problem(w, r, rerr.status, rerr.slug, rerr.detail)
		return
	}
	if len(body) == 0 {
		s.problem(w, r, http.StatusBadRequest, "bad-evidence", "empty evidence")
		return
	}
	// Claim the session: waiting -> processing, atomically.
	ctx := r.Context()
	sess, exp, err := s.store.claimSession(ctx, id, s.cfg.Clock())
	switch {
	case err == nil:
	case errors.Is(err, ErrUnknownSession):
		s.problem(w, r, http.StatusNotFound, "unknown-session", "no session "+id+" (never created, deleted or expired)")
		return
	case errors.Is(err, ErrSessionUsed):
		s.problem(w, r, http.StatusConflict, "session-used", "session "+id+": "+err.Error()+"; a session accepts evidence once")
		return
	default:
		s.storeError(w, r, err)
		return
	}
	release := func() { // back to waiting so that the client may retry
		if err := s.store.unclaimSession(context.WithoutCancel(ctx), id); err != nil {
			s.cfg.Logger.Error("verifier: release session", "id", id, "err", err)
		}
	}
	if len(body) > 0 && body[0] != 0x84 && body[0] != 0xd2 {
		release()
		s.problem(w, r, http.StatusBadRequest, "bad-evidence", "evidence must be a raw CBOR COSE_Sign1 (first byte 0x84 or 0xd2)")
		return
	}
	resp, _, err := s.appraise(ctx, &appraisalRequest{doc: body, pol: sess.policy, nonce: sess.nonce}, s.issuer(r))
	if err != nil {
		release()
		s.appraisalError(w, r, err)
		return
	}
	sess.status = "complete"
	sess.evidence = &SessionEvidence{Type: mt, Value: b64std(body)}
	sess.result = &resp.Token
	if err := s.store.completeSession(context.WithoutCancel(ctx), id, sess.evidence, resp.Token); err != nil {
		s.storeError(w, r, err)
		return
	}
	view := s.sessionView(sess, exp)
	writeJSON(w, http.StatusOK, MediaTypeSession, view)
}

// Discovery is the document served at /.well-known/veraison/verification.
type Discovery struct {
	EARVerificationKey JWK               `json:"ear-verification-key"`
	MediaTypes         []string          `json:"media-types"`
	AttestationSchemes []string          `json:"attestation-schemes"`
	Version            string            `json:"version"`
	ServiceState       string            `json:"service-state"`
	APIEndpoints       map[string]string `json:"api-endpoints"`
}

func (s *Server) handleVeraisonDiscovery(w http.ResponseWriter, r *http.Request) {
	now := s.cfg.Clock()
	k, err := s.keys.current(now)
	if err != nil {
		s.problem(w, r, http.StatusInternalServerError, "internal", err.Error())
		return
	}
	state := "READY"
	if !s.ready.Load() {
		state = "TERMINATING"
	}
	ct := MediaTypeDiscovery
	if !strings.Contains(r.Header.Get("Accept"), MediaTypeDiscovery) {
		ct = MediaTypeJSON
	}
	w.Header().Set("Cache-Control", "max-age=60")
	w.Header().Set("Expires", now.Add(time.Minute).UTC().Format(http.TimeFormat))
	writeJSON(w, http.StatusOK, ct, Discovery{
		EARVerificationKey: k.jwk,
		MediaTypes:         slices.Clone(sessionMediaTypes),
		AttestationSchemes: []string{AttestationScheme},
		Version:            s.cfg.Build,
		ServiceState:       state,
		APIEndpoints: map[string]string{
			"newChallengeResponseSession": "/challenge-response/v1/newSession",
			"verify":                      "/v1/verify",
			"challenges":                  "/v1/challenges",
			"jwks":                        "/.well-known/jwks.json",
		},
	})
}
