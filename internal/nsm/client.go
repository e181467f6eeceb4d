package nsm

import (
	"context"
	"fmt"
)

// Transport carries one encoded request to a security module and returns
// its encoded response: the exact bytes the /dev/nsm ioctl carries. A
// Transport reports transport failures as errors; a module error is a
// successful round trip whose response is {"Error": …}.
type Transport interface {
	RoundTrip(ctx context.Context, req []byte) ([]byte, error)
}

// TransportFunc adapts a function to [Transport].
type TransportFunc func(ctx context.Context, req []byte) ([]byte, error)

// RoundTrip calls f(ctx, req).
func (f TransportFunc) RoundTrip(ctx context.Context, req []byte) ([]byte, error) { return f(ctx, req) }

// Client speaks the NSM protocol over a [Transport]: it encodes typed
// requests, checks the protocol's limits before sending, decodes the
// response strictly and turns {"Error": code} into an [*Error]. It is safe
// for concurrent use if its Transport is.
type Client struct {
	t Transport
}

// NewClient returns a Client that sends requests through t.
func NewClient(t Transport) *Client { return &Client{t: t} }

// PCR is the state of one platform configuration register.
type PCR struct {
	Locked bool   // read-only: cannot be extended or locked again
	Value  []byte // current value (48 bytes for SHA-384)
}

const maxIndex = 0xffff

// Do sends req and returns the module's successful response. Before
// sending it refuses, with a [*LimitError], an encoded request over
// [MaxRequestSize]. Errors: transport failures are wrapped as returned by
// the Transport; an undecodable response wraps [ErrInvalidResponse] and
// [ErrMalformed]; an {"Error": code} response is an [*Error] (Success as
// an error code counts as an invalid response).
func (c *Client) Do(ctx context.Context, req Request) (Response, error) {
	if req == nil {
		return nil, fmt.Errorf("nsm: nil request: %w", ErrInvalidArgument)
	}
	op := req.Name()
	b, err := EncodeRequest(req)
	if err != nil {
		return nil, err
	}
	if len(b) > MaxRequestSize {
		return nil, &LimitError{Op: op, Field: "request", Value: len(b), Max: MaxRequestSize, Code: InputTooLarge}
	}
	raw, err := c.t.RoundTrip(ctx, b)
	if err != nil {
		return nil, fmt.Errorf("nsm: %s: %w", op, err)
	}
	resp, err := DecodeResponse(raw)
	if err != nil {
		return nil, fmt.Errorf("nsm: %s: %w: %w", op, ErrInvalidResponse, err)
	}
	if e, ok := resp.(ErrorResponse); ok {
		if e.Code == Success {
			return nil, fmt.Errorf("nsm: %s: module answered with error code Success: %w", op, ErrInvalidResponse)
		}
		return nil, &Error{Op: op, Code: e.Code}
	}
	if resp.Name() != op {
		return nil, fmt.Errorf("nsm: %s: module answered %s: %w", op, resp.Name(), ErrInvalidResponse)
	}
	return resp, nil
}

func checkIndex(op, field string, i int) error {
	if i < 0 || i > maxIndex {
		return &LimitError{Op: op, Field: field, Value: i, Max: maxIndex, Code: InvalidIndex}
	}
	return nil
}

// validPCR reports whether v has the size of a SHA-256, SHA-384 or
// SHA-512 digest.
func validPCR(v []byte) bool { return len(v) == 32 || len(v) == 48 || len(v) == 64 }

// DescribePCR returns the value and lock state of PCR index. It refuses an
// index outside 0..65535 (the wire's u16) with a [*LimitError] matching
// [ErrInvalidIndex]; the module answers ErrInvalidIndex for an index ≥ its
// max_pcrs. A value that is not 32, 48 or 64 bytes long is an invalid
// response.
func (c *Client) DescribePCR(ctx context.Context, index int) (PCR, error) {
	if err := checkIndex("DescribePCR", "index", index); err != nil {
		return PCR{}, err
	}
	resp, err := c.Do(ctx, DescribePCRRequest{Index: uint16(index)})
	if err != nil {
		return PCR{}, err
	}
	r := resp.(DescribePCRResponse)
	if !validPCR(r.Data) {
		return PCR{}, fmt.Errorf("nsm: DescribePCR: %d-byte PCR value: %w", len(r.Data), ErrInvalidResponse)
	}
	return PCR{Locked: r.Lock, Value: r.Data}, nil
}

