package cborx

import (
	"bytes"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/fxamacker/cbor/v2"
	"github.com/google/go-cmp/cmp"
)

func nested(depth int) []byte {
	return append(bytes.Repeat([]byte{0x81}, depth), 0x00) // [[[...0...]]]
}

func arrayOf(n int) []byte {
	var b []byte
	switch {
	case n < 24:
		b = []byte{0x80 | byte(n)}
	case n < 256:
		b = []byte{0x98, byte(n)}
	default:
		b = []byte{0x99, byte(n >> 8), byte(n)}
	}
	return append(b, make([]byte, n)...) // n zeros
}

func mapOf(n int) []byte {
	b := []byte{0xb9, byte(n >> 8), byte(n)}
	for i := range n {
		b = append(b, 0x19, byte(i>>8), byte(i), 0x00) // key i (uint16) -> 0
	}
	return b
}

func TestDecodeLimits(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		ok   bool
	}{
		{"nesting at limit", nested(MaxNestedLevels), true},
		{"nesting over limit", nested(MaxNestedLevels + 1), false},
		{"array at limit", arrayOf(MaxArrayElements), true},
		{"array over limit", arrayOf(MaxArrayElements + 1), false},
		{"map at limit", mapOf(MaxMapPairs), true},
		{"map over limit", mapOf(MaxMapPairs + 1), false},
		{"duplicate int key", []byte{0xa2, 0x01, 0x00, 0x01, 0x00}, false},
		{"duplicate int key, non-minimal", []byte{0xa2, 0x01, 0x00, 0x18, 0x01, 0x00}, false},
		{"duplicate text key", []byte{0xa2, 0x61, 'a', 0x00, 0x61, 'a', 0x00}, false},
		{"indefinite array", []byte{0x9f, 0x00, 0xff}, false},
		{"indefinite map", []byte{0xbf, 0xff}, false},
		{"indefinite bytes", []byte{0x5f, 0x41, 0x00, 0xff}, false},
		{"indefinite text", []byte{0x7f, 0x61, 'a', 0xff}, false},
		{"tag 18", []byte{0xd2, 0x80}, false},
		{"tag 24 nested", []byte{0x81, 0xd8, 0x18, 0x40}, false},
		{"bignum", []byte{0xc2, 0x41, 0x01}, false},
		{"invalid utf8", []byte{0x62, 0xff, 0xfe}, false},
		{"trailing byte", []byte{0x80, 0x00}, false},
		{"truncated", []byte{0x82, 0x00}, false},
		{"reserved additional info", []byte{0x1c}, false},
		{"empty", nil, false},
		{"nan", []byte{0xf9, 0x7e, 0x00}, false},
		{"plain map", []byte{0xa1, 0x01, 0x02}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var v any
			err := Decode(tc.in, &v)
			if (err == nil) != tc.ok {
				t.Fatalf("Decode = %v, want ok=%v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrMalformed) {
				t.Errorf("error %v does not wrap ErrMalformed", err)
			}
			if werr := Wellformed(tc.in); (werr == nil) != tc.ok && !bytes.Contains([]byte(tc.name), []byte("duplicate")) && tc.name != "invalid utf8" && tc.name != "nan" {
				// Wellformed checks structure and limits, not duplicates,
				// UTF-8 or float values.
				t.Errorf("Wellformed = %v, want ok=%v", werr, tc.ok)
			}
		})
	}
}

func TestDecodeTypes(t *testing.T) {
	var s string
	if err := Decode([]byte{0x41, 'a'}, &s); err == nil {
		t.Error("byte string decoded into a Go string")
	}
	var u uint64
	if err := Decode([]byte{0x20}, &u); err == nil {
		t.Error("negative integer decoded into uint64")
	}
	if err := Decode([]byte{0xf9, 0x3c, 0x00}, &u); err == nil {
		t.Error("float decoded into uint64")
	}
	var m map[string]int
	if err := Decode([]byte{0xa1, 0x01, 0x01}, &m); err == nil {
		t.Error("integer key decoded into a string-keyed map")
	}
}

func TestStripTagAndMajor(t *testing.T) {
	if b, ok := StripTag([]byte{0xd2, 0x80}, 18); !ok || !bytes.Equal(b, []byte{0x80}) {
		t.Errorf("StripTag(18) = % x, %v", b, ok)
	}
	if b, ok := StripTag([]byte{0xd8, 0x62, 0x80}, 98); !ok || !bytes.Equal(b, []byte{0x80}) {
		t.Errorf("StripTag(98) = % x, %v", b, ok)
	}
	if _, ok := StripTag([]byte{0x80}, 18); ok {
		t.Error("StripTag found a tag in an array")
	}
	if _, ok := StripTag(nil, 98); ok {
		t.Error("StripTag found a tag in nothing")
	}
	for in, want := range map[byte]int{0x00: MajorUint, 0x20: MajorNegInt, 0x40: MajorBytes, 0x60: MajorText, 0x80: MajorArray, 0xa0: MajorMap, 0xc0: MajorTag, 0xf6: MajorSimple} {
		if got := Major([]byte{in}); got != want {
			t.Errorf("Major(%#x) = %d, want %d", in, got, want)
		}
	}
	if Major(nil) != -1 || !IsNull([]byte{0xf6}) || IsNull([]byte{0xf6, 0x00}) {
		t.Error("Major(nil) or IsNull wrong")
	}
}

