package verifier

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Defaults of [Config].
const (
	DefaultKeyRotation   = 24 * time.Hour    // lifetime of a generated signing key
	DefaultTokenTTL      = time.Hour         // exp − iat of a token
	DefaultChallengeTTL  = 5 * time.Minute   // lifetime of a POST /v1/challenges nonce
	DefaultMaxChallenges = 100000            // challenges held at once
	DefaultSessionTTL    = 150 * time.Second // Veraison session lifetime (2m30s, as Veraison)
	DefaultMaxSessions   = 10000             // Veraison sessions held at once
	DefaultMaxBodyBytes  = 128 << 10         // request body limit
	DefaultChallengeSize = 32                // nonce bytes when the client names no size
)

// Config configures a [Server]. The zero value trusts the AWS Nitro root
// only, applies the built-in "default" policy (any non-debug verified
// document), signs ES256 tokens with a generated key rotated daily, and
// logs nothing.
type Config struct {
	// Roots are trusted in addition to the AWS root (unless NoAWSRoot).
	Roots     []Root
	NoAWSRoot bool
	// Policies are the named policies; nil means one built-in policy
	// named "default" (a zero [PolicySpec]).
	Policies *PolicyFile
	// AllowTimeOverride lets a request choose the verification time
	// (testing, forensics). Off: a request naming a time gets 400.
	AllowTimeOverride bool
	// SigningKey signs the tokens (P-256 → ES256, P-384 → ES384) and is
	// never rotated. Nil: a key on SigningCurve is generated and replaced
	// every KeyRotation.
	SigningKey   *ecdsa.PrivateKey
	SigningCurve elliptic.Curve // default P-256
	// KeyRotation is the lifetime of a generated signing key (default
	// DefaultKeyRotation; negative: never rotate). A replaced key stays in
	// the JWKS until every token it signed has expired.
	KeyRotation time.Duration
	// TokenTTL is exp − iat of the tokens (default DefaultTokenTTL).
	TokenTTL time.Duration
	// Issuer is the iss claim and the OpenID issuer, an absolute URL
	// without trailing slash: the URL relying parties use to reach this
	// server. Empty: [Server.Serve] derives it from its listener
	// ([DefaultIssuer]); a Server used as a plain http.Handler derives it
	// from the local address each connection was accepted on. It never
	// comes from a request's Host header, which the client chooses.
	Issuer string
	// Build is ear.verifier-id.build (default "cloister").
	Build string
	// ChallengeTTL and MaxChallenges bound POST /v1/challenges.
	ChallengeTTL  time.Duration
	MaxChallenges int
	// SessionTTL and MaxSessions bound the Veraison challenge-response sessions.
	SessionTTL  time.Duration
	MaxSessions int
	// MaxChallengesPerClient and MaxSessionsPerClient bound what one
	// client holds at once (issued and neither expired nor deleted), so
	// that no client can take the whole store (defaults
	// DefaultMaxChallengesPerClient, DefaultMaxSessionsPerClient;
	// negative: no per-client bound).
	MaxChallengesPerClient int
	MaxSessionsPerClient   int
	// ClientRate and ClientBurst are each client's token bucket for
	// creating challenges and sessions: ClientRate per second sustained,
	// ClientBurst at once (defaults DefaultClientRate, DefaultClientBurst;
	// negative ClientRate: no rate limit).
	ClientRate  float64
	ClientBurst int
	// ClientIPv4Prefix and ClientIPv6Prefix are how many leading bits of
	// the source address name a client (defaults DefaultClientIPv4Prefix,
	// DefaultClientIPv6Prefix: one IPv4 address, one IPv6 /64).
	ClientIPv4Prefix int
	ClientIPv6Prefix int
	// TrustedProxies are the reverse proxies whose X-Forwarded-For names
	// the client. A request from one of them is counted against the
	// right-most X-Forwarded-For address that is not itself a trusted
	// proxy. Empty (the default): X-Forwarded-For is ignored and the
	// client is the TCP peer, so clients behind a proxy share its limits.
	TrustedProxies []netip.Prefix
	// MaxClients bounds the clients tracked for these limits (default
	// DefaultMaxClients). A client that holds nothing and has used none of
	// its burst is forgotten; while MaxClients others hold something, a
	// new client gets 429.
	MaxClients int
	// Store holds the challenges and sessions. Nil: this process's
	// memory. A [PostgresStore] shares them among replicas, so that any
	// replica consumes a challenge issued by another, exactly once; it
	// needs SigningKey (the same key on every replica, so that they
	// publish one JWKS) and counts the per-client quotas in the store
	// (the rate limits stay per replica).
	Store *PostgresStore
	// MaxBodyBytes bounds every request body (default DefaultMaxBodyBytes).
	MaxBodyBytes int64
	// Clock returns the current time (default time.Now).
	Clock func() time.Time
	// Rand supplies nonces (default crypto/rand).
	Rand io.Reader
	// Logger receives access logs and errors (default: discard).
	Logger *slog.Logger
	// Registry receives the metrics, also served at /metrics (default: a
	// new registry of the server's own).
	Registry *prometheus.Registry
}

