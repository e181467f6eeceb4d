// Command parent is the parent side of the kms-secret example.
//
//	parent seal   -kms URL -credentials FILE (-eif app.eif | -pcr0 HEX) -secret TEXT [-out sealed.json]
//	parent unseal -kms URL -credentials FILE [-enclave NAME] [-in sealed.json]
//
// seal creates a key in the key service whose policy lets the "enclave"
// profile's principal call Decrypt only from an enclave whose attested PCR0
// is the image's, encrypts the secret under it (as the "admin" profile)
// and writes the key ID and ciphertext to sealed.json. It then shows that
// the enclave's credentials are useless without the enclave: Decrypt from
// the parent with them is refused (AccessDeniedException); if it is not,
// seal fails.
//
// unseal hands the sealed secret, the key service's URL and the enclave
// profile's credentials to the enclave (vsock port 5000, through the
// Cloister daemon at $CLOISTER_SOCKET or /run/cloister/cloisterd.sock) and
// prints the secret the enclave obtained, or the key service's refusal
// (exit status 1).
package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/smithy-go"

	"github.com/cloister/cloister/enclave"
	"github.com/cloister/cloister/enclave/eif"
	"github.com/cloister/cloister/examples/kms-secret/secret"
	"github.com/cloister/cloister/kms/sigv4"
	"github.com/cloister/cloister/parent"
)

// region is the key service's signing region.
const region = "us-east-1"

// sealed is the file seal writes and unseal reads.
type sealed struct {
	KeyID      string `json:"key_id"`
	PCR0       string `json:"pcr0"`
	Ciphertext []byte `json:"ciphertext"`
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "seal":
		err = runSeal(os.Args[2:])
	case "unseal":
		err = runUnseal(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "parent:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: parent seal|unseal [flags]  (parent seal -h for the flags)")
	os.Exit(2)
}

// common are the flags both subcommands take.
type common struct {
	endpoint, credsFile, adminProfile, enclaveProfile string
	timeout                                           time.Duration
}

func (c *common) register(fs *flag.FlagSet) {
	fs.StringVar(&c.endpoint, "kms", "http://127.0.0.1:7777", "key service URL (cloister kms serve prints it)")
	fs.StringVar(&c.credsFile, "credentials", "kms-creds.ini", "AWS shared-credentials file with the admin and enclave profiles")
	fs.StringVar(&c.adminProfile, "admin-profile", "admin", "profile that creates the key and seals")
	fs.StringVar(&c.enclaveProfile, "enclave-profile", "enclave", "profile whose credentials the enclave uses")
	fs.DurationVar(&c.timeout, "timeout", 2*time.Minute, "give up after this long")
}

// credential returns the profile's access key from the credentials file.
func (c *common) credential(profile string) (sigv4.Credential, error) {
	cs, err := sigv4.LoadCredentialsFile(c.credsFile)
	if err != nil {
		return sigv4.Credential{}, err
	}
	cr, ok := cs.ByProfile(profile)
	if !ok {
		return sigv4.Credential{}, fmt.Errorf("%s has no profile %q", c.credsFile, profile)
	}
	return cr, nil
}

// client returns a KMS client signing as the profile.
func (c *common) client(profile string) (*awskms.Client, sigv4.Credential, error) {
	cr, err := c.credential(profile)
	if err != nil {
		return nil, cr, err
	}
	return awskms.New(awskms.Options{
		Region: region, BaseEndpoint: aws.String(c.endpoint), RetryMaxAttempts: 1,
		Credentials: credentials.StaticCredentialsProvider{Value: aws.Credentials{AccessKeyID: cr.AccessKeyID, SecretAccessKey: cr.SecretAccessKey}},
	}), cr, nil
}

