package attestedtls

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/attest"
	"github.com/cloister/cloister/enclave"
)

// pcrs are the measurements of the fake enclave.
var pcrs = map[int][]byte{0: bytes.Repeat([]byte{0x11}, 48), 1: bytes.Repeat([]byte{0x22}, 48), 2: bytes.Repeat([]byte{0x33}, 48)}

// issuerAttester is a security module made of an attest.Issuer.
type issuerAttester struct {
	iss  *attest.Issuer
	pcrs map[int][]byte
}

func (a issuerAttester) Attest(_ context.Context, o enclave.AttestOptions) ([]byte, error) {
	return a.iss.Issue(attest.IssueRequest{PCRs: a.pcrs, Nonce: o.Nonce, UserData: o.UserData, PublicKey: o.PublicKey})
}

// attesterFunc adapts a function to Attester.
type attesterFunc func(ctx context.Context, o enclave.AttestOptions) ([]byte, error)

func (f attesterFunc) Attest(ctx context.Context, o enclave.AttestOptions) ([]byte, error) {
	return f(ctx, o)
}

var (
	issuerOnce sync.Once
	issuer     *attest.Issuer
	other      *attest.Issuer
)

func issuers(t testing.TB) (*attest.Issuer, *attest.Issuer) {
	t.Helper()
	issuerOnce.Do(func() {
		var err error
		if issuer, err = attest.NewIssuer(attest.IssuerConfig{Name: "enclave-host"}); err != nil {
			panic(err)
		}
		if other, err = attest.NewIssuer(attest.IssuerConfig{Name: "other-host"}); err != nil {
			panic(err)
		}
	})
	return issuer, other
}

// serve runs an attestedtls Server with attester a on loopback and returns
// a DialFunc reaching it.
func serve(t testing.TB, a Attester) (*Server, DialFunc) {
	t.Helper()
	srv, err := NewServer(ServerConfig{
		Attester: a,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "hello from "+r.URL.Path)
		}),
		Logf: t.Logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	return srv, listen(t, func(ctx context.Context, l net.Listener) error { return srv.Serve(ctx, l) })
}