// Server is the attestation verification service: an http.Handler. Create
// it with [New]; it is safe for concurrent use.
type Server struct {
	cfg           Config
	roots         *rootSet
	policies      map[string]*policy
	defaultPolicy string
	keys          *keyRing
	store         backend
	limiter       clientLimiter
	clientOf      clientIdentity
	served        atomic.Pointer[string] // the issuer Serve derived from its listener
	mux           *http.ServeMux
	ready         atomic.Bool
	m             metrics
}

type metrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	verdicts *prometheus.CounterVec
	appraise prometheus.Histogram
	limited  *prometheus.CounterVec
}

// clientLimits checks and completes cfg's per-client limits.
func clientLimits(cfg *Config) (limits, clientIdentity, error) {
	if cfg.MaxChallengesPerClient == 0 {
		cfg.MaxChallengesPerClient = DefaultMaxChallengesPerClient
	}
	if cfg.MaxSessionsPerClient == 0 {
		cfg.MaxSessionsPerClient = DefaultMaxSessionsPerClient
	}
	if cfg.ClientRate == 0 {
		cfg.ClientRate = DefaultClientRate
	}
	if cfg.ClientBurst <= 0 {
		cfg.ClientBurst = DefaultClientBurst
	}
	if cfg.ClientIPv4Prefix == 0 {
		cfg.ClientIPv4Prefix = DefaultClientIPv4Prefix
	}
	if cfg.ClientIPv6Prefix == 0 {
		cfg.ClientIPv6Prefix = DefaultClientIPv6Prefix
	}
	if cfg.MaxClients <= 0 {
		cfg.MaxClients = DefaultMaxClients
	}
	if cfg.ClientIPv4Prefix < 1 || cfg.ClientIPv4Prefix > 32 {
		return limits{}, clientIdentity{}, fmt.Errorf("verifier: client IPv4 prefix /%d: want 1..32 bits", cfg.ClientIPv4Prefix)
	}
	if cfg.ClientIPv6Prefix < 1 || cfg.ClientIPv6Prefix > 128 {
		return limits{}, clientIdentity{}, fmt.Errorf("verifier: client IPv6 prefix /%d: want 1..128 bits", cfg.ClientIPv6Prefix)
	}
	if math.IsNaN(cfg.ClientRate) || math.IsInf(cfg.ClientRate, 0) {
		return limits{}, clientIdentity{}, fmt.Errorf("verifier: client rate %v: want a number of requests per second (negative: no limit)", cfg.ClientRate)
	}
	proxies := make([]netip.Prefix, 0, len(cfg.TrustedProxies))
	for _, p := range cfg.TrustedProxies {
		if !p.IsValid() {
			return limits{}, clientIdentity{}, fmt.Errorf("verifier: trusted proxy %v: want an address or CIDR block", p)
		}
		proxies = append(proxies, p.Masked())
	}
	l := limits{
		quota:      [numHoldKinds]int{holdChallenge: cfg.MaxChallengesPerClient, holdSession: cfg.MaxSessionsPerClient},
		rate:       cfg.ClientRate,
		burst:      float64(cfg.ClientBurst),
		maxClients: cfg.MaxClients,
	}
	return l, clientIdentity{v4: cfg.ClientIPv4Prefix, v6: cfg.ClientIPv6Prefix, proxies: proxies}, nil
}

