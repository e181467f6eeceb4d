package nsm_test

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/internal/nsm"
)

// unhex decodes hex written with spaces and "|" separators; rep(x, n)
// repeats a hex byte. The expected encodings below were written by hand
// from the serde_cbor rules (nitro-reference §3.2), not produced by the
// encoder under test.
func unhex(t testing.TB, s string) []byte {
	t.Helper()
	s = strings.NewReplacer(" ", "", "|", "", "\n", "", "\t", "").Replace(s)
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("bad test hex %q: %v", s, err)
	}
	return b
}

func rep(x string, n int) string { return strings.Repeat(x, n) }

// Text-string encodings of the names, byte by byte.
const (
	hDescribePCR = "6b 44 65 73 63 72 69 62 65 50 43 52"       // "DescribePCR"
	hExtendPCR   = "69 45 78 74 65 6e 64 50 43 52"             // "ExtendPCR"
	hLockPCR     = "67 4c 6f 63 6b 50 43 52"                   // "LockPCR"
	hLockPCRs    = "68 4c 6f 63 6b 50 43 52 73"                // "LockPCRs"
	hDescribeNSM = "6b 44 65 73 63 72 69 62 65 4e 53 4d"       // "DescribeNSM"
	hAttestation = "6b 41 74 74 65 73 74 61 74 69 6f 6e"       // "Attestation"
	hGetRandom   = "69 47 65 74 52 61 6e 64 6f 6d"             // "GetRandom"
	hIndex       = "65 69 6e 64 65 78"                         // "index"
	hData        = "64 64 61 74 61"                            // "data"
	hRange       = "65 72 61 6e 67 65"                         // "range"
	hUserData    = "69 75 73 65 72 5f 64 61 74 61"             // "user_data"
	hNonce       = "65 6e 6f 6e 63 65"                         // "nonce"
	hPublicKey   = "6a 70 75 62 6c 69 63 5f 6b 65 79"          // "public_key"
	hLock        = "64 6c 6f 63 6b"                            // "lock"
	hDocument    = "68 64 6f 63 75 6d 65 6e 74"                // "document"
	hRandom      = "66 72 61 6e 64 6f 6d"                      // "random"
	hError       = "65 45 72 72 6f 72"                         // "Error"
	hVerMajor    = "6d 76 65 72 73 69 6f 6e 5f 6d 61 6a 6f 72" // "version_major"
	hVerMinor    = "6d 76 65 72 73 69 6f 6e 5f 6d 69 6e 6f 72" // "version_minor"
	hVerPatch    = "6d 76 65 72 73 69 6f 6e 5f 70 61 74 63 68" // "version_patch"
	hModuleID    = "69 6d 6f 64 75 6c 65 5f 69 64"             // "module_id"
	hMaxPCRs     = "68 6d 61 78 5f 70 63 72 73"                // "max_pcrs"
	hLockedPCRs  = "6b 6c 6f 63 6b 65 64 5f 70 63 72 73"       // "locked_pcrs"
	hDigest      = "66 64 69 67 65 73 74"                      // "digest"
	hSHA384      = "66 53 48 41 33 38 34"                      // "SHA384"
)

type requestGolden struct {
	name string
	req  nsm.Request
	hex  string
}

