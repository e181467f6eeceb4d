// Command enclave is the enclave side of the kms-secret example. It listens
// on vsock port 5000; for each connection it reads one request from the
// parent (a sealed secret, the key service's URL and the enclave's
// credentials), calls the key service's Decrypt with an attested Recipient
// (the security module attests a fresh RSA key; the key service releases
// the plaintext only enveloped to that key and only when the key policy
// accepts the document's PCR0) through the parent's egress proxy, and
// answers with the secret or the key service's refusal.
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/cloister/cloister/enclave"
	"github.com/cloister/cloister/enclave/kmsclient"
	"github.com/cloister/cloister/examples/kms-secret/secret"
)

// variant names the build; the integration test builds a second image with
// -ldflags "-X main.variant=tampered" to get different code (another PCR0).
var variant = "original"

func main() {
	log.SetFlags(0)
	log.SetPrefix("kms-secret-enclave: ")
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	octx, cancel := context.WithTimeout(ctx, 30*time.Second)
	sess, err := enclave.OpenSession(octx, nil)
	cancel()
	if err != nil {
		log.Fatalf("opening the security module: %v", err)
	}
	defer sess.Close()

	l, err := enclave.Listen(secret.Port)
	if err != nil {
		log.Fatalf("listening on vsock port %d: %v", secret.Port, err)
	}
	// The integration test and the README wait for this line.
	fmt.Printf("kms-secret-enclave: %s build listening on vsock port %d (world %s)\n", variant, secret.Port, sess.World())

	decrypt := func(ctx context.Context, req secret.Request) ([]byte, error) {
		c, err := kmsclient.New(kmsclient.Config{
			Attester: recordingAttester{kmsclient.SessionAttester{Session: sess}},
			Region:   req.Region,
			Endpoint: req.Endpoint,
			Credentials: credentials.StaticCredentialsProvider{Value: aws.Credentials{
				AccessKeyID: req.AccessKeyID, SecretAccessKey: req.SecretAccessKey, SessionToken: req.SessionToken,
			}},
			RetryMaxAttempts: 1,
		})
		if err != nil {
			return nil, err
		}
		return c.Decrypt(ctx, kmsclient.DecryptInput{CiphertextBlob: req.Ciphertext, KeyID: req.KeyID})
	}
	if err := secret.Serve(ctx, l, decrypt, log.Printf); err != nil {
		log.Fatal(err)
	}
}

// recordingAttester hands every document it obtains to the request's
// answer, so the parent sees what the enclave proved to the key service.
type recordingAttester struct{ kmsclient.Attester }

func (a recordingAttester) Attest(ctx context.Context, nonce, userData, publicKey []byte) ([]byte, error) {
	doc, err := a.Attester.Attest(ctx, nonce, userData, publicKey)
	if err == nil {
		secret.RecordAttestation(ctx, doc)
	}
	return doc, err
}