// New validates cfg (roots, every policy, the signing key) and returns a
// ready Server. Errors name the failing policy and field.
func New(cfg Config) (*Server, error) {
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.SigningCurve == nil {
		cfg.SigningCurve = elliptic.P256()
	}
	if cfg.KeyRotation == 0 {
		cfg.KeyRotation = DefaultKeyRotation
	}
	if cfg.TokenTTL <= 0 {
		cfg.TokenTTL = DefaultTokenTTL
	}
	if cfg.ChallengeTTL <= 0 {
		cfg.ChallengeTTL = DefaultChallengeTTL
	}
	if cfg.MaxChallenges <= 0 {
		cfg.MaxChallenges = DefaultMaxChallenges
	}
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = DefaultSessionTTL
	}
	if cfg.MaxSessions <= 0 {
		cfg.MaxSessions = DefaultMaxSessions
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if cfg.Build == "" {
		cfg.Build = "cloister"
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	cfg.Issuer = strings.TrimSuffix(cfg.Issuer, "/")
	if cfg.Issuer != "" && !strings.HasPrefix(cfg.Issuer, "https://") && !strings.HasPrefix(cfg.Issuer, "http://") {
		return nil, fmt.Errorf("verifier: issuer %q: want an absolute http(s) URL", cfg.Issuer)
	}
	lim, ident, err := clientLimits(&cfg)
	if err != nil {
		return nil, err
	}

	if cfg.Store != nil && cfg.SigningKey == nil {
		return nil, errors.New("verifier: a shared store needs a shared signing key: give every replica the same SigningKey (cloister attest serve --signing-key), so that they publish one JWKS")
	}
	s := &Server{cfg: cfg, policies: make(map[string]*policy), clientOf: ident}
	if cfg.Store != nil {
		// The store counts what each client holds, across replicas.
		s.store = cfg.Store.attach(cfg, lim.quota, s.lookupPolicy)
		lim.quota = [numHoldKinds]int{}
	} else {
		s.store = newMemBackend(cfg.MaxChallenges, cfg.ChallengeTTL, cfg.MaxSessions, cfg.SessionTTL)
	}
	s.limiter = newMemLimiter(lim)
	if s.roots, err = newRootSet(cfg.Roots, cfg.NoAWSRoot); err != nil {
		return nil, err
	}
	pf := cfg.Policies
	if pf == nil {
		pf = &PolicyFile{Policies: map[string]PolicySpec{DefaultPolicyName: {}}}
	}
	names := make([]string, 0, len(pf.Policies))
	for name := range pf.Policies {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if !validPolicyName(name) {
			return nil, fmt.Errorf("verifier: policy %q: name must be 1..64 letters, digits, '.', '_' or '-'", name)
		}
		p, err := compile(pf.Policies[name], s.roots, "policy:cloister/"+name)
		if err != nil {
			return nil, fmt.Errorf("verifier: policy %q: %w", name, err)
		}
		p.name = name
		s.policies[name] = p
	}
	s.defaultPolicy = pf.Default
	if s.defaultPolicy == "" {
		if _, ok := s.policies[DefaultPolicyName]; ok {
			s.defaultPolicy = DefaultPolicyName
		}
	} else if _, ok := s.policies[s.defaultPolicy]; !ok {
		return nil, fmt.Errorf("verifier: default policy %q is not defined (defined: %s)", s.defaultPolicy, strings.Join(names, ", "))
	}
	if s.keys, err = newKeyRing(cfg.SigningKey, cfg.SigningCurve, cfg.KeyRotation, cfg.TokenTTL, cfg.Clock()); err != nil {
		return nil, err
	}
	if err := s.initMetrics(); err != nil {
		return nil, err
	}
	s.routes()
	s.ready.Store(true)
	return s, nil
}

// lookupPolicy returns the policy named name (a shared store keeps a
// session's policy by name).
func (s *Server) lookupPolicy(name string) (*policy, bool) {
	p, ok := s.policies[name]
	return p, ok
}

// counts returns the challenges and sessions held, -1 each when the store
// cannot say (it is logged).
func (s *Server) counts() (int, int) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, n, err := s.store.counts(ctx)
	if err != nil {
		s.cfg.Logger.Error("verifier: count challenges and sessions", "err", err)
		return -1, -1
	}
	return c, n
}