func runSeal(args []string) error {
	fs := flag.NewFlagSet("seal", flag.ExitOnError)
	var c common
	c.register(fs)
	eifPath := fs.String("eif", "", "the enclave image (its PCR0 goes into the key policy)")
	pcr0 := fs.String("pcr0", "", "the image's PCR0 in hex, instead of -eif")
	text := fs.String("secret", "", "the secret to seal (at most 4096 bytes)")
	out := fs.String("out", "sealed.json", "where to write the key ID and ciphertext")
	_ = fs.Parse(args)
	if (*eifPath == "") == (*pcr0 == "") || *text == "" {
		return errors.New("seal needs -secret and exactly one of -eif and -pcr0")
	}
	if *eifPath != "" {
		p, err := imagePCR0(*eifPath)
		if err != nil {
			return err
		}
		*pcr0 = p
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()

	admin, adminCred, err := c.client(c.adminProfile)
	if err != nil {
		return err
	}
	encl, enclCred, err := c.client(c.enclaveProfile)
	if err != nil {
		return err
	}
	keyID, err := secret.CreateKey(ctx, admin, secret.KeyPolicy{Admin: adminCred.PrincipalARN, Enclave: enclCred.PrincipalARN, PCR0: *pcr0})
	if err != nil {
		return err
	}
	fmt.Printf("created key %s: %s may decrypt only from an enclave with PCR0 %s\n", keyID, enclCred.PrincipalARN, *pcr0)
	ct, err := secret.Seal(ctx, admin, keyID, []byte(*text))
	if err != nil {
		return err
	}
	b, _ := json.MarshalIndent(sealed{KeyID: keyID, PCR0: *pcr0, Ciphertext: ct}, "", "  ")
	if err := os.WriteFile(*out, append(b, '\n'), 0o644); err != nil {
		return err
	}
	fmt.Printf("sealed %d bytes into %s\n", len(*text), *out)

	// The enclave's credentials alone do not open the secret.
	_, err = encl.Decrypt(ctx, &awskms.DecryptInput{CiphertextBlob: ct})
	var api smithy.APIError
	switch {
	case err == nil:
		return errors.New("the parent could decrypt with the enclave's credentials: the key policy does not require attestation")
	case errors.As(err, &api) && api.ErrorCode() == "AccessDeniedException":
		fmt.Printf("parent Decrypt with the enclave's credentials but no attestation: refused (%s)\n", api.ErrorCode())
		return nil
	default:
		return fmt.Errorf("checking that the parent cannot decrypt: unexpected error: %w", err)
	}
}

func runUnseal(args []string) error {
	fs := flag.NewFlagSet("unseal", flag.ExitOnError)
	var c common
	c.register(fs)
	name := fs.String("enclave", "kms-secret", "enclave name or ID")
	in := fs.String("in", "sealed.json", "the file seal wrote")
	_ = fs.Parse(args)
	b, err := os.ReadFile(*in)
	if err != nil {
		return err
	}
	var s sealed
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("%s: %w", *in, err)
	}
	cr, err := c.credential(c.enclaveProfile)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	conn, err := connect(ctx, parent.NewClient(""), *name, secret.Port)
	if err != nil {
		return fmt.Errorf("connecting to port %d of enclave %s: %w", secret.Port, *name, err)
	}
	defer conn.Close()
	pt, err := secret.Unseal(ctx, conn, secret.Request{
		Endpoint: c.endpoint, Region: region,
		AccessKeyID: cr.AccessKeyID, SecretAccessKey: cr.SecretAccessKey,
		Ciphertext: s.Ciphertext, KeyID: s.KeyID,
	})
	if err != nil {
		return err
	}
	fmt.Printf("the enclave unsealed the secret: %s\n", pt)
	return nil
}

// imagePCR0 measures the EIF as build-enclave does and returns PCR0 in hex.
func imagePCR0(path string) (string, error) {
	img, err := eif.Open(path, eif.ReadOptions{})
	if err != nil {
		return "", err
	}
	m, err := eif.Measure(img)
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(m.PCR0[:]), nil
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
