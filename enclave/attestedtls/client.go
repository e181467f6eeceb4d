package attestedtls

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/cloister/cloister/attest"
)

// DefaultServerName is the TLS server name and HTTP host the Client uses
// unless configured otherwise (the certificate is not checked against it).
const DefaultServerName = "enclave"

// Config configures a Client. Verifier is required.
type Config struct {
	// Verifier checks documents' chains and signatures: it must trust the
	// enclave's root (the AWS root on Nitro, a daemon's development root
	// in the sandbox and microVM worlds).
	Verifier *attest.Verifier
	// Policy judges verified documents: PCRs, AllowDebug, MaxAge, and
	// PublicKey if wanted. Its Nonce and UserData are ignored: the Client
	// checks them itself (ErrReplay, ErrKeyMismatch).
	Policy attest.Policy
	// ServerName is the TLS server name and HTTP host; default
	// DefaultServerName.
	ServerName string
	// Clock is the time documents are verified at; default time.Now.
	Clock func() time.Time
	// Rand is the source of nonces; default crypto/rand.
	Rand io.Reader
}

// Client opens attested TLS connections. Safe for concurrent use.
type Client struct {
	cfg Config
}

// NewClient checks cfg and returns a Client.
func NewClient(cfg Config) (*Client, error) {
	if cfg.Verifier == nil {
		return nil, errors.New("attestedtls: Config.Verifier is required")
	}
	if cfg.ServerName == "" {
		cfg.ServerName = DefaultServerName
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	cfg.Policy.Nonce, cfg.Policy.UserData = nil, nil
	return &Client{cfg: cfg}, nil
}

// Conn is a TLS connection whose peer proved, with an attestation document
// bound to this connection's key and a fresh nonce, that it is an enclave
// the Client's Verifier and Policy accept.
type Conn struct {
	*tls.Conn
	verified *attest.Verified
}

// Attestation returns the verified document the peer presented.
func (c *Conn) Attestation() *attest.Verified { return c.verified }

// DialFunc opens a stream to the enclave's service, e.g.
//
//	func(ctx context.Context) (net.Conn, error) { return pc.Connect(ctx, "app", 5443) }
//
// with pc a *parent.Client.
type DialFunc func(ctx context.Context) (net.Conn, error)

// Dial opens a stream with dial and runs Handshake on it.
func (c *Client) Dial(ctx context.Context, dial DialFunc) (*Conn, error) {
	raw, err := dial(ctx)
	if err != nil {
		return nil, fmt.Errorf("attestedtls: connecting: %w", err)
	}
	return c.Handshake(ctx, raw)
}

// Handshake runs the TLS handshake over raw, then requests an attestation
// document for a fresh nonce from Path over the TLS connection and checks
// it as the package documentation describes, before any application data
// is sent. It returns the connection only when every check passes;
// otherwise it closes raw and returns an error matching one of ErrHandshake,
// ErrEndpoint, ErrVerify, ErrReplay, ErrKeyMismatch, ErrPolicy. ctx bounds
// the whole exchange.
func (c *Client) Handshake(ctx context.Context, raw net.Conn) (*Conn, error) {
	conn, err := c.handshake(ctx, raw)
	if err != nil {
		raw.Close()
		return nil, err
	}
	return conn, nil
}

func (c *Client) handshake(ctx context.Context, raw net.Conn) (*Conn, error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = raw.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = raw.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	tc := tls.Client(raw, &tls.Config{
		ServerName: c.cfg.ServerName,
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{"http/1.1"},
		// The peer is authenticated by its attestation, not by a CA: the
		// handshake only has to prove it holds the certificate's key.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("the server sent no certificate")
			}
			return nil
		},
	})
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrHandshake, ctxErr(ctx, err))
	}
	spki := tc.ConnectionState().PeerCertificates[0].RawSubjectPublicKeyInfo

	nonce := make([]byte, NonceSize)
	if _, err := io.ReadFull(c.cfg.Rand, nonce); err != nil {
		return nil, fmt.Errorf("attestedtls: generating a nonce: %w", err)
	}
	doc, err := c.fetch(ctx, tc, nonce)
	if err != nil {
		return nil, err
	}
	v, err := c.Check(doc, nonce, spki)
	if err != nil {
		return nil, err
	}
	if !stop() {
		return nil, fmt.Errorf("%w: %w", ErrEndpoint, ctx.Err())
	}
	_ = raw.SetDeadline(time.Time{})
	return &Conn{Conn: tc, verified: v}, nil
}

