package kmsclient

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/cloister/cloister/enclave"
	"github.com/cloister/cloister/internal/transport"
	"github.com/cloister/cloister/internal/wellknown"
	"github.com/cloister/cloister/kms/cms"
)

// Sentinel errors.
var (
	// ErrAttest: the Attester failed to produce a document.
	ErrAttest = errors.New("kmsclient: attestation failed")
	// ErrNoRecipientCiphertext: the service answered without
	// CiphertextForRecipient (it ignored the Recipient).
	ErrNoRecipientCiphertext = errors.New("kmsclient: response lacks CiphertextForRecipient")
	// ErrEnvelope: CiphertextForRecipient did not decrypt with the
	// client's key.
	ErrEnvelope = errors.New("kmsclient: cannot open CiphertextForRecipient")
)

// Attester produces an attestation document whose public_key is publicKey.
// enclave.Session satisfies it through SessionAttester.
type Attester interface {
	Attest(ctx context.Context, nonce, userData, publicKey []byte) ([]byte, error)
}

// SessionAttester adapts an *enclave.Session to Attester.
type SessionAttester struct{ Session *enclave.Session }

// Attest asks the security module for a document with the given fields.
func (a SessionAttester) Attest(ctx context.Context, nonce, userData, publicKey []byte) ([]byte, error) {
	return a.Session.Attest(ctx, enclave.AttestOptions{Nonce: nonce, UserData: userData, PublicKey: publicKey})
}

// Default parent-side egress proxy address (conventions: CID 3, port 8000).
const (
	ParentCID        = wellknown.ParentCID
	DefaultProxyPort = wellknown.EgressPort
)

// ProxyDialer returns a DialContext that ignores the address and connects
// to (3, port) through the enclave transport (AF_VSOCK, or the sandbox's
// Unix sockets), where a fixed-destination egress proxy forwards to the KMS
// endpoint: AWS's vsock-proxy (`vsock-proxy 8000 kms.<region>.amazonaws.com
// 443`) or a Cloister daemon proxy with remote_addr/remote_port. TLS still
// runs end to end: the HTTP client verifies the endpoint's certificate by
// the URL's host name.
func ProxyDialer(port uint32) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, _, _ string) (net.Conn, error) {
		return transport.Dial(ctx, ParentCID, port, nil)
	}
}

// Config configures a Client. Attester and Credentials are required.
type Config struct {
	// Attester produces attestation documents (e.g. SessionAttester).
	Attester Attester
	// Region is the KMS region (signing region and default endpoint).
	Region string
	// Endpoint overrides the service URL, e.g. https://kms.example:8443
	// for a Cloister key service. Empty: AWS's endpoint for Region.
	Endpoint string
	// Credentials sign the requests (e.g. credentials passed in by the
	// parent, as with kmstool-enclave-cli).
	Credentials aws.CredentialsProvider
	// HTTPClient, when set, is used as is (Dial is then ignored).
	HTTPClient *http.Client
	// Dial opens connections for the default HTTP client; nil means
	// ConnectProxyDialer(DefaultProxyPort), the Cloister daemon's default
	// egress proxy. Use ProxyDialer with AWS's vsock-proxy.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// KeyBits is the ephemeral RSA key size: 2048 (default), 3072 or 4096.
	KeyBits int
	// RetryMaxAttempts is passed to the SDK (0 = SDK default).
	RetryMaxAttempts int
}

// Client calls KMS with an attested Recipient. Safe for concurrent use.
type Client struct {
	kms      *awskms.Client
	att      Attester
	bits     int
	keyOnce  sync.Once
	priv     *rsa.PrivateKey
	spki     []byte
	keyError error
}

// New checks cfg and builds the SDK client. It does not contact KMS or the
// security module.
func New(cfg Config) (*Client, error) {
	if cfg.Attester == nil {
		return nil, errors.New("kmsclient: Config.Attester is required")
	}
	if cfg.Credentials == nil {
		return nil, errors.New("kmsclient: Config.Credentials is required")
	}
	if cfg.Region == "" {
		return nil, errors.New("kmsclient: Config.Region is required")
	}
	bits := cfg.KeyBits
	switch bits {
	case 0:
		bits = 2048
	case 2048, 3072, 4096:
	default:
		return nil, fmt.Errorf("kmsclient: KeyBits %d: want 2048, 3072 or 4096", bits)
	}
	hc := cfg.HTTPClient
	if hc == nil {
		dial := cfg.Dial
		if dial == nil {
			dial = ConnectProxyDialer(DefaultProxyPort)
		}
		hc = &http.Client{Transport: &http.Transport{
			DialContext:         dial,
			ForceAttemptHTTP2:   false,
			MaxIdleConnsPerHost: 4,
			IdleConnTimeout:     90 * time.Second,
			TLSHandshakeTimeout: 10 * time.Second,
		}}
	}
	opts := awskms.Options{Region: cfg.Region, Credentials: cfg.Credentials, HTTPClient: hc, RetryMaxAttempts: cfg.RetryMaxAttempts}
	if cfg.Endpoint != "" {
		opts.BaseEndpoint = aws.String(cfg.Endpoint)
	}
	return &Client{kms: awskms.New(opts), att: cfg.Attester, bits: bits}, nil
}