func requestGoldens() []requestGolden {
	return []requestGolden{
		{"DescribePCR 0", nsm.DescribePCRRequest{Index: 0}, "a1" + hDescribePCR + "a1" + hIndex + "00"},
		{"DescribePCR 23", nsm.DescribePCRRequest{Index: 23}, "a1" + hDescribePCR + "a1" + hIndex + "17"},
		{"DescribePCR 24", nsm.DescribePCRRequest{Index: 24}, "a1" + hDescribePCR + "a1" + hIndex + "18 18"},
		{"DescribePCR 300", nsm.DescribePCRRequest{Index: 300}, "a1" + hDescribePCR + "a1" + hIndex + "19 01 2c"},
		{"DescribePCR 65535", nsm.DescribePCRRequest{Index: 65535}, "a1" + hDescribePCR + "a1" + hIndex + "19 ff ff"},
		{"ExtendPCR", nsm.ExtendPCRRequest{Index: 16, Data: []byte{1, 2, 3}},
			"a1" + hExtendPCR + "a2" + hIndex + "10" + hData + "43 01 02 03"},
		{"ExtendPCR empty data", nsm.ExtendPCRRequest{Index: 31, Data: []byte{}},
			"a1" + hExtendPCR + "a2" + hIndex + "18 1f" + hData + "40"},
		{"ExtendPCR 48 bytes", nsm.ExtendPCRRequest{Index: 16, Data: bytes.Repeat([]byte{0xab}, 48)},
			"a1" + hExtendPCR + "a2" + hIndex + "10" + hData + "58 30" + rep("ab", 48)},
		{"LockPCR", nsm.LockPCRRequest{Index: 16}, "a1" + hLockPCR + "a1" + hIndex + "10"},
		{"LockPCRs", nsm.LockPCRsRequest{Range: 32}, "a1" + hLockPCRs + "a1" + hRange + "18 20"},
		{"DescribeNSM", nsm.DescribeNSMRequest{}, "6b 44 65 73 63 72 69 62 65 4e 53 4d"},
		{"Attestation none", nsm.AttestationRequest{},
			"a1" + hAttestation + "a3" + hUserData + "f6" + hNonce + "f6" + hPublicKey + "f6"},
		{"Attestation some", nsm.AttestationRequest{UserData: []byte("ab"), Nonce: []byte{}, PublicKey: []byte{0x30}},
			"a1" + hAttestation + "a3" + hUserData + "42 61 62" + hNonce + "40" + hPublicKey + "41 30"},
		{"Attestation 1024", nsm.AttestationRequest{Nonce: bytes.Repeat([]byte{0x80}, 1024)},
			"a1" + hAttestation + "a3" + hUserData + "f6" + hNonce + "59 04 00" + rep("80", 1024) + hPublicKey + "f6"},
		{"GetRandom", nsm.GetRandomRequest{}, "69 47 65 74 52 61 6e 64 6f 6d"},
	}
}

type responseGolden struct {
	name string
	resp nsm.Response
	hex  string
}

func responseGoldens() []responseGolden {
	return []responseGolden{
		{"DescribePCR", nsm.DescribePCRResponse{Lock: true, Data: make([]byte, 48)},
			"a1" + hDescribePCR + "a2" + hLock + "f5" + hData + "58 30" + rep("00", 48)},
		{"DescribePCR unlocked", nsm.DescribePCRResponse{Lock: false, Data: bytes.Repeat([]byte{0x11}, 48)},
			"a1" + hDescribePCR + "a2" + hLock + "f4" + hData + "58 30" + rep("11", 48)},
		{"ExtendPCR", nsm.ExtendPCRResponse{Data: bytes.Repeat([]byte{0xaa}, 48)},
			"a1" + hExtendPCR + "a1" + hData + "58 30" + rep("aa", 48)},
		{"LockPCR", nsm.LockPCRResponse{}, hLockPCR},
		{"LockPCRs", nsm.LockPCRsResponse{}, hLockPCRs},
		{"DescribeNSM", nsm.DescribeNSMResponse{VersionMajor: 1, ModuleID: "i-1", MaxPCRs: 32,
			LockedPCRs: []uint16{0, 1, 24}, Digest: nsm.DigestSHA384},
			"a1" + hDescribeNSM + "a7" + hVerMajor + "01" + hVerMinor + "00" + hVerPatch + "00" +
				hModuleID + "63 69 2d 31" + hMaxPCRs + "18 20" + hLockedPCRs + "83 00 01 18 18" + hDigest + hSHA384},
		{"DescribeNSM no locked", nsm.DescribeNSMResponse{VersionMajor: 1, VersionMinor: 2, VersionPatch: 256,
			ModuleID: "", MaxPCRs: 32, LockedPCRs: []uint16{}, Digest: nsm.DigestSHA256},
			"a1" + hDescribeNSM + "a7" + hVerMajor + "01" + hVerMinor + "02" + hVerPatch + "19 01 00" +
				hModuleID + "60" + hMaxPCRs + "18 20" + hLockedPCRs + "80" + hDigest + "66 53 48 41 32 35 36"},
		{"Attestation", nsm.AttestationResponse{Document: []byte{0x84, 0x40, 0xa0, 0x40, 0x40}},
			"a1" + hAttestation + "a1" + hDocument + "45 84 40 a0 40 40"},
		{"GetRandom", nsm.GetRandomResponse{Random: bytes.Repeat([]byte{7}, 256)},
			"a1" + hGetRandom + "a1" + hRandom + "59 01 00" + rep("07", 256)},
		{"Error ReadOnlyIndex", nsm.ErrorResponse{Code: nsm.ReadOnlyIndex},
			"a1" + hError + "6d 52 65 61 64 4f 6e 6c 79 49 6e 64 65 78"},
		{"Error InvalidIndex", nsm.ErrorResponse{Code: nsm.InvalidIndex},
			"a1" + hError + "6c 49 6e 76 61 6c 69 64 49 6e 64 65 78"},
		{"Error InternalError", nsm.ErrorResponse{Code: nsm.InternalError},
			"a1" + hError + "6d 49 6e 74 65 72 6e 61 6c 45 72 72 6f 72"},
	}
}

