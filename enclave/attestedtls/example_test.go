package attestedtls_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/cloister/cloister/attest"
	"github.com/cloister/cloister/enclave"
	"github.com/cloister/cloister/enclave/attestedtls"
)

// devModule plays the enclave's security module with a development issuer;
// in an enclave, use the *enclave.Session from enclave.OpenSession.
type devModule struct {
	iss  *attest.Issuer
	pcr0 []byte
}

func (m devModule) Attest(_ context.Context, o enclave.AttestOptions) ([]byte, error) {
	return m.iss.Issue(attest.IssueRequest{PCRs: map[int][]byte{0: m.pcr0}, Nonce: o.Nonce, UserData: o.UserData})
}

// A service inside the enclave serves HTTPS with a key bound into its
// attestation; a client on the parent accepts the connection only after
// checking a fresh document against the expected PCR0. Here loopback TCP
// stands in for vsock: in an enclave the listener is enclave.Listen(5443),
// and on the parent the DialFunc is
// parent.NewClient("").Connect(ctx, "app", 5443).
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	iss, err := attest.NewIssuer(attest.IssuerConfig{})
	if err != nil {
		panic(err)
	}
	pcr0 := bytes.Repeat([]byte{0xab}, 48) // the image's PCR0, from build-enclave

	// Inside the enclave.
	srv, err := attestedtls.NewServer(attestedtls.ServerConfig{
		Attester: devModule{iss, pcr0},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello from the enclave, you asked for %s", r.URL.Path)
		}),
	})
	if err != nil {
		panic(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go srv.Serve(ctx, l)

	// On the parent.
	verifier, err := attest.NewVerifier(attest.VerifierConfig{Roots: []*x509.Certificate{iss.Root()}, NoAWSRoot: true})
	if err != nil {
		panic(err)
	}
	client, err := attestedtls.NewClient(attestedtls.Config{
		Verifier: verifier,
		Policy:   attest.Policy{PCRs: map[int][]byte{0: pcr0}, MaxAge: 5 * time.Minute},
	})
	if err != nil {
		panic(err)
	}
	dial := func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", l.Addr().String())
	}
	resp, err := client.HTTPClient(dial).Get("https://enclave/greeting")
	if err != nil {
		fmt.Println("refused:", err) // e.g. errors.Is(err, attestedtls.ErrPolicy)
		return
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Println(string(body))
	// Output: hello from the enclave, you asked for /greeting
}
