package verifier

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestIssuerIgnoresHostHeader is the attack of a client naming the
// issuer: a request with "Host: evil.example" must get a discovery
// document and a token naming the server's own issuer, never evil.example
// (before the issuer was configuration, both named http://evil.example).
// The server runs as a plain handler (httptest), through Serve, and with
// a configured issuer.
func TestIssuerIgnoresHostHeader(t *testing.T) {
	const evil = "evil.example"
	tests := []struct {
		name  string
		cfg   Config
		serve bool   // through Server.Serve rather than httptest
		want  string // "": the listener's http://ADDR
	}{
		{"handler", Config{}, false, ""},
		{"serve", Config{}, true, ""},
		{"configured", Config{Issuer: "https://verifier.example/"}, false, "https://verifier.example"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			cfg.AllowTimeOverride = true
			var base string
			if tt.serve {
				s, err := New(cfg)
				if err != nil {
					t.Fatal(err)
				}
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan error, 1)
				go func() { done <- s.Serve(ctx, ln, nil) }()
				t.Cleanup(func() {
					cancel()
					if err := <-done; err != nil {
						t.Errorf("Serve: %v", err)
					}
				})
				base = "http://" + ln.Addr().String()
			} else {
				_, ts := testServer(t, cfg)
				base = ts.URL
			}
			want := tt.want
			if want == "" {
				want = base
			}

			r := do(t, http.MethodGet, base+"/.well-known/openid-configuration", "", nil, "Host", evil)
			var oc OpenIDConfiguration
			if err := json.Unmarshal(r.body, &oc); err != nil || r.status != http.StatusOK {
				t.Fatalf("openid configuration: %d %v %s", r.status, err, r.body)
			}
			if oc.Issuer != want || oc.JWKSURI != want+"/.well-known/jwks.json" || oc.VerifyEndpoint != want+"/v1/verify" {
				t.Errorf("with Host: %s the discovery document names issuer %q, jwks_uri %q, verification_endpoint %q; want %s",
					evil, oc.Issuer, oc.JWKSURI, oc.VerifyEndpoint, want)
			}

			r = do(t, http.MethodPost, base+"/v1/verify?time=2022-11-09T23:00:00Z", "application/cbor", readTestdata(t, "veracruz-go-1.cbor"), "Host", evil)
			var vr VerifyResponse
			if err := json.Unmarshal(r.body, &vr); err != nil || r.status != http.StatusOK {
				t.Fatalf("verify: %d %v %s", r.status, err, r.body)
			}
			ear, err := parseEAR(t, base, vr.Token, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			if ear.Issuer != want {
				t.Errorf("with Host: %s the token's iss is %q; want %s", evil, ear.Issuer, want)
			}
		})
	}
}

func TestDefaultIssuer(t *testing.T) {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	tcp := func(s string) net.Addr { a, _ := net.ResolveTCPAddr("tcp", s); return a }
	tests := []struct {
		addr net.Addr
		tls  bool
		want string
	}{
		{tcp("127.0.0.1:8443"), false, "http://127.0.0.1:8443"},
		{tcp("127.0.0.1:8443"), true, "https://127.0.0.1:8443"},
		{tcp("[::1]:8443"), true, "https://[::1]:8443"},
		{tcp("[::1]:443"), true, "https://[::1]"},
		{tcp("192.0.2.7:80"), false, "http://192.0.2.7"},
		{tcp("192.0.2.7:80"), true, "https://192.0.2.7:80"},
		{tcp("0.0.0.0:8443"), true, "https://" + host + ":8443"},
		{tcp("[::]:8443"), false, "http://" + host + ":8443"},
		{&net.UnixAddr{Name: "/run/verifier.sock", Net: "unix"}, false, "http://localhost"},
		{nil, true, "https://localhost"},
	}
	for _, tt := range tests {
		if diff := cmp.Diff(tt.want, DefaultIssuer(tt.addr, tt.tls)); diff != "" {
			t.Errorf("DefaultIssuer(%v, %v) (-want +got):\n%s", tt.addr, tt.tls, diff)
		}
	}
}