// listen runs serveFn on a loopback listener until the test ends.
func listen(t testing.TB, serveFn func(context.Context, net.Listener) error) DialFunc {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serveFn(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	addr := l.Addr().String()
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
}

func client(t testing.TB, roots *attest.Issuer, pol attest.Policy) *Client {
	t.Helper()
	v, err := attest.NewVerifier(attest.VerifierConfig{Roots: []*x509.Certificate{roots.Root()}, NoAWSRoot: true})
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewClient(Config{Verifier: v, Policy: pol})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ctx(t testing.TB) context.Context {
	t.Helper()
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestAttestedHTTP(t *testing.T) {
	iss, _ := issuers(t)
	srv, dial := serve(t, issuerAttester{iss, pcrs})
	c := client(t, iss, attest.Policy{PCRs: map[int][]byte{0: pcrs[0]}})

	conn, err := c.Dial(ctx(t), dial)
	if err != nil {
		t.Fatal(err)
	}
	d := conn.Attestation().Document()
	if diff := cmp.Diff(KeyBinding(srv.SubjectPublicKeyInfo()), d.UserData); diff != "" {
		t.Errorf("user_data (-want +got):\n%s", diff)
	}
	if len(d.Nonce) != NonceSize {
		t.Errorf("nonce of %d bytes", len(d.Nonce))
	}
	// The same connection then carries application requests.
	req, _ := http.NewRequest(http.MethodGet, "https://enclave/app", nil)
	if err := req.Write(conn); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if string(body) != "hello from /app" {
		t.Errorf("body %q", body)
	}
	conn.Close()

	// Through the http.Client: two requests, each answered.
	hc := c.HTTPClient(dial)
	for _, p := range []string{"/a", "/b"} {
		resp, err := hc.Get("https://enclave" + p)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "hello from "+p {
			t.Errorf("GET %s: %q", p, body)
		}
	}
}

func TestRejections(t *testing.T) {
	iss, otherIss := issuers(t)
	// A document recorded earlier, for another nonce: a replay.
	var mu sync.Mutex
	var recorded []byte
	replayer := attesterFunc(func(ctx context.Context, o enclave.AttestOptions) ([]byte, error) {
		mu.Lock()
		defer mu.Unlock()
		if recorded == nil {
			var err error
			if recorded, err = (issuerAttester{iss, pcrs}).Attest(ctx, enclave.AttestOptions{Nonce: []byte("an old nonce"), UserData: o.UserData}); err != nil {
				return nil, err
			}
		}
		return recorded, nil
	})
	// A relay: a machine in the middle terminates TLS with its own key and
	// fetches, for the client's nonce, a document from the real enclave,
	// which binds the enclave's key, not the relay's.
	_, enclaveDial := serve(t, issuerAttester{iss, pcrs})
	enclaveClient := client(t, iss, attest.Policy{AllowDebug: true})
	relay := attesterFunc(func(ctx context.Context, o enclave.AttestOptions) ([]byte, error) {
		conn, err := enclaveClient.Dial(ctx, enclaveDial)
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		return enclaveClient.fetch(ctx, conn.Conn, o.Nonce)
	})

	tests := []struct {
		name     string
		attester Attester
		trust    *attest.Issuer
		policy   attest.Policy
		want     []error
		check    func(t *testing.T, err error)
	}{
		{name: "replayed document", attester: replayer, trust: iss, want: []error{ErrReplay},
			check: func(t *testing.T, err error) {
				var re *ReplayError
				if !errors.As(err, &re) || string(re.Got) != "an old nonce" || len(re.Sent) != NonceSize {
					t.Errorf("not a *ReplayError with both nonces: %#v", err)
				}
			}},
		{name: "document of another key", attester: relay, trust: iss, want: []error{ErrKeyMismatch},
			check: func(t *testing.T, err error) {
				var ke *KeyMismatchError
				if !errors.As(err, &ke) || len(ke.Want) != 32 || len(ke.Got) != 32 || bytes.Equal(ke.Want, ke.Got) {
					t.Errorf("not a *KeyMismatchError with two different bindings: %#v", err)
				}
			}},
		{name: "no user_data", attester: attesterFunc(func(ctx context.Context, o enclave.AttestOptions) ([]byte, error) {
			return issuerAttester{iss, pcrs}.Attest(ctx, enclave.AttestOptions{Nonce: o.Nonce})
		}), trust: iss, want: []error{ErrKeyMismatch}},
		{name: "untrusted root", attester: issuerAttester{otherIss, pcrs}, trust: iss, want: []error{ErrVerify, attest.ErrUntrustedRoot}},
		{name: "wrong PCR0", attester: issuerAttester{iss, pcrs}, trust: iss,
			policy: attest.Policy{PCRs: map[int][]byte{0: pcrs[1]}}, want: []error{ErrPolicy, attest.ErrPCRMismatch}},
		{name: "debug enclave", attester: issuerAttester{iss, map[int][]byte{0: make([]byte, 48), 1: make([]byte, 48), 2: make([]byte, 48)}}, trust: iss,
			want: []error{ErrPolicy, attest.ErrDebug}},
		{name: "module fails", attester: attesterFunc(func(context.Context, enclave.AttestOptions) ([]byte, error) {
			return nil, errors.New("module unavailable")
		}), trust: iss, want: []error{ErrEndpoint}},
		{name: "garbage document", attester: attesterFunc(func(context.Context, enclave.AttestOptions) ([]byte, error) {
			return []byte("not cbor"), nil
		}), trust: iss, want: []error{ErrVerify, attest.ErrMalformed}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, dial := serve(t, tc.attester)
			c := client(t, tc.trust, tc.policy)
			conn, err := c.Dial(ctx(t), dial)
			if err == nil {
				conn.Close()
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !errors.Is(err, w) {
					t.Errorf("error %q does not match %v", err, w)
				}
			}
			if tc.check != nil {
				tc.check(t, err)
			}
			// Nothing leaks into the HTTP client either.
			if _, err := c.HTTPClient(dial).Get("https://enclave/secret"); err == nil || !errors.Is(err, tc.want[0]) {
				t.Errorf("http.Client: %v", err)
			}
		})
	}
}

func TestEndpointMissing(t *testing.T) {
	iss, _ := issuers(t)
	// A plain HTTPS server without the attestation endpoint.
	ts := httptest.NewUnstartedServer(http.NotFoundHandler())
	ts.EnableHTTP2 = false
	ts.StartTLS()
	t.Cleanup(ts.Close)
	c := client(t, iss, attest.Policy{})
	_, err := c.Dial(ctx(t), func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", ts.Listener.Addr().String())
	})
	if !errors.Is(err, ErrEndpoint) || !strings.Contains(err.Error(), "404") {
		t.Fatalf("got %v, want ErrEndpoint with 404", err)
	}
}

func TestHandshakeBounded(t *testing.T) {
	iss, _ := issuers(t)
	// A peer that accepts and never speaks TLS.
	dial := listen(t, func(ctx context.Context, l net.Listener) error {
		go func() { <-ctx.Done(); l.Close() }()
		for {
			c, err := l.Accept()
			if err != nil {
				return nil
			}
			go func() { <-ctx.Done(); c.Close() }()
		}
	})
	c := client(t, iss, attest.Policy{})
	cx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := c.Dial(cx, dial)
	if !errors.Is(err, ErrHandshake) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want ErrHandshake and DeadlineExceeded", err)
	}
}