func validPolicyName(n string) bool {
	if n == "" || len(n) > 64 {
		return false
	}
	for _, r := range n {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

func (s *Server) initMetrics() error {
	s.m = metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cloister_verifier_requests_total",
			Help: "HTTP requests by route, method and status code.",
		}, []string{"route", "method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cloister_verifier_request_duration_seconds",
			Help:    "HTTP request latency by route.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"route"}),
		verdicts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cloister_verifier_verdicts_total",
			Help: "Appraisals by verdict (ear.status) and reason (first failed check, or ok).",
		}, []string{"verdict", "reason"}),
		appraise: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "cloister_verifier_appraisal_duration_seconds",
			Help:    "Time to verify a document, apply the policy and sign the token.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1},
		}),
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cloister_verifier_client_limited_total",
			Help: "Challenges and sessions refused by a per-client limit, by limit (challenges, sessions, rate, clients).",
		}, []string{"limit"}),
	}
	cs := []prometheus.Collector{s.m.requests, s.m.latency, s.m.verdicts, s.m.appraise, s.m.limited,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "cloister_verifier_clients",
			Help: "Clients tracked for the per-client limits.",
		}, func() float64 { return float64(s.limiter.clients()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "cloister_verifier_challenges",
			Help: "Challenges held (issued, used or recently expired); in a shared store, by every replica.",
		}, func() float64 { c, _ := s.counts(); return float64(c) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "cloister_verifier_sessions",
			Help: "Veraison challenge-response sessions held; in a shared store, by every replica.",
		}, func() float64 { _, n := s.counts(); return float64(n) }),
	}
	for _, c := range cs {
		if err := s.cfg.Registry.Register(c); err != nil {
			return fmt.Errorf("verifier: register metrics: %w", err)
		}
	}
	return nil
}

// routes registers every endpoint. Paths are registered without methods
// so that a wrong method gets a 405 problem rather than the catch-all 404.
func (s *Server) routes() {
	mux := http.NewServeMux()
	h := func(path string, methods map[string]http.HandlerFunc) {
		mux.Handle(path, s.methods(methods))
	}
	get := func(f http.HandlerFunc) map[string]http.HandlerFunc {
		return map[string]http.HandlerFunc{http.MethodGet: f, http.MethodHead: f}
	}
	post := func(f http.HandlerFunc) map[string]http.HandlerFunc {
		return map[string]http.HandlerFunc{http.MethodPost: f}
	}

	h("/{$}", get(s.handleIndex))
	h("/ui/app.js", get(s.handleAsset("app.js", "text/javascript; charset=utf-8")))
	h("/ui/style.css", get(s.handleAsset("style.css", "text/css; charset=utf-8")))
	h("/openapi.yaml", get(s.handleOpenAPI))
	h("/healthz", get(s.handleHealthz))
	h("/readyz", get(s.handleReadyz))
	mux.Handle("/metrics", s.methods(get(promhttp.HandlerFor(s.cfg.Registry, promhttp.HandlerOpts{}).ServeHTTP)))
	h("/.well-known/jwks.json", get(s.handleJWKS))
	h("/.well-known/openid-configuration", get(s.handleOpenID))
	h("/.well-known/veraison/verification", get(s.handleVeraisonDiscovery))
	h("/v1/verify", post(s.handleVerify))
	h("/v1/challenges", post(s.handleNewChallenge))
	h("/challenge-response/v1/newSession", post(s.handleNewSession))
	h("/challenge-response/v1/session/{id}", map[string]http.HandlerFunc{
		http.MethodGet:    s.handleGetSession,
		http.MethodHead:   s.handleGetSession,
		http.MethodPost:   s.handlePostSession,
		http.MethodDelete: s.handleDeleteSession,
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.problem(w, r, http.StatusNotFound, "not-found", fmt.Sprintf("no resource at %s (see /openapi.yaml)", r.URL.Path))
	})
	s.mux = mux
}

