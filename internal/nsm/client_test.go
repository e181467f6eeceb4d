package nsm_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/internal/nsm"
)

// recorder is a Transport that records requests and answers with a fixed
// response (encoded) or error.
type recorder struct {
	calls [][]byte
	resp  []byte
	err   error
}

func (r *recorder) RoundTrip(ctx context.Context, req []byte) ([]byte, error) {
	r.calls = append(r.calls, append([]byte(nil), req...))
	return r.resp, r.err
}

func answer(t *testing.T, resp nsm.Response) *recorder {
	t.Helper()
	b, err := nsm.EncodeResponse(resp)
	if err != nil {
		t.Fatal(err)
	}
	return &recorder{resp: b}
}

func TestClientLimitsBeforeSend(t *testing.T) {
	ctx := context.Background()
	big := make([]byte, nsm.MaxAttestationField+1)
	ok := make([]byte, nsm.MaxAttestationField)
	cases := []struct {
		name  string
		call  func(c *nsm.Client) error
		field string
		is    error
	}{
		{"user_data", func(c *nsm.Client) error { _, err := c.Attestation(ctx, big, nil, nil); return err }, "user_data", nsm.ErrInputTooLarge},
		{"nonce", func(c *nsm.Client) error { _, err := c.Attestation(ctx, nil, big, nil); return err }, "nonce", nsm.ErrInputTooLarge},
		{"public_key", func(c *nsm.Client) error { _, err := c.Attestation(ctx, ok, ok, big); return err }, "public_key", nsm.ErrInputTooLarge},
		{"extend data over 4 KiB", func(c *nsm.Client) error { _, err := c.ExtendPCR(ctx, 16, make([]byte, 4080)); return err }, "request", nsm.ErrInputTooLarge},
		{"index negative", func(c *nsm.Client) error { _, err := c.DescribePCR(ctx, -1); return err }, "index", nsm.ErrInvalidIndex},
		{"index over u16", func(c *nsm.Client) error { _, err := c.ExtendPCR(ctx, 65536, nil); return err }, "index", nsm.ErrInvalidIndex},
		{"lock index", func(c *nsm.Client) error { return c.LockPCR(ctx, 1<<20) }, "index", nsm.ErrInvalidIndex},
		{"range", func(c *nsm.Client) error { return c.LockPCRs(ctx, -5) }, "range", nsm.ErrInvalidIndex},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{}
			err := tc.call(nsm.NewClient(rec))
			var le *nsm.LimitError
			if !errors.As(err, &le) || le.Field != tc.field || !errors.Is(err, tc.is) {
				t.Fatalf("error = %v, want *LimitError on %s matching %v", err, tc.field, tc.is)
			}
			if len(rec.calls) != 0 {
				t.Fatalf("transport was called %d times; the limit must be checked before sending", len(rec.calls))
			}
		})
	}
	// The largest legal attestation request (3 × 1024 bytes) is sent.
	rec := answer(t, nsm.AttestationResponse{Document: []byte{1}})
	if _, err := nsm.NewClient(rec).Attestation(ctx, ok, ok, ok); err != nil || len(rec.calls) != 1 {
		t.Fatalf("3×1024-byte attestation: %v, %d calls", err, len(rec.calls))
	}
	if len(rec.calls[0]) > nsm.MaxRequestSize {
		t.Fatalf("request is %d bytes", len(rec.calls[0]))
	}
}

func TestClientModuleErrors(t *testing.T) {
	ctx := context.Background()
	for _, code := range []nsm.ErrorCode{nsm.InvalidIndex, nsm.ReadOnlyIndex, nsm.InvalidOperation, nsm.InternalError} {
		c := nsm.NewClient(answer(t, nsm.ErrorResponse{Code: code}))
		err := c.LockPCR(ctx, 3)
		var me *nsm.Error
		if !errors.As(err, &me) || me.Code != code || me.Op != "LockPCR" {
			t.Fatalf("LockPCR with %s answer: %v", code, err)
		}
	}
	// Success as an error code, mismatched variant, garbage, short PCR.
	cases := []struct {
		name string
		rec  *recorder
	}{
		{"error Success", answer(t, nsm.ErrorResponse{Code: nsm.Success})},
		{"wrong variant", answer(t, nsm.LockPCRsResponse{})},
		{"garbage", &recorder{resp: []byte{0xff}}},
		{"empty", &recorder{resp: nil}},
		{"short pcr", answer(t, nsm.DescribePCRResponse{Data: []byte{1, 2}})},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := nsm.NewClient(tc.rec).DescribePCR(ctx, 0)
			if !errors.Is(err, nsm.ErrInvalidResponse) {
				t.Fatalf("error = %v, want ErrInvalidResponse", err)
			}
		})
	}
	transportErr := errors.New("link down")
	_, err := nsm.NewClient(&recorder{err: transportErr}).GetRandom(ctx)
	if !errors.Is(err, transportErr) {
		t.Fatalf("transport error not wrapped: %v", err)
	}
	if _, err := nsm.NewClient(answer(t, nsm.AttestationResponse{Document: []byte{}})).Attestation(ctx, nil, nil, nil); !errors.Is(err, nsm.ErrInvalidResponse) {
		t.Fatalf("empty document: %v", err)
	}
	if _, err := nsm.NewClient(answer(t, nsm.GetRandomResponse{Random: []byte{}})).GetRandom(ctx); !errors.Is(err, nsm.ErrInvalidResponse) {
		t.Fatalf("empty random: %v", err)
	}
	if _, err := nsm.NewClient(&recorder{}).Do(ctx, nil); !errors.Is(err, nsm.ErrInvalidArgument) {
		t.Fatalf("Do(nil): %v", err)
	}
}

func TestClientSendsExactRequests(t *testing.T) {
	ctx := context.Background()
	pcr := bytes.Repeat([]byte{1}, 48)
	rec := answer(t, nsm.ExtendPCRResponse{Data: pcr})
	got, err := nsm.NewClient(rec).ExtendPCR(ctx, 16, nil)
	if err != nil || !bytes.Equal(got, pcr) {
		t.Fatalf("ExtendPCR = %x, %v", got, err)
	}
	want := unhex(t, "a1"+hExtendPCR+"a2"+hIndex+"10"+hData+"40")
	if !bytes.Equal(rec.calls[0], want) {
		t.Fatalf("sent %x, want %x (nil data is an empty byte string)", rec.calls[0], want)
	}

	rec = answer(t, nsm.AttestationResponse{Document: []byte{9}})
	if _, err := nsm.NewClient(rec).Attestation(ctx, nil, []byte{}, nil); err != nil {
		t.Fatal(err)
	}
	want = unhex(t, "a1"+hAttestation+"a3"+hUserData+"f6"+hNonce+"40"+hPublicKey+"f6")
	if !bytes.Equal(rec.calls[0], want) {
		t.Fatalf("sent %x, want %x", rec.calls[0], want)
	}

	desc := nsm.DescribeNSMResponse{VersionMajor: 1, ModuleID: "m", MaxPCRs: 32, LockedPCRs: []uint16{0}, Digest: nsm.DigestSHA384}
	d, err := nsm.NewClient(answer(t, desc)).DescribeNSM(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(desc, d); diff != "" {
		t.Fatalf("DescribeNSM (-want +got):\n%s", diff)
	}
}
