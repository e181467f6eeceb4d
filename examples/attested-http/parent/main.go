// Command parent is the client side of the attested-http example. It
// connects to the enclave's HTTPS service (vsock port 5443) through the
// Cloister daemon, checks with enclave/attestedtls that the server is an
// enclave running the expected image and holds the TLS key — before sending
// any request — and then requests /hello on that connection.
//
//	parent [-enclave NAME] (-eif app.eif | -pcr0 HEX) [-root daemon|aws|FILE] [-path /hello]
//
// -root names the attestation root to trust: "daemon" (default) fetches the
// development root of the daemon at $CLOISTER_SOCKET (sandbox and microVM
// worlds), "aws" is the AWS Nitro root (real Nitro enclaves), anything else
// is a PEM file. Exit status 1 when the enclave is not accepted.
package main

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/cloister/cloister/attest"
	"github.com/cloister/cloister/enclave"
	"github.com/cloister/cloister/enclave/attestedtls"
	"github.com/cloister/cloister/enclave/eif"
	"github.com/cloister/cloister/parent"
)

func main() {
	name := flag.String("enclave", "attested-http", "enclave name or ID")
	port := flag.Uint("port", 5443, "vsock port of the HTTPS service")
	eifPath := flag.String("eif", "", "the image the enclave must run (its PCR0 is expected)")
	pcr0Hex := flag.String("pcr0", "", "the expected PCR0 in hex, instead of -eif")
	root := flag.String("root", "daemon", `attestation root: "daemon", "aws" or a PEM file`)
	path := flag.String("path", "/hello", "the path to request once the enclave is attested")
	timeout := flag.Duration("timeout", time.Minute, "give up after this long")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if err := run(ctx, *name, uint32(*port), *eifPath, *pcr0Hex, *root, *path); err != nil {
		fmt.Fprintln(os.Stderr, "parent:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, name string, port uint32, eifPath, pcr0Hex, root, path string) error {
	if (eifPath == "") == (pcr0Hex == "") {
		return errors.New("give exactly one of -eif and -pcr0")
	}
	pcr0, err := expectedPCR0(eifPath, pcr0Hex)
	if err != nil {
		return err
	}
	pc := parent.NewClient("")
	verifier, err := newVerifier(ctx, pc, root)
	if err != nil {
		return err
	}
	client, err := attestedtls.NewClient(attestedtls.Config{
		Verifier: verifier,
		Policy:   attest.Policy{PCRs: map[int][]byte{0: pcr0}, MaxAge: 5 * time.Minute},
	})
	if err != nil {
		return err
	}
	conn, err := client.Dial(ctx, func(ctx context.Context) (net.Conn, error) { return connect(ctx, pc, name, port) })
	if err != nil {
		return fmt.Errorf("enclave %s not accepted: %w", name, err)
	}
	defer conn.Close()
	d := conn.Attestation().Document()
	fmt.Printf("attested: module %s, PCR0 %s, TLS key bound (user_data %s)\n", d.ModuleID, hex.EncodeToString(d.PCRs[0]), hex.EncodeToString(d.UserData))

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+attestedtls.DefaultServerName+path, nil)
	if err != nil {
		return err
	}
	if err := req.Write(conn); err != nil {
		return fmt.Errorf("sending GET %s: %w", path, err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		return fmt.Errorf("reading the answer to GET %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	fmt.Printf("GET %s: %s\n%s", path, resp.Status, body)
	return nil
}

// expectedPCR0 measures the EIF, or decodes the hex value.
func expectedPCR0(eifPath, pcr0Hex string) ([]byte, error) {
	if eifPath == "" {
		b, err := hex.DecodeString(pcr0Hex)
		if err != nil || len(b) != 48 {
			return nil, fmt.Errorf("-pcr0 must be 96 hex digits")
		}
		return b, nil
	}
	img, err := eif.Open(eifPath, eif.ReadOptions{})
	if err != nil {
		return nil, err
	}
	m, err := eif.Measure(img)
	if err != nil {
		return nil, err
	}
	return m.PCR0[:], nil
}

// newVerifier trusts the root named by spec.
func newVerifier(ctx context.Context, pc *parent.Client, spec string) (*attest.Verifier, error) {
	if spec != "daemon" {
		roots, aws, err := attest.LoadRoots([]string{spec})
		if err != nil {
			return nil, err
		}
		return attest.NewVerifier(attest.VerifierConfig{Roots: roots, NoAWSRoot: !aws})
	}
	pemBytes, err := pc.DevRootPEM(ctx)
	if err != nil {
		return nil, fmt.Errorf("fetching the daemon's development root: %w", err)
	}
	roots, err := attest.ParseCertificatesPEM(pemBytes)
	if err != nil {
		return nil, err
	}
	return attest.NewVerifier(attest.VerifierConfig{Roots: roots, NoAWSRoot: true})
}

// connect retries while the enclave's service is not listening yet.
func connect(ctx context.Context, c *parent.Client, name string, port uint32) (net.Conn, error) {
	for {
		conn, err := c.Connect(ctx, name, port)
		if err == nil || !errors.Is(err, enclave.ErrNoListener) {
			return conn, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(200 * time.Millisecond):
		}
	}
}
