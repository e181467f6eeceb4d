package kmsclient

import (
	"bytes"
	"context"
	"crypto"
	_ "crypto/sha256" // the SHA-2 hashes the signing algorithms name
	_ "crypto/sha512"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go/middleware"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// SignInput asks for a signature. MessageType is RAW (default: Message is
// hashed with the algorithm's hash) or DIGEST (Message is the digest).
type SignInput struct {
	KeyID            string
	Message          []byte
	MessageType      types.MessageType
	SigningAlgorithm types.SigningAlgorithmSpec
}

// Signature is a signature made by the key service.
type Signature struct {
	// Signature is DER for ECDSA, raw for RSA, as AWS KMS returns it.
	Signature        []byte
	SigningAlgorithm types.SigningAlgorithmSpec
	// KeyID is the ARN of the signing key.
	KeyID string
}

// MaxSignMessage is the largest Message AWS KMS's Sign takes.
const MaxSignMessage = 4096

// signingHash is the hash a KMS signing algorithm applies (the suffix of
// its name).
func signingHash(alg types.SigningAlgorithmSpec) (crypto.Hash, error) {
	a := string(alg)
	switch {
	case strings.HasSuffix(a, "_SHA_256"):
		return crypto.SHA256, nil
	case strings.HasSuffix(a, "_SHA_384"):
		return crypto.SHA384, nil
	case strings.HasSuffix(a, "_SHA_512"):
		return crypto.SHA512, nil
	}
	return 0, fmt.Errorf("kmsclient: signing algorithm %q: want an RSASSA_* or ECDSA_* algorithm with SHA-256, -384 or -512", alg)
}

// Sign is an attestation-gated Sign, a Cloister extension: it attests the
// exact digest to be signed (the document's user_data) and sends the
// document in the request's "CloisterAttestation" member, so a key policy
// can allow kms:Sign only to enclaves whose kms:RecipientAttestation:*
// condition keys match. The key service refuses a document made for
// another digest. AWS KMS itself does not know the member and refuses the
// request: use KMS().Sign there.
func (c *Client) Sign(ctx context.Context, in SignInput) (Signature, error) {
	if len(in.Message) == 0 || len(in.Message) > MaxSignMessage {
		return Signature{}, fmt.Errorf("kmsclient: Sign: Message must be 1 to %d bytes", MaxSignMessage)
	}
	h, err := signingHash(in.SigningAlgorithm)
	if err != nil {
		return Signature{}, err
	}
	digest := in.Message
	switch in.MessageType {
	case "", types.MessageTypeRaw:
		d := h.New()
		d.Write(in.Message)
		digest = d.Sum(nil)
	case types.MessageTypeDigest:
		if len(digest) != h.Size() {
			return Signature{}, fmt.Errorf("kmsclient: Sign: a %s digest is %d bytes, not %d", in.SigningAlgorithm, h.Size(), len(digest))
		}
	default:
		return Signature{}, fmt.Errorf("kmsclient: Sign: MessageType %q: want RAW or DIGEST", in.MessageType)
	}
	doc, err := c.att.Attest(ctx, nil, digest, nil)
	if err != nil {
		return Signature{}, fmt.Errorf("%w: %w", ErrAttest, err)
	}
	out, err := c.kms.Sign(ctx, &awskms.SignInput{KeyId: aws.String(in.KeyID), Message: in.Message, MessageType: in.MessageType, SigningAlgorithm: in.SigningAlgorithm},
		withMember("CloisterAttestation", map[string][]byte{"AttestationDocument": doc}))
	if err != nil {
		return Signature{}, fmt.Errorf("kmsclient: Sign: %w", err)
	}
	return Signature{Signature: out.Signature, SigningAlgorithm: out.SigningAlgorithm, KeyID: aws.ToString(out.KeyId)}, nil
}

// withMember adds one top-level member to the serialized JSON request body,
// before the request is signed.
func withMember(name string, value any) func(*awskms.Options) {
	return func(o *awskms.Options) {
		o.APIOptions = append(o.APIOptions, func(st *middleware.Stack) error {
			return st.Serialize.Add(middleware.SerializeMiddlewareFunc("CloisterExtensionMember", func(ctx context.Context, in middleware.SerializeInput, next middleware.SerializeHandler) (middleware.SerializeOutput, middleware.Metadata, error) {
				req, ok := in.Request.(*smithyhttp.Request)
				if !ok {
					return middleware.SerializeOutput{}, middleware.Metadata{}, fmt.Errorf("kmsclient: unexpected request type %T", in.Request)
				}
				var body []byte
				if s := req.GetStream(); s != nil {
					b, err := io.ReadAll(s)
					if err != nil {
						return middleware.SerializeOutput{}, middleware.Metadata{}, err
					}
					body = b
				}
				m := map[string]json.RawMessage{}
				if len(bytes.TrimSpace(body)) > 0 {
					if err := json.Unmarshal(body, &m); err != nil {
						return middleware.SerializeOutput{}, middleware.Metadata{}, fmt.Errorf("kmsclient: the SDK's request body: %w", err)
					}
				}
				v, err := json.Marshal(value)
				if err != nil {
					return middleware.SerializeOutput{}, middleware.Metadata{}, err
				}
				m[name] = v
				nb, err := json.Marshal(m)
				if err != nil {
					return middleware.SerializeOutput{}, middleware.Metadata{}, err
				}
				if in.Request, err = req.SetStream(bytes.NewReader(nb)); err != nil {
					return middleware.SerializeOutput{}, middleware.Metadata{}, err
				}
				return next.HandleSerialize(ctx, in)
			}), middleware.After)
		})
	}
}
