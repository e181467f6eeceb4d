// Command enclave is the enclave side of the attested-http example: an HTTPS
// service on vsock port 5443 whose TLS key is generated inside the enclave
// and bound into its attestation documents by enclave/attestedtls. Besides
// the attestation endpoint it serves GET /hello.
package main

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/cloister/cloister/enclave"
	"github.com/cloister/cloister/enclave/attestedtls"
)

// port is the vsock port of the HTTPS service.
const port = 5443

func main() {
	log.SetFlags(0)
	log.SetPrefix("attested-http-enclave: ")
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	octx, cancel := context.WithTimeout(ctx, 30*time.Second)
	sess, err := enclave.OpenSession(octx, nil)
	cancel()
	if err != nil {
		log.Fatalf("opening the security module: %v", err)
	}
	defer sess.Close()

	mux := http.NewServeMux()
	mux.HandleFunc("GET /hello", func(w http.ResponseWriter, r *http.Request) {
		log.Printf("GET /hello from %v", r.RemoteAddr)
		fmt.Fprintf(w, "Hello over attested TLS from an enclave in the %s world.\n", sess.World())
	})
	srv, err := attestedtls.NewServer(attestedtls.ServerConfig{Attester: sess, Handler: mux, Logf: log.Printf})
	if err != nil {
		log.Fatal(err)
	}
	l, err := enclave.Listen(port)
	if err != nil {
		log.Fatalf("listening on vsock port %d: %v", port, err)
	}
	// The integration test and the README wait for this line.
	fmt.Printf("attested-http-enclave: serving HTTPS on vsock port %d (world %s)\n", port, sess.World())
	if err := srv.Serve(ctx, l); err != nil {
		log.Fatal(err)
	}
}