// fetch asks the attestation endpoint for a document with nonce.
func (c *Client) fetch(ctx context.Context, tc *tls.Conn, nonce []byte) ([]byte, error) {
	u := &url.URL{Scheme: "https", Host: c.cfg.ServerName, Path: Path, RawQuery: "nonce=" + hex.EncodeToString(nonce)}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrEndpoint, err)
	}
	req.Header.Set("Accept", "application/cbor")
	if err := req.Write(tc); err != nil {
		return nil, fmt.Errorf("%w: sending the request: %w", ErrEndpoint, ctxErr(ctx, err))
	}
	br := bufio.NewReader(tc)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return nil, fmt.Errorf("%w: reading the answer: %w", ErrEndpoint, ctxErr(ctx, err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, attest.MaxDocumentSize+1))
	switch {
	case err != nil:
		return nil, fmt.Errorf("%w: reading the answer: %w", ErrEndpoint, ctxErr(ctx, err))
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("%w: %s answered %s: %s", ErrEndpoint, Path, resp.Status, bytes.TrimSpace(body[:min(len(body), 200)]))
	case len(body) > attest.MaxDocumentSize:
		return nil, fmt.Errorf("%w: the document exceeds %d bytes", ErrEndpoint, attest.MaxDocumentSize)
	case resp.Close:
		return nil, fmt.Errorf("%w: the server closes the connection after the attestation", ErrEndpoint)
	case br.Buffered() != 0:
		return nil, fmt.Errorf("%w: %d unexpected bytes after the answer", ErrEndpoint, br.Buffered())
	}
	return body, nil
}

// Check verifies doc with the Client's Verifier at its clock's time and
// checks, in this order, that its nonce is nonce (ErrReplay), that its
// user_data is KeyBinding(spki) (ErrKeyMismatch), and that the Policy
// accepts it (ErrPolicy). Handshake calls it; it is exported for
// transports other than this package's HTTP exchange.
func (c *Client) Check(doc, nonce, spki []byte) (*attest.Verified, error) {
	now := c.cfg.Clock()
	v, err := c.cfg.Verifier.Verify(doc, now)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrVerify, err)
	}
	d := v.Document()
	if d.Nonce == nil || subtle.ConstantTimeCompare(d.Nonce, nonce) != 1 {
		return nil, &ReplayError{Sent: append([]byte(nil), nonce...), Got: d.Nonce}
	}
	want := KeyBinding(spki)
	if d.UserData == nil || subtle.ConstantTimeCompare(d.UserData, want) != 1 {
		return nil, &KeyMismatchError{Want: want, Got: d.UserData}
	}
	if err := c.cfg.Policy.Evaluate(v, now); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrPolicy, err)
	}
	return v, nil
}

// HTTPClient returns an *http.Client whose connections are opened with
// dial and attested with Handshake (one attestation per connection;
// HTTP/1.1, kept alive). Request URLs use the https scheme; their host
// only names the connection pool (dial decides where connections go).
// A failed attestation fails the request with the Handshake error.
func (c *Client) HTTPClient(dial DialFunc) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialTLSContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return c.Dial(ctx, dial)
		},
		ForceAttemptHTTP2:   false,
		TLSNextProto:        map[string]func(string, *tls.Conn) http.RoundTripper{},
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     time.Minute,
	}}
}

// ctxErr prefers the context's error when it ended, so a cancelled
// exchange reports context.Canceled / DeadlineExceeded. A connection
// timeout at or after the context's deadline counts as DeadlineExceeded
// (the connection's deadline is the context's and may fire first).
func ctxErr(ctx context.Context, err error) error {
	if e := ctx.Err(); e != nil {
		return fmt.Errorf("%w (%v)", e, err)
	}
	var ne net.Error
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) && errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("%w (%v)", context.DeadlineExceeded, err)
	}
	return err
}

var _ net.Conn = (*Conn)(nil)
