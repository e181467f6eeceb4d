package nsm_test

import (
	"bytes"
	"testing"

	"github.com/fxamacker/cbor/v2"
	"github.com/google/go-cmp/cmp"
	"github.com/hf/nsm/request"
	"github.com/hf/nsm/response"

	"github.com/cloister/cloister/internal/nsm"
)

// Cross-check with github.com/hf/nsm, an independent Go implementation of
// the same wire format: its requests must encode to the same bytes as ours
// and decode to the same values; our responses must decode with its types
// and its responses with ours.

func TestHFNSMRequests(t *testing.T) {
	cases := []struct {
		theirs request.Request
		ours   nsm.Request
	}{
		{&request.DescribePCR{Index: 3}, nsm.DescribePCRRequest{Index: 3}},
		{&request.DescribePCR{Index: 1000}, nsm.DescribePCRRequest{Index: 1000}},
		{&request.ExtendPCR{Index: 16, Data: []byte("hello")}, nsm.ExtendPCRRequest{Index: 16, Data: []byte("hello")}},
		{&request.LockPCR{Index: 17}, nsm.LockPCRRequest{Index: 17}},
		{&request.LockPCRs{Range: 32}, nsm.LockPCRsRequest{Range: 32}},
		{&request.DescribeNSM{}, nsm.DescribeNSMRequest{}},
		{&request.GetRandom{}, nsm.GetRandomRequest{}},
		{&request.Attestation{}, nsm.AttestationRequest{}},
		{&request.Attestation{UserData: []byte{1}, Nonce: bytes.Repeat([]byte{2}, 1024), PublicKey: []byte{3, 4}},
			nsm.AttestationRequest{UserData: []byte{1}, Nonce: bytes.Repeat([]byte{2}, 1024), PublicKey: []byte{3, 4}}},
	}
	for _, c := range cases {
		t.Run(c.ours.Name(), func(t *testing.T) {
			theirs, err := cbor.Marshal(c.theirs.Encoded())
			if err != nil {
				t.Fatalf("hf/nsm encode: %v", err)
			}
			ours, err := nsm.EncodeRequest(c.ours)
			if err != nil {
				t.Fatalf("EncodeRequest: %v", err)
			}
			if !bytes.Equal(theirs, ours) {
				t.Fatalf("encodings differ:\nhf/nsm %x\nours   %x", theirs, ours)
			}
			dec, err := nsm.DecodeRequest(theirs)
			if err != nil {
				t.Fatalf("DecodeRequest(hf/nsm bytes): %v", err)
			}
			if d := cmp.Diff(c.ours, dec); d != "" {
				t.Fatalf("decoded hf/nsm request mismatch (-want +got):\n%s", d)
			}
		})
	}
}

func TestHFNSMResponsesOursToTheirs(t *testing.T) {
	pcr := bytes.Repeat([]byte{0x5a}, 48)
	cases := []struct {
		ours nsm.Response
		want response.Response
	}{
		{nsm.DescribePCRResponse{Lock: true, Data: pcr}, response.Response{DescribePCR: &response.DescribePCR{Lock: true, Data: pcr}}},
		{nsm.ExtendPCRResponse{Data: pcr}, response.Response{ExtendPCR: &response.ExtendPCR{Data: pcr}}},
		{nsm.LockPCRResponse{}, response.Response{LockPCR: &response.LockPCR{}}},
		{nsm.LockPCRsResponse{}, response.Response{LockPCRs: &response.LockPCRs{}}},
		{nsm.DescribeNSMResponse{VersionMajor: 1, VersionMinor: 2, VersionPatch: 3, ModuleID: "i-0-enc1", MaxPCRs: 32,
			LockedPCRs: []uint16{0, 1, 2, 15}, Digest: nsm.DigestSHA384},
			response.Response{DescribeNSM: &response.DescribeNSM{VersionMajor: 1, VersionMinor: 2, VersionPatch: 3,
				ModuleID: "i-0-enc1", MaxPCRs: 32, LockedPCRs: []uint16{0, 1, 2, 15}, Digest: response.DigestSHA384}}},
		{nsm.AttestationResponse{Document: []byte{0x84, 1, 2}}, response.Response{Attestation: &response.Attestation{Document: []byte{0x84, 1, 2}}}},
		{nsm.GetRandomResponse{Random: []byte{9, 9}}, response.Response{GetRandom: &response.GetRandom{Random: []byte{9, 9}}}},
		{nsm.ErrorResponse{Code: nsm.ReadOnlyIndex}, response.Response{Error: response.ECReadOnlyIndex}},
		{nsm.ErrorResponse{Code: nsm.InvalidIndex}, response.Response{Error: "InvalidIndex"}},
	}
	for _, c := range cases {
		t.Run(c.ours.Name(), func(t *testing.T) {
			b, err := nsm.EncodeResponse(c.ours)
			if err != nil {
				t.Fatalf("EncodeResponse: %v", err)
			}
			var got response.Response
			if err := cbor.Unmarshal(b, &got); err != nil {
				t.Fatalf("hf/nsm decode of %x: %v", b, err)
			}
			if d := cmp.Diff(c.want, got); d != "" {
				t.Fatalf("hf/nsm decoded differently (-want +got):\n%s", d)
			}
		})
	}
}

func TestHFNSMResponsesTheirsToOurs(t *testing.T) {
	pcr := bytes.Repeat([]byte{0x5a}, 48)
	cases := []struct {
		theirs any // what hf/nsm's types marshal to on the wire
		want   nsm.Response
	}{
		{map[string]*response.DescribePCR{"DescribePCR": {Lock: false, Data: pcr}}, nsm.DescribePCRResponse{Lock: false, Data: pcr}},
		{map[string]*response.ExtendPCR{"ExtendPCR": {Data: pcr}}, nsm.ExtendPCRResponse{Data: pcr}},
		{"LockPCR", nsm.LockPCRResponse{}},
		{"LockPCRs", nsm.LockPCRsResponse{}},
		{map[string]*response.DescribeNSM{"DescribeNSM": {VersionMajor: 1, ModuleID: "m", MaxPCRs: 32,
			LockedPCRs: []uint16{0, 300}, Digest: response.DigestSHA512}},
			nsm.DescribeNSMResponse{VersionMajor: 1, ModuleID: "m", MaxPCRs: 32, LockedPCRs: []uint16{0, 300}, Digest: nsm.DigestSHA512}},
		{map[string]*response.Attestation{"Attestation": {Document: []byte{1, 2, 3}}}, nsm.AttestationResponse{Document: []byte{1, 2, 3}}},
		{map[string]*response.GetRandom{"GetRandom": {Random: []byte{4}}}, nsm.GetRandomResponse{Random: []byte{4}}},
		{map[string]response.ErrorCode{"Error": response.ECInputTooLarge}, nsm.ErrorResponse{Code: nsm.InputTooLarge}},
	}
	for _, c := range cases {
		t.Run(c.want.Name(), func(t *testing.T) {
			b, err := cbor.Marshal(c.theirs)
			if err != nil {
				t.Fatalf("marshal: %v", err)
			}
			got, err := nsm.DecodeResponse(b)
			if err != nil {
				t.Fatalf("DecodeResponse(%x): %v", b, err)
			}
			if d := cmp.Diff(c.want, got); d != "" {
				t.Fatalf("mismatch (-want +got):\n%s", d)
			}
		})
	}
}
