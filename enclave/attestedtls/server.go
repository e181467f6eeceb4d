package attestedtls

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"log"
	"math/big"
	"net"
	"net/http"
	"time"

	"github.com/cloister/cloister/attest"
	"github.com/cloister/cloister/enclave"
)

// Path is the attestation endpoint: GET Path?nonce=<hex> answers an
// attestation document (application/cbor).
const Path = "/.well-known/cloister/attestation"

// NonceSize is the size of the nonces the Client sends.
const NonceSize = 32

// certificateLifetime is the validity of generated certificates. Clients of
// this package do not check it (the attestation replaces the CA).
const certificateLifetime = 365 * 24 * time.Hour

// Attester produces attestation documents; *enclave.Session implements it.
type Attester interface {
	Attest(ctx context.Context, opts enclave.AttestOptions) ([]byte, error)
}

var _ Attester = (*enclave.Session)(nil)

// KeyBinding returns what the server puts in the document's user_data for
// a certificate: SHA-256 of its DER SubjectPublicKeyInfo.
func KeyBinding(spki []byte) []byte {
	h := sha256.Sum256(spki)
	return h[:]
}

// NewCertificate generates an ECDSA P-256 key and a self-signed certificate
// for it (CN "cloister attested TLS", valid from an hour before now for a
// year). The private key never leaves the process.
func NewCertificate(now time.Time) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("attestedtls: generating a key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("attestedtls: generating a serial number: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "cloister attested TLS"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(certificateLifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("attestedtls: creating the certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("attestedtls: parsing the certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// Handler serves the attestation endpoint for the certificate whose DER
// SubjectPublicKeyInfo is spki: GET (or HEAD) with a query parameter nonce
// of 1 to attest.MaxFieldSize bytes in hex answers 200 with a document from
// a carrying that nonce and user_data = KeyBinding(spki). A missing or
// malformed nonce is 400, another method 405, a failure of a 500.
func Handler(a Attester, spki []byte, logf func(format string, args ...any)) http.Handler {
	if logf == nil {
		logf = log.Printf
	}
	binding := KeyBinding(spki)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "attestation endpoint: use GET", http.StatusMethodNotAllowed)
			return
		}
		q := r.URL.Query().Get("nonce")
		nonce, err := hex.DecodeString(q)
		if err != nil || len(nonce) == 0 || len(nonce) > attest.MaxFieldSize {
			http.Error(w, fmt.Sprintf("attestation endpoint: the query parameter nonce must be 1 to %d bytes in hex", attest.MaxFieldSize), http.StatusBadRequest)
			return
		}
		doc, err := a.Attest(r.Context(), enclave.AttestOptions{Nonce: nonce, UserData: binding})
		if err != nil {
			logf("attestedtls: attestation for %v failed: %v", r.RemoteAddr, err)
			http.Error(w, "attestation endpoint: the security module failed", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/cbor")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write(doc)
	})
}

// ServerConfig configures a Server. Attester is required.
type ServerConfig struct {
	// Attester produces the documents (the enclave's *enclave.Session).
	Attester Attester
	// Handler serves everything but Path; nil answers 404.
	Handler http.Handler
	// Certificate, when set, is served instead of a generated one; its
	// private key must stay inside the enclave for the binding to mean
	// anything.
	Certificate *tls.Certificate
	// Clock dates the generated certificate; default time.Now.
	Clock func() time.Time
	// Logf receives server errors; default log.Printf.
	Logf func(format string, args ...any)
}

// Server is an HTTPS server whose attestation endpoint binds its TLS key
// to the enclave's attestation.
type Server struct {
	cert    tls.Certificate
	spki    []byte
	handler http.Handler
	logf    func(string, ...any)
}

// NewServer checks cfg and generates the certificate (unless given).
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.Attester == nil {
		return nil, errors.New("attestedtls: ServerConfig.Attester is required")
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Logf == nil {
		cfg.Logf = log.Printf
	}
	var cert tls.Certificate
	if cfg.Certificate != nil {
		cert = *cfg.Certificate
	} else {
		var err error
		if cert, err = NewCertificate(cfg.Clock()); err != nil {
			return nil, err
		}
	}
	if len(cert.Certificate) == 0 {
		return nil, errors.New("attestedtls: ServerConfig.Certificate has no certificate")
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("attestedtls: ServerConfig.Certificate: %w", err)
	}
	app := cfg.Handler
	if app == nil {
		app = http.NotFoundHandler()
	}
	mux := http.NewServeMux()
	mux.Handle(Path, Handler(cfg.Attester, leaf.RawSubjectPublicKeyInfo, cfg.Logf))
	mux.Handle("/", app)
	return &Server{cert: cert, spki: leaf.RawSubjectPublicKeyInfo, handler: mux, logf: cfg.Logf}, nil
}

// SubjectPublicKeyInfo returns the DER SubjectPublicKeyInfo of the served
// certificate (KeyBinding of it is in every document).
func (s *Server) SubjectPublicKeyInfo() []byte { return append([]byte(nil), s.spki...) }

// TLSConfig returns the server's TLS configuration: the certificate, TLS
// 1.3 only, HTTP/1.1.
func (s *Server) TLSConfig() *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{s.cert},
		MinVersion:   tls.VersionTLS13,
		NextProtos:   []string{"http/1.1"},
	}
}

// Handler returns the HTTP handler: Path, then the application's handler.
func (s *Server) Handler() http.Handler { return s.handler }

// Serve serves HTTPS on l until ctx ends (then it shuts down gracefully,
// closing l, and returns nil) or l fails.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       5 * time.Minute,
		ErrorLog:          log.New(logWriter(s.logf), "", 0),
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		case <-done:
		}
	}()
	err := srv.Serve(tls.NewListener(l, s.TLSConfig()))
	if ctx.Err() != nil && errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// logWriter turns a logf into an io.Writer for http.Server.ErrorLog.
type logWriter func(string, ...any)

func (f logWriter) Write(p []byte) (int, error) {
	f("%s", p)
	return len(p), nil
}