func (s *Server) methods(m map[string]http.HandlerFunc) http.Handler {
	allowed := make([]string, 0, len(m))
	for k := range m {
		allowed = append(allowed, k)
	}
	sort.Strings(allowed)
	allow := strings.Join(allowed, ", ")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, ok := m[r.Method]
		if !ok {
			w.Header().Set("Allow", allow)
			s.problem(w, r, http.StatusMethodNotAllowed, "method-not-allowed", fmt.Sprintf("%s is not allowed on %s; allowed: %s", r.Method, r.URL.Path, allow))
			return
		}
		f(w, r)
	})
}

// statusWriter records the status code and size of a response.
type statusWriter struct {
	http.ResponseWriter
	code  int
	bytes int64
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// ServeHTTP serves the API, applying the body size limit, panic recovery
// (a 500 problem), metrics and the access log.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	sw := &statusWriter{ResponseWriter: w}
	r.Body = http.MaxBytesReader(sw, r.Body, s.cfg.MaxBodyBytes)
	defer func() {
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler {
				panic(p)
			}
			s.cfg.Logger.Error("verifier: handler panic", "panic", fmt.Sprint(p), "path", r.URL.Path)
			if sw.code == 0 {
				s.problem(sw, r, http.StatusInternalServerError, "internal", "internal error")
			}
		}
		if sw.code == 0 {
			sw.code = http.StatusOK
		}
		route := r.Pattern
		if route == "" || route == "/" {
			route = "unmatched"
		}
		method := r.Method
		switch method {
		case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodDelete, http.MethodPut, http.MethodPatch, http.MethodOptions:
		default:
			method = "other" // bound the label's cardinality
		}
		d := time.Since(start)
		s.m.requests.WithLabelValues(route, method, strconv.Itoa(sw.code)).Inc()
		s.m.latency.WithLabelValues(route).Observe(d.Seconds())
		s.cfg.Logger.LogAttrs(r.Context(), slog.LevelInfo, "http request",
			slog.String("method", r.Method), slog.String("path", r.URL.Path), slog.String("route", route),
			slog.Int("status", sw.code), slog.Int64("bytes", sw.bytes), slog.Duration("duration", d),
			slog.String("remote", r.RemoteAddr), slog.String("user_agent", r.UserAgent()))
	}()
	s.mux.ServeHTTP(sw, r)
}

func (s *Server) handleHealthz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	io.WriteString(w, "ok\n")
}