func TestHandlerNonce(t *testing.T) {
	iss, _ := issuers(t)
	h := Handler(issuerAttester{iss, pcrs}, []byte("spki"), t.Logf)
	tests := []struct {
		method, query string
		want          int
	}{
		{"GET", "nonce=00ff", 200},
		{"GET", "", 400},
		{"GET", "nonce=", 400},
		{"GET", "nonce=xyz", 400},
		{"GET", "nonce=" + strings.Repeat("ab", attest.MaxFieldSize+1), 400},
		{"GET", "nonce=" + strings.Repeat("ab", attest.MaxFieldSize), 200},
		{"POST", "nonce=00", 405},
	}
	for _, tc := range tests {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(tc.method, Path+"?"+tc.query, nil))
		if rec.Code != tc.want {
			t.Errorf("%s ?%.40s: status %d, want %d", tc.method, tc.query, rec.Code, tc.want)
		}
		if rec.Code == 200 {
			v, err := attest.Verify(rec.Body.Bytes(), time.Now(), attest.VerifierConfig{Roots: []*x509.Certificate{iss.Root()}, NoAWSRoot: true})
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(KeyBinding([]byte("spki")), v.Document().UserData); diff != "" {
				t.Errorf("user_data (-want +got):\n%s", diff)
			}
		}
	}
}

func TestNewServerConfig(t *testing.T) {
	if _, err := NewServer(ServerConfig{}); err == nil {
		t.Error("NewServer without Attester succeeded")
	}
	if _, err := NewServer(ServerConfig{Attester: attesterFunc(nil), Certificate: &tls.Certificate{}}); err == nil {
		t.Error("NewServer with an empty certificate succeeded")
	}
	if _, err := NewClient(Config{}); err == nil {
		t.Error("NewClient without Verifier succeeded")
	}
}

func BenchmarkHandshake(b *testing.B) {
	iss, _ := issuers(b)
	_, dial := serve(b, issuerAttester{iss, pcrs})
	c := client(b, iss, attest.Policy{PCRs: map[int][]byte{0: pcrs[0]}})
	cx := context.Background()
	for b.Loop() {
		conn, err := c.Dial(cx, dial)
		if err != nil {
			b.Fatal(err)
		}
		conn.Close()
	}
}
