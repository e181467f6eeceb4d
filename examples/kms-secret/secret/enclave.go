package secret

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log"
	"net"
	"time"

	"github.com/aws/smithy-go"
)

// DecryptFunc unseals req's ciphertext; in an enclave it is a
// kmsclient.Client's Decrypt with the attested Recipient.
type DecryptFunc func(ctx context.Context, req Request) ([]byte, error)

// requestTimeout bounds the handling of one request.
const requestTimeout = 2 * time.Minute

// Serve accepts connections on l until ctx ends or l fails, reading one
// Request per connection, calling decrypt and answering one Response. A
// failure is answered as an *EnclaveError whose Code is the key service's
// error code when decrypt's error carries one (a smithy.APIError, as the
// AWS SDK returns), and logged with logf (nil: log.Printf). Serve closes l
// when ctx ends and returns nil then.
func Serve(ctx context.Context, l net.Listener, decrypt DecryptFunc, logf func(format string, args ...any)) error {
	if logf == nil {
		logf = log.Printf
	}
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			logf("accept: %v", err)
			continue
		}
		go handle(ctx, c, decrypt, logf)
	}
}

// handle answers one connection.
func handle(ctx context.Context, c net.Conn, decrypt DecryptFunc, logf func(string, ...any)) {
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	_ = c.SetDeadline(time.Now().Add(requestTimeout))
	resp := answer(ctx, c, decrypt)
	if resp.Error != nil {
		logf("request from %v refused: %s: %s", c.RemoteAddr(), resp.Error.Code, resp.Error.Message)
	} else {
		logf("request from %v: unsealed a %d-byte secret", c.RemoteAddr(), len(resp.Plaintext))
	}
	b, err := json.Marshal(resp)
	if err == nil {
		_, err = c.Write(append(b, '\n'))
	}
	if err != nil {
		logf("answering %v: %v", c.RemoteAddr(), err)
	}
}

func answer(ctx context.Context, c net.Conn, decrypt DecryptFunc) Response {
	line, err := bufio.NewReader(io.LimitReader(c, maxMessage)).ReadBytes('\n')
	if err != nil {
		return Response{Error: &EnclaveError{Code: "BadRequest", Message: "reading the request: " + err.Error()}}
	}
	var req Request
	if err := json.Unmarshal(line, &req); err != nil {
		return Response{Error: &EnclaveError{Code: "BadRequest", Message: "the request is not JSON: " + err.Error()}}
	}
	if req.Endpoint == "" || req.Region == "" || req.AccessKeyID == "" || req.SecretAccessKey == "" || len(req.Ciphertext) == 0 {
		return Response{Error: &EnclaveError{Code: "BadRequest", Message: "the request needs endpoint, region, access_key_id, secret_access_key and ciphertext"}}
	}
	rec := &attestationRecorder{}
	pt, err := decrypt(context.WithValue(ctx, recorderKey{}, rec), req)
	if err != nil {
		code := "InternalError"
		var api smithy.APIError
		if errors.As(err, &api) {
			code = api.ErrorCode()
		}
		return Response{Error: &EnclaveError{Code: code, Message: err.Error()}}
	}
	return Response{Plaintext: pt, Attestation: rec.doc}
}

type recorderKey struct{}

type attestationRecorder struct{ doc []byte }

// RecordAttestation remembers doc as the attestation document the enclave
// presented while answering the request ctx belongs to; Serve returns it to
// the parent with the answer. Call it from the Attester the DecryptFunc's
// KMS client uses. Outside Serve it does nothing.
func RecordAttestation(ctx context.Context, doc []byte) {
	if rec, ok := ctx.Value(recorderKey{}).(*attestationRecorder); ok {
		rec.doc = append([]byte(nil), doc...)
	}
}