func TestDeterministic(t *testing.T) {
	b, err := Deterministic.Marshal(map[int]string{24: "b", 1: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []byte{0xa2, 0x01, 0x61, 'a', 0x18, 0x18, 0x61, 'b'}; !bytes.Equal(b, want) {
		t.Errorf("Deterministic = % x, want % x", b, want)
	}
	var nilSlice []byte
	if b, _ := Deterministic.Marshal(nilSlice); !bytes.Equal(b, []byte{0xf6}) {
		t.Errorf("nil slice = % x, want f6", b)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte{0xa1, 0x01, 0x02})
	f.Add(nested(MaxNestedLevels))
	f.Add([]byte{0x84, 0x44, 0xa1, 0x01, 0x38, 0x22, 0xa0, 0x40, 0x40})
	f.Add([]byte{0x9f, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		var v any
		if err := Decode(b, &v); err != nil {
			return
		}
		// Whatever Decode accepts is well-formed and re-encodes.
		if err := Wellformed(b); err != nil {
			t.Fatalf("Decode accepted what Wellformed rejects: %v", err)
		}
		if _, err := cbor.Marshal(v); err != nil {
			t.Fatalf("re-encode: %v", err)
		}
	})
}

// headBoundaries are the arguments around each change of head length.
var headBoundaries = []uint64{0, 1, 23, 24, 255, 256, 65535, 65536, 1<<32 - 1, 1 << 32, 1<<64 - 1}

// wantHead is fxamacker/cbor's encoding of n as an unsigned integer with the
// major type bits replaced: the reference AppendHead must match.
func wantHead(t testing.TB, major byte, n uint64) []byte {
	t.Helper()
	b, err := Deterministic.Marshal(n)
	if err != nil {
		t.Fatal(err)
	}
	b[0] |= major << 5
	return b
}

func TestAppendHead(t *testing.T) {
	for major := byte(MajorUint); major <= MajorSimple; major++ {
		for _, n := range headBoundaries {
			if got, want := AppendHead([]byte{0xee}, major, n), append([]byte{0xee}, wantHead(t, major, n)...); !bytes.Equal(got, want) {
				t.Errorf("AppendHead(%d, %d) = % x, want % x", major, n, got, want)
			}
		}
	}
	// The typed helpers against fxamacker/cbor's deterministic encoding.
	tests := []struct {
		name string
		got  []byte
		v    any
	}{
		{"int 0", AppendInt(nil, 0), 0},
		{"int -1", AppendInt(nil, -1), -1},
		{"int -24", AppendInt(nil, -24), -24},
		{"int -25", AppendInt(nil, -25), -25},
		{"int -35 (ES384)", AppendInt(nil, -35), -35},
		{"int min", AppendInt(nil, math.MinInt64), int64(math.MinInt64)},
		{"int max", AppendInt(nil, math.MaxInt64), int64(math.MaxInt64)},
		{"text empty", AppendText(nil, ""), ""},
		{"text 24", AppendText(nil, strings.Repeat("a", 24)), strings.Repeat("a", 24)},
		{"text 300", AppendText(nil, strings.Repeat("é", 150)), strings.Repeat("é", 150)},
		{"bytes nil", AppendBytes(nil, nil), []byte{}},
		{"bytes 23", AppendBytes(nil, make([]byte, 23)), make([]byte, 23)},
		{"bytes 70000", AppendBytes(nil, make([]byte, 70000)), make([]byte, 70000)},
	}
	for _, tc := range tests {
		want, err := Deterministic.Marshal(tc.v)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, tc.got); diff != "" {
			t.Errorf("%s (-fxamacker +ours):\n%s", tc.name, diff)
		}
	}
}

func FuzzAppendHead(f *testing.F) {
	for _, n := range headBoundaries {
		f.Add(byte(MajorBytes), n)
	}
	f.Fuzz(func(t *testing.T, major byte, n uint64) {
		major &= 7
		if got, want := AppendHead(nil, major, n), wantHead(t, major, n); !bytes.Equal(got, want) {
			t.Fatalf("AppendHead(%d, %d) = % x, want % x", major, n, got, want)
		}
	})
}