// ExtendPCR extends PCR index with data (new = SHA384(old ‖ data)) and
// returns the new value. Index checks as in DescribePCR; data is limited
// only by [MaxRequestSize] for the whole request ([*LimitError] matching
// [ErrInputTooLarge]). The module answers ErrReadOnlyIndex for a locked
// PCR.
func (c *Client) ExtendPCR(ctx context.Context, index int, data []byte) ([]byte, error) {
	if err := checkIndex("ExtendPCR", "index", index); err != nil {
		return nil, err
	}
	if data == nil {
		data = []byte{}
	}
	resp, err := c.Do(ctx, ExtendPCRRequest{Index: uint16(index), Data: data})
	if err != nil {
		return nil, err
	}
	r := resp.(ExtendPCRResponse)
	if !validPCR(r.Data) {
		return nil, fmt.Errorf("nsm: ExtendPCR: %d-byte PCR value: %w", len(r.Data), ErrInvalidResponse)
	}
	return r.Data, nil
}

// LockPCR makes PCR index read-only. Index checks as in DescribePCR; the
// module answers ErrReadOnlyIndex for an already locked PCR (PCRs 0–15
// always are).
func (c *Client) LockPCR(ctx context.Context, index int) error {
	if err := checkIndex("LockPCR", "index", index); err != nil {
		return err
	}
	_, err := c.Do(ctx, LockPCRRequest{Index: uint16(index)})
	return err
}

// LockPCRs makes PCRs [0, n) read-only. It refuses n outside 0..65535 with
// a [*LimitError] matching [ErrInvalidIndex]; the module answers
// ErrInvalidIndex for n > max_pcrs.
func (c *Client) LockPCRs(ctx context.Context, n int) error {
	if err := checkIndex("LockPCRs", "range", n); err != nil {
		return err
	}
	_, err := c.Do(ctx, LockPCRsRequest{Range: uint16(n)})
	return err
}

// DescribeNSM returns the module's version, module ID, PCR count, locked
// PCRs and digest.
func (c *Client) DescribeNSM(ctx context.Context) (DescribeNSMResponse, error) {
	resp, err := c.Do(ctx, DescribeNSMRequest{})
	if err != nil {
		return DescribeNSMResponse{}, err
	}
	return resp.(DescribeNSMResponse), nil
}

// Attestation asks the module for a signed attestation document that
// carries userData, nonce and publicKey (nil = absent, encoded as null). It
// refuses, before sending, any of the three over [MaxAttestationField]
// bytes, and an encoded request over [MaxRequestSize], with a
// [*LimitError] matching [ErrInputTooLarge]. An empty document is an
// invalid response. The document is returned as received, unverified.
func (c *Client) Attestation(ctx context.Context, userData, nonce, publicKey []byte) ([]byte, error) {
	for _, f := range []struct {
		name string
		v    []byte
	}{{"user_data", userData}, {"nonce", nonce}, {"public_key", publicKey}} {
		if len(f.v) > MaxAttestationField {
			return nil, &LimitError{Op: "Attestation", Field: f.name, Value: len(f.v), Max: MaxAttestationField, Code: InputTooLarge}
		}
	}
	resp, err := c.Do(ctx, AttestationRequest{UserData: userData, Nonce: nonce, PublicKey: publicKey})
	if err != nil {
		return nil, err
	}
	doc := resp.(AttestationResponse).Document
	if len(doc) == 0 {
		return nil, fmt.Errorf("nsm: Attestation: empty document: %w", ErrInvalidResponse)
	}
	return doc, nil
}

// GetRandom returns the entropy of one GetRandom response (256 bytes from
// QEMU and the Cloister emulator). An empty answer is an invalid response.
func (c *Client) GetRandom(ctx context.Context) ([]byte, error) {
	resp, err := c.Do(ctx, GetRandomRequest{})
	if err != nil {
		return nil, err
	}
	r := resp.(GetRandomResponse).Random
	if len(r) == 0 {
		return nil, fmt.Errorf("nsm: GetRandom: no random bytes: %w", ErrInvalidResponse)
	}
	return r, nil
}