func (s *Server) handleReadyz(w http.ResponseWriter, r *http.Request) {
	if !s.ready.Load() {
		s.problem(w, r, http.StatusServiceUnavailable, "not-ready", "the verifier is shutting down")
		return
	}
	if _, err := s.keys.current(s.cfg.Clock()); err != nil {
		s.problem(w, r, http.StatusServiceUnavailable, "not-ready", "no signing key: "+err.Error())
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	io.WriteString(w, "ready\n")
}

// issuer returns the configured issuer, else the one Serve derived from
// its listener, else one derived from the local address the request's
// connection was accepted on; never anything the client sent.
func (s *Server) issuer(r *http.Request) string {
	if s.cfg.Issuer != "" {
		return s.cfg.Issuer
	}
	if p := s.served.Load(); p != nil {
		return *p
	}
	addr, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	return DefaultIssuer(addr, r.TLS != nil)
}

// DefaultIssuer is the issuer of a server listening on addr without a
// configured one: "http://HOST:PORT", or "https://…" with TLS. An
// unspecified host (0.0.0.0, ::) is replaced by this machine's host name;
// a nil or non-IP addr gives "http(s)://localhost". Configure the issuer
// when relying parties reach the server by another name (a DNS name, a
// proxy).
func DefaultIssuer(addr net.Addr, tls bool) string {
	scheme := "http"
	if tls {
		scheme = "https"
	}
	host, port := "localhost", ""
	if addr != nil {
		if ap, err := netip.ParseAddrPort(addr.String()); err == nil {
			ip := ap.Addr().Unmap()
			host, port = ip.WithZone("").String(), strconv.Itoa(int(ap.Port()))
			if ip.IsUnspecified() {
				host = "localhost"
				if h, err := os.Hostname(); err == nil && h != "" {
					host = h
				}
			}
		}
	}
	if port == "" || port == "80" && !tls || port == "443" && tls {
		if strings.Contains(host, ":") {
			return scheme + "://[" + host + "]"
		}
		return scheme + "://" + host
	}
	return scheme + "://" + net.JoinHostPort(host, port)
}

func (s *Server) handleJWKS(w http.ResponseWriter, r *http.Request) {
	ks, err := s.keys.jwks(s.cfg.Clock())
	if err != nil {
		s.problem(w, r, http.StatusInternalServerError, "internal", err.Error())
		return
	}
	w.Header().Set("Cache-Control", "max-age=60")
	writeJSON(w, http.StatusOK, "application/jwk-set+json", ks)
}

// OpenIDConfiguration is the document served at
// /.well-known/openid-configuration.
type OpenIDConfiguration struct {
	Issuer            string   `json:"issuer"`
	JWKSURI           string   `json:"jwks_uri"`
	SigningAlgs       []string `json:"id_token_signing_alg_values_supported"`
	ResponseTypes     []string `json:"response_types_supported"`
	SubjectTypes      []string `json:"subject_types_supported"`
	ClaimsSupported   []string `json:"claims_supported"`
	VerifyEndpoint    string   `json:"verification_endpoint"`
	ChallengeEndpoint string   `json:"challenge_endpoint"`
}

func (s *Server) handleOpenID(w http.ResponseWriter, r *http.Request) {
	ks, err := s.keys.jwks(s.cfg.Clock())
	if err != nil {
		s.problem(w, r, http.StatusInternalServerError, "internal", err.Error())
		return
	}
	var algs []string
	for _, k := range ks.Keys {
		if !contains(algs, k.Alg) {
			algs = append(algs, k.Alg)
		}
	}
	iss := s.issuer(r)
	w.Header().Set("Cache-Control", "max-age=60")
	writeJSON(w, http.StatusOK, "application/json", OpenIDConfiguration{
		Issuer:            iss,
		JWKSURI:           iss + "/.well-known/jwks.json",
		SigningAlgs:       algs,
		ResponseTypes:     []string{"id_token"},
		SubjectTypes:      []string{"public"},
		ClaimsSupported:   []string{"eat_profile", "iat", "exp", "iss", "jti", "ear.verifier-id", "eat_nonce", "submods"},
		VerifyEndpoint:    iss + "/v1/verify",
		ChallengeEndpoint: iss + "/v1/challenges",
	})
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// SetReady marks the server ready or not (GET /readyz); [Server.Serve]
// clears it when shutting down.
func (s *Server) SetReady(ok bool) { s.ready.Store(ok) }

// Serve serves HTTP on ln (HTTPS when tlsConfig is not nil) until ctx is
// cancelled, then shuts down gracefully, waiting at most 10 s for requests
// in flight. Without a configured issuer, the tokens name
// DefaultIssuer(ln.Addr(), tlsConfig != nil). The http.Server has
// read-header (5 s), read (15 s), write (30 s) and idle (2 min) timeouts
// and a 16 KiB header limit.
func (s *Server) Serve(ctx context.Context, ln net.Listener, tlsConfig *tls.Config) error {
	if s.cfg.Issuer == "" {
		iss := DefaultIssuer(ln.Addr(), tlsConfig != nil)
		s.served.Store(&iss)
	}
	if tlsConfig != nil {
		ln = tls.NewListener(ln, tlsConfig)
	}
	hs := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(s.cfg.Logger.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() {
		errc <- hs.Serve(ln)
	}()
	select {
	case err := <-errc:
		return fmt.Errorf("verifier: serve: %w", err)
	case <-ctx.Done():
	}
	s.ready.Store(false)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	err := hs.Shutdown(sctx)
	if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) && serr != nil {
		return fmt.Errorf("verifier: serve: %w", serr)
	}
	if err != nil {
		return fmt.Errorf("verifier: shutdown: %w", err)
	}
	return nil
}