// KMS returns the underlying SDK client (for operations without Recipient).
func (c *Client) KMS() *awskms.Client { return c.kms }

// key generates the ephemeral key pair once.
func (c *Client) key() (*rsa.PrivateKey, []byte, error) {
	c.keyOnce.Do(func() {
		k, err := rsa.GenerateKey(rand.Reader, c.bits)
		if err != nil {
			c.keyError = fmt.Errorf("kmsclient: generating the RSA key: %w", err)
			return
		}
		spki, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
		if err != nil {
			c.keyError = fmt.Errorf("kmsclient: %w", err)
			return
		}
		c.priv, c.spki = k, spki
	})
	if c.keyError != nil {
		return nil, nil, c.keyError
	}
	return c.priv, c.spki, nil
}

// PublicKey returns the DER SubjectPublicKeyInfo of the client's ephemeral
// key (generating it on first use).
func (c *Client) PublicKey() ([]byte, error) {
	_, spki, err := c.key()
	if err != nil {
		return nil, err
	}
	return append([]byte(nil), spki...), nil
}

// recipient attests the public key afresh and returns the Recipient.
func (c *Client) recipient(ctx context.Context) (*types.RecipientInfo, *rsa.PrivateKey, error) {
	priv, spki, err := c.key()
	if err != nil {
		return nil, nil, err
	}
	doc, err := c.att.Attest(ctx, nil, nil, spki)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrAttest, err)
	}
	return &types.RecipientInfo{AttestationDocument: doc, KeyEncryptionAlgorithm: types.KeyEncryptionMechanismRsaesOaepSha256}, priv, nil
}

func open(priv *rsa.PrivateKey, cfr []byte) ([]byte, error) {
	if len(cfr) == 0 {
		return nil, ErrNoRecipientCiphertext
	}
	pt, err := cms.Decrypt(cfr, priv)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrEnvelope, err)
	}
	return pt, nil
}

// DecryptInput names a ciphertext to decrypt.
type DecryptInput struct {
	CiphertextBlob    []byte
	KeyID             string // optional; must match the ciphertext's key
	EncryptionContext map[string]string
}

// Decrypt calls KMS Decrypt with a fresh attested Recipient and returns the
// plaintext opened from CiphertextForRecipient.
func (c *Client) Decrypt(ctx context.Context, in DecryptInput) ([]byte, error) {
	r, priv, err := c.recipient(ctx)
	if err != nil {
		return nil, err
	}
	req := &awskms.DecryptInput{CiphertextBlob: in.CiphertextBlob, EncryptionContext: in.EncryptionContext, Recipient: r}
	if in.KeyID != "" {
		req.KeyId = aws.String(in.KeyID)
	}
	out, err := c.kms.Decrypt(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("kmsclient: Decrypt: %w", err)
	}
	return open(priv, out.CiphertextForRecipient)
}

// DataKeyInput asks for a data key: KeySpec ("AES_256", "AES_128") or
// NumberOfBytes (1..1024), exactly one.
type DataKeyInput struct {
	KeyID             string
	KeySpec           string
	NumberOfBytes     int
	EncryptionContext map[string]string
}

// DataKey is a generated data key.
type DataKey struct {
	// Plaintext is the data key, opened inside the enclave.
	Plaintext []byte
	// CiphertextBlob is the KMS-encrypted copy to store with the data.
	CiphertextBlob []byte
	// KeyID is the ARN of the KMS key.
	KeyID string
}

// GenerateDataKey calls KMS GenerateDataKey with a fresh attested
// Recipient.
func (c *Client) GenerateDataKey(ctx context.Context, in DataKeyInput) (DataKey, error) {
	r, priv, err := c.recipient(ctx)
	if err != nil {
		return DataKey{}, err
	}
	req := &awskms.GenerateDataKeyInput{KeyId: aws.String(in.KeyID), EncryptionContext: in.EncryptionContext, Recipient: r}
	if in.KeySpec != "" {
		req.KeySpec = types.DataKeySpec(in.KeySpec)
	}
	if in.NumberOfBytes != 0 {
		req.NumberOfBytes = aws.Int32(int32(in.NumberOfBytes))
	}
	out, err := c.kms.GenerateDataKey(ctx, req)
	if err != nil {
		return DataKey{}, fmt.Errorf("kmsclient: GenerateDataKey: %w", err)
	}
	pt, err := open(priv, out.CiphertextForRecipient)
	if err != nil {
		return DataKey{}, err
	}
	return DataKey{Plaintext: pt, CiphertextBlob: out.CiphertextBlob, KeyID: aws.ToString(out.KeyId)}, nil
}

// GenerateRandom returns n (1..1024) random bytes from KMS, enveloped to the
// enclave.
func (c *Client) GenerateRandom(ctx context.Context, n int) ([]byte, error) {
	r, priv, err := c.recipient(ctx)
	if err != nil {
		return nil, err
	}
	out, err := c.kms.GenerateRandom(ctx, &awskms.GenerateRandomInput{NumberOfBytes: aws.Int32(int32(n)), Recipient: r})
	if err != nil {
		return nil, fmt.Errorf("kmsclient: GenerateRandom: %w", err)
	}
	return open(priv, out.CiphertextForRecipient)
}
