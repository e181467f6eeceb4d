package secret

import (
	"errors"
	"fmt"
	"time"
)

// Port is the enclave's vsock port for unseal requests.
const Port = 5000

// maxMessage bounds one JSON line of the protocol.
const maxMessage = 64 << 10

// aLongTimeAgo is a deadline in the past, which unblocks pending I/O.
var aLongTimeAgo = time.Unix(1, 0)

// Request is what the parent sends the enclave: the sealed secret and how
// to reach and sign requests to the key service. The credentials are the
// enclave principal's (KeyPolicy.Enclave); they are useless without the
// enclave's attestation.
type Request struct {
	// Endpoint is the key service's URL as seen from the parent, e.g.
	// http://127.0.0.1:7777; the enclave reaches it through the egress
	// proxy.
	Endpoint string `json:"endpoint"`
	// Region is the signing region (Cloister's key service: us-east-1).
	Region string `json:"region"`
	// AccessKeyID, SecretAccessKey and SessionToken sign the requests.
	AccessKeyID     string `json:"access_key_id"`
	SecretAccessKey string `json:"secret_access_key"`
	SessionToken    string `json:"session_token,omitempty"`
	// Ciphertext is the blob Seal returned.
	Ciphertext []byte `json:"ciphertext"`
	// KeyID, when set, must be the ciphertext's key.
	KeyID string `json:"key_id,omitempty"`
}

// Response is the enclave's answer: the secret, or an error.
type Response struct {
	Plaintext []byte `json:"plaintext,omitempty"`
	// Attestation is the attestation document the enclave presented to the
	// key service (recorded with RecordAttestation), so the parent can show
	// or check what was proven.
	Attestation []byte        `json:"attestation,omitempty"`
	Error       *EnclaveError `json:"error,omitempty"`
}

// ErrEnclave is matched (errors.Is) by every *EnclaveError.
var ErrEnclave = errors.New("secret: the enclave could not unseal the secret")

// EnclaveError is a failure the enclave reports. Code is the key service's
// error code when it answered with one (e.g. "AccessDeniedException"),
// else "InternalError" or "BadRequest".
type EnclaveError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error gives the code and the message.
func (e *EnclaveError) Error() string {
	return fmt.Sprintf("secret: the enclave could not unseal the secret: %s: %s", e.Code, e.Message)
}

// Is reports whether target is ErrEnclave.
func (e *EnclaveError) Is(target error) bool { return target == ErrEnclave }
