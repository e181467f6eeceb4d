package secret

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
)

// ErrInvalidPCR0 means a PCR0 is not 48 bytes (96 hex digits).
var ErrInvalidPCR0 = errors.New("secret: PCR0 must be 96 hexadecimal digits (SHA-384)")

// KeyPolicy describes who may use a sealing key.
type KeyPolicy struct {
	// Admin is the principal ARN that manages the key and seals secrets
	// with it (kms:*), e.g. arn:aws:iam::111122223333:user/admin.
	Admin string
	// Enclave is the principal ARN whose credentials the enclave uses; it
	// may call kms:Decrypt only with a Recipient attestation document.
	Enclave string
	// PCR0 is the enclave image's PCR0 in hex (build-enclave's
	// Measurements.PCR0).
	PCR0 string
}

// JSON returns the key policy: Admin may do everything; Enclave may call
// kms:Decrypt only when the request's verified Recipient attestation
// document has PCR0 = p.PCR0. It fails with ErrInvalidPCR0 when PCR0 is not
// 96 hex digits, and when an ARN is empty.
func (p KeyPolicy) JSON() (string, error) {
	if b, err := hex.DecodeString(p.PCR0); err != nil || len(b) != 48 {
		return "", fmt.Errorf("%w: %q", ErrInvalidPCR0, p.PCR0)
	}
	if p.Admin == "" || p.Enclave == "" {
		return "", errors.New("secret: KeyPolicy needs both the Admin and the Enclave principal ARN")
	}
	doc := map[string]any{
		"Version": "2012-10-17",
		"Statement": []any{
			map[string]any{
				"Sid": "Admin", "Effect": "Allow", "Principal": map[string]any{"AWS": p.Admin},
				"Action": "kms:*", "Resource": "*",
			},
			map[string]any{
				"Sid": "EnclaveDecryptsWithAttestation", "Effect": "Allow", "Principal": map[string]any{"AWS": p.Enclave},
				"Action": "kms:Decrypt", "Resource": "*",
				"Condition": map[string]any{"StringEqualsIgnoreCase": map[string]any{
					"kms:RecipientAttestation:ImageSha384": strings.ToLower(p.PCR0),
				}},
			},
		},
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// CreateKey creates a symmetric key with policy p (the client must sign as
// p.Admin) and returns its key ID.
func CreateKey(ctx context.Context, c *awskms.Client, p KeyPolicy) (string, error) {
	pol, err := p.JSON()
	if err != nil {
		return "", err
	}
	out, err := c.CreateKey(ctx, &awskms.CreateKeyInput{
		Description: aws.String("kms-secret example: released only to the enclave image with PCR0 " + p.PCR0),
		Policy:      aws.String(pol),
	})
	if err != nil {
		return "", fmt.Errorf("secret: creating the key: %w", err)
	}
	return aws.ToString(out.KeyMetadata.KeyId), nil
}

// Seal encrypts plaintext (at most 4096 bytes, KMS's limit) under keyID and
// returns the ciphertext blob.
func Seal(ctx context.Context, c *awskms.Client, keyID string, plaintext []byte) ([]byte, error) {
	out, err := c.Encrypt(ctx, &awskms.EncryptInput{KeyId: aws.String(keyID), Plaintext: plaintext})
	if err != nil {
		return nil, fmt.Errorf("secret: encrypting: %w", err)
	}
	return out.CiphertextBlob, nil
}

// Unseal sends req as one JSON line on conn (a stream to the enclave's
// service) and reads the enclave's one-line answer. It returns the secret,
// or an *EnclaveError when the enclave reports a failure (e.g. the key
// service refused it: Code "AccessDeniedException"). ctx's deadline bounds
// the exchange; conn is not closed.
func Unseal(ctx context.Context, conn net.Conn, req Request) ([]byte, error) {
	pt, _, err := UnsealAttested(ctx, conn, req)
	return pt, err
}

// UnsealAttested is Unseal that also returns the attestation document the
// enclave presented to the key service (nil if it recorded none).
func UnsealAttested(ctx context.Context, conn net.Conn, req Request) (plaintext, attestation []byte, err error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
		defer conn.SetDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(aLongTimeAgo) })
	defer stop()
	b, err := json.Marshal(req)
	if err != nil {
		return nil, nil, err
	}
	if _, err := conn.Write(append(b, '\n')); err != nil {
		return nil, nil, fmt.Errorf("secret: sending the request to the enclave: %w", err)
	}
	line, err := bufio.NewReader(io.LimitReader(conn, maxMessage)).ReadBytes('\n')
	if err != nil {
		return nil, nil, fmt.Errorf("secret: reading the enclave's answer: %w", err)
	}
	var resp Response
	if err := json.Unmarshal(line, &resp); err != nil {
		return nil, nil, fmt.Errorf("secret: the enclave's answer is not a Response: %w", err)
	}
	if resp.Error != nil {
		return nil, nil, resp.Error
	}
	return resp.Plaintext, resp.Attestation, nil
}