func TestRequestGolden(t *testing.T) {
	for _, g := range requestGoldens() {
		t.Run(g.name, func(t *testing.T) {
			want := unhex(t, g.hex)
			got, err := nsm.EncodeRequest(g.req)
			if err != nil {
				t.Fatalf("EncodeRequest: %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("EncodeRequest(%#v)\n got %x\nwant %x", g.req, got, want)
			}
			dec, err := nsm.DecodeRequest(want)
			if err != nil {
				t.Fatalf("DecodeRequest: %v", err)
			}
			if d := cmp.Diff(g.req, dec); d != "" {
				t.Fatalf("DecodeRequest mismatch (-want +got):\n%s", d)
			}
		})
	}
}

func TestResponseGolden(t *testing.T) {
	for _, g := range responseGoldens() {
		t.Run(g.name, func(t *testing.T) {
			want := unhex(t, g.hex)
			got, err := nsm.EncodeResponse(g.resp)
			if err != nil {
				t.Fatalf("EncodeResponse: %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("EncodeResponse(%#v)\n got %x\nwant %x", g.resp, got, want)
			}
			dec, err := nsm.DecodeResponse(want)
			if err != nil {
				t.Fatalf("DecodeResponse: %v", err)
			}
			if d := cmp.Diff(g.resp, dec); d != "" {
				t.Fatalf("DecodeResponse mismatch (-want +got):\n%s", d)
			}
		})
	}
}

// The reference's literal bytes for the two unit requests.
func TestUnitRequestBytes(t *testing.T) {
	for _, c := range []struct {
		req  nsm.Request
		want string
	}{
		{nsm.DescribeNSMRequest{}, "6b44657363726962654e534d"},
		{nsm.GetRandomRequest{}, "6947657452616e646f6d"},
	} {
		got, _ := nsm.EncodeRequest(c.req)
		if hex.EncodeToString(got) != c.want {
			t.Errorf("%s = %x, want %s", c.req.Name(), got, c.want)
		}
	}
}

func TestDecodeRequestRejects(t *testing.T) {
	m1 := func(name, body string) string { return "a1" + name + body }
	cases := []struct {
		name string
		hex  string
	}{
		{"empty", ""},
		{"trailing byte", hDescribeNSM + "00"},
		{"unknown unit", "63 46 6f 6f"},
		{"unit response as request", hLockPCR},
		{"struct variant as unit", hDescribePCR},
		{"unit variant as map", m1(hDescribeNSM, "a0")},
		{"integer top level", "01"},
		{"array top level", "81" + hDescribeNSM},
		{"two variants", "a2" + hDescribePCR + "a1" + hIndex + "00" + hLockPCR + "a1" + hIndex + "00"},
		{"empty top map", "a0"},
		{"integer variant key", "a1 01 a1" + hIndex + "00"},
		{"body null", m1(hDescribePCR, "f6")},
		{"body array", m1(hDescribePCR, "81 00")},
		{"index missing", m1(hDescribePCR, "a0")},
		{"index negative", m1(hDescribePCR, "a1"+hIndex+"20")},
		{"index text", m1(hDescribePCR, "a1"+hIndex+"61 30")},
		{"index null", m1(hDescribePCR, "a1"+hIndex+"f6")},
		{"index float", m1(hDescribePCR, "a1"+hIndex+"f9 3c 00")},
		{"index over u16", m1(hDescribePCR, "a1"+hIndex+"1a 00 01 00 00")},
		{"unknown field", m1(hDescribePCR, "a2"+hIndex+"00"+hData+"40")},
		{"duplicate field", m1(hDescribePCR, "a2"+hIndex+"00"+hIndex+"01")},
		{"indefinite map", m1(hDescribePCR, "bf"+hIndex+"00 ff")},
		{"indefinite top map", "bf" + hDescribePCR + "a1" + hIndex + "00 ff"},
		{"tagged index", m1(hDescribePCR, "a1"+hIndex+"c1 00")},
		{"tagged request", "d8 18" + hDescribeNSM},
		{"extend data text", m1(hExtendPCR, "a2"+hIndex+"10"+hData+"61 41")},
		{"extend data null", m1(hExtendPCR, "a2"+hIndex+"10"+hData+"f6")},
		{"extend data missing", m1(hExtendPCR, "a1"+hIndex+"10")},
		{"extend index missing", m1(hExtendPCR, "a1"+hData+"40")},
		{"range missing", m1(hLockPCRs, "a1"+hIndex+"00")},
		{"attestation field int", m1(hAttestation, "a1"+hNonce+"01")},
		{"attestation field text", m1(hAttestation, "a1"+hNonce+"61 41")},
		{"attestation unknown field", m1(hAttestation, "a1 65 6f 74 68 65 72 f6")},
		{"truncated", m1(hExtendPCR, "a2"+hIndex+"10"+hData+"43 01 02")},
		{"invalid utf-8 variant", "a1 62 ff fe a0"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, err := nsm.DecodeRequest(unhex(t, c.hex))
			if err == nil {
				t.Fatalf("DecodeRequest(%s) = %#v, want error", c.hex, r)
			}
			if !errors.Is(err, nsm.ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
		})
	}
	big := append(unhex(t, "a1"+hExtendPCR+"a2"+hIndex+"10"+hData+"59 10 00"), make([]byte, 4096)...)
	if _, err := nsm.DecodeRequest(big); !errors.Is(err, nsm.ErrMalformed) {
		t.Fatalf("DecodeRequest(%d bytes) error = %v, want ErrMalformed", len(big), err)
	}
}

func TestDecodeRequestAccepts(t *testing.T) {
	cases := []struct {
		name string
		hex  string
		want nsm.Request
	}{
		// serde accepts fields in any order and non-minimal integers.
		{"extend fields reversed", "a1" + hExtendPCR + "a2" + hData + "41 09" + hIndex + "10",
			nsm.ExtendPCRRequest{Index: 16, Data: []byte{9}}},
		{"non-minimal index", "a1" + hDescribePCR + "a1" + hIndex + "19 00 05", nsm.DescribePCRRequest{Index: 5}},
		// Option fields may be missing (serde's default for Option).
		{"attestation empty map", "a1" + hAttestation + "a0", nsm.AttestationRequest{}},
		{"attestation only nonce", "a1" + hAttestation + "a1" + hNonce + "41 01",
			nsm.AttestationRequest{Nonce: []byte{1}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := nsm.DecodeRequest(unhex(t, c.hex))
			if err != nil {
				t.Fatalf("DecodeRequest: %v", err)
			}
			if d := cmp.Diff(c.want, got); d != "" {
				t.Fatalf("mismatch (-want +got):\n%s", d)
			}
		})
	}
}

func TestDecodeResponseRejects(t *testing.T) {
	m1 := func(name, body string) string { return "a1" + name + body }
	cases := []struct {
		name string
		hex  string
	}{
		{"empty", ""},
		{"unit request as response", hDescribeNSM},
		{"error unknown name", "a1" + hError + "63 46 6f 6f"},
		{"error numeric", "a1" + hError + "04"},
		{"error map", "a1" + hError + "a0"},
		{"lock not bool", m1(hDescribePCR, "a2"+hLock+"01"+hData+"40")},
		{"lock null", m1(hDescribePCR, "a2"+hLock+"f6"+hData+"40")},
		{"data missing", m1(hDescribePCR, "a1"+hLock+"f5")},
		{"data text", m1(hExtendPCR, "a1"+hData+"61 41")},
		{"document missing", m1(hAttestation, "a0")},
		{"document null", m1(hAttestation, "a1"+hDocument+"f6")},
		{"random array", m1(hGetRandom, "a1"+hRandom+"80")},
		{"describe unknown digest", m1(hDescribeNSM, "a7"+hVerMajor+"01"+hVerMinor+"00"+hVerPatch+"00"+
			hModuleID+"60"+hMaxPCRs+"18 20"+hLockedPCRs+"80"+hDigest+"63 4d 44 35")},
		{"describe locked null element", m1(hDescribeNSM, "a7"+hVerMajor+"01"+hVerMinor+"00"+hVerPatch+"00"+
			hModuleID+"60"+hMaxPCRs+"18 20"+hLockedPCRs+"81 f6"+hDigest+hSHA384)},
		{"describe locked over u16", m1(hDescribeNSM, "a7"+hVerMajor+"01"+hVerMinor+"00"+hVerPatch+"00"+
			hModuleID+"60"+hMaxPCRs+"18 20"+hLockedPCRs+"81 1a 00 01 00 00"+hDigest+hSHA384)},
		{"describe missing digest", m1(hDescribeNSM, "a6"+hVerMajor+"01"+hVerMinor+"00"+hVerPatch+"00"+
			hModuleID+"60"+hMaxPCRs+"18 20"+hLockedPCRs+"80")},
		{"duplicate key", m1(hExtendPCR, "a2"+hData+"40"+hData+"40")},
		{"lockpcr as map", m1(hLockPCR, "f6")},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, err := nsm.DecodeResponse(unhex(t, c.hex))
			if err == nil {
				t.Fatalf("DecodeResponse(%s) = %#v, want error", c.hex, r)
			}
			if !errors.Is(err, nsm.ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
		})
	}
}

// Unknown response fields are ignored, as nsm-api's serde types do.
func TestDecodeResponseIgnoresUnknownFields(t *testing.T) {
	b := unhex(t, "a1"+hExtendPCR+"a2"+hData+"41 01"+"65 65 78 74 72 61"+"f5")
	got, err := nsm.DecodeResponse(b)
	if err != nil {
		t.Fatalf("DecodeResponse: %v", err)
	}
	if d := cmp.Diff(nsm.Response(nsm.ExtendPCRResponse{Data: []byte{1}}), got); d != "" {
		t.Fatalf("mismatch (-want +got):\n%s", d)
	}
}

func TestEncodeErrors(t *testing.T) {
	if _, err := nsm.EncodeRequest(nil); err == nil {
		t.Error("EncodeRequest(nil) succeeded")
	}
	if _, err := nsm.EncodeResponse(nil); err == nil {
		t.Error("EncodeResponse(nil) succeeded")
	}
	if _, err := nsm.EncodeResponse(nsm.ErrorResponse{Code: 9}); err == nil {
		t.Error("EncodeResponse(ErrorCode 9) succeeded")
	}
}

func TestErrorCodes(t *testing.T) {
	names := []string{"Success", "InvalidArgument", "InvalidIndex", "InvalidResponse", "ReadOnlyIndex",
		"InvalidOperation", "BufferTooSmall", "InputTooLarge", "InternalError"}
	for i, n := range names {
		c, ok := nsm.ParseErrorCode(n)
		if !ok || int(c) != i || c.String() != n {
			t.Errorf("ParseErrorCode(%q) = %d, %v; String = %q; want %d", n, c, ok, c.String(), i)
		}
	}
	if _, ok := nsm.ParseErrorCode("invalidindex"); ok {
		t.Error("ParseErrorCode accepted a wrong-case name")
	}
	if s := nsm.ErrorCode(42).String(); s != "ErrorCode(42)" {
		t.Errorf("String of 42 = %q", s)
	}
	sentinels := map[nsm.ErrorCode]error{
		nsm.InvalidArgument: nsm.ErrInvalidArgument, nsm.InvalidIndex: nsm.ErrInvalidIndex,
		nsm.InvalidResponse: nsm.ErrInvalidResponse, nsm.ReadOnlyIndex: nsm.ErrReadOnlyIndex,
		nsm.InvalidOperation: nsm.ErrInvalidOperation, nsm.BufferTooSmall: nsm.ErrBufferTooSmall,
		nsm.InputTooLarge: nsm.ErrInputTooLarge, nsm.InternalError: nsm.ErrInternalError,
	}
	for c, s := range sentinels {
		err := error(&nsm.Error{Op: "x", Code: c})
		for c2, s2 := range sentinels {
			if got := errors.Is(err, s2); got != (c == c2) {
				t.Errorf("errors.Is(Error{%s}, sentinel of %s) = %v", c, c2, got)
			}
		}
		if !errors.Is(&nsm.LimitError{Code: c}, s) {
			t.Errorf("LimitError{%s} does not match its sentinel", c)
		}
	}
	if errors.Is(&nsm.Error{Code: nsm.Success}, nsm.ErrInternalError) {
		t.Error("Error{Success} matches a sentinel")
	}
}
