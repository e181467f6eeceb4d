package nsmemu_test

import (
	"context"
	"testing"

	"github.com/cloister/cloister/internal/nsm"
	"github.com/cloister/cloister/parent/nsmemu"
)

// FuzzHandle checks that any input gives a well-formed response of at most
// MaxResponseSize bytes, never a panic, and that input DecodeRequest
// refuses is answered InvalidOperation (or InputTooLarge when oversized).
func FuzzHandle(f *testing.F) {
	for _, r := range []nsm.Request{
		nsm.DescribePCRRequest{Index: 3}, nsm.ExtendPCRRequest{Index: 16, Data: []byte("x")},
		nsm.LockPCRRequest{Index: 20}, nsm.LockPCRsRequest{Range: 33}, nsm.DescribeNSMRequest{},
		nsm.AttestationRequest{Nonce: []byte{1}}, nsm.GetRandomRequest{},
	} {
		b, _ := nsm.EncodeRequest(r)
		f.Add(b)
	}
	e := newEmulator(f, nsmemu.Config{})
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, req []byte) {
		out := e.Handle(ctx, req)
		if len(out) > nsm.MaxResponseSize {
			t.Fatalf("%d-byte response", len(out))
		}
		resp, err := nsm.DecodeResponse(out)
		if err != nil {
			t.Fatalf("Handle(%x) returned undecodable %x: %v", req, out, err)
		}
		if _, derr := nsm.DecodeRequest(req); derr != nil {
			want := nsm.ErrorResponse{Code: nsm.InvalidOperation}
			if len(req) > nsm.MaxRequestSize {
				want.Code = nsm.InputTooLarge
			}
			if resp != want {
				t.Fatalf("Handle(%x) = %#v for an undecodable request, want %#v", req, resp, want)
			}
		}
	})
}
