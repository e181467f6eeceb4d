package cborx

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/fxamacker/cbor/v2"
)

// Limits applied by [Strict].
const (
	MaxNestedLevels  = 16
	MaxArrayElements = 2048
	MaxMapPairs      = 2048
)

// ErrMalformed is wrapped by every error returned from this package's
// decoding helpers.
var ErrMalformed = errors.New("cborx: malformed cbor")

// Strict is the decoding mode for untrusted input. It is safe for concurrent
// use. See the package comment for the limits it enforces.
var Strict cbor.DecMode

// Deterministic encodes with RFC 8949 core deterministic map-key order and
// shortest-form integers and lengths; nil slices and maps encode as null.
var Deterministic cbor.EncMode

func init() {
	var err error
	Strict, err = cbor.DecOptions{
		DupMapKey:        cbor.DupMapKeyEnforcedAPF,
		MaxNestedLevels:  MaxNestedLevels,
		MaxArrayElements: MaxArrayElements,
		MaxMapPairs:      MaxMapPairs,
		IndefLength:      cbor.IndefLengthForbidden,
		TagsMd:           cbor.TagsForbidden,
		IntDec:           cbor.IntDecConvertSignedOrFail,
		UTF8:             cbor.UTF8RejectInvalid,
		NaN:              cbor.NaNDecodeForbidden,
		Inf:              cbor.InfDecodeForbidden,
		BignumTag:        cbor.BignumTagForbidden,
	}.DecMode()
	if err != nil {
		panic("cborx: invalid strict decoding options: " + err.Error())
	}
	Deterministic, err = cbor.EncOptions{
		Sort:          cbor.SortCoreDeterministic,
		ShortestFloat: cbor.ShortestFloat16,
		NaNConvert:    cbor.NaNConvert7e00,
		InfConvert:    cbor.InfConvertFloat16,
		IndefLength:   cbor.IndefLengthForbidden,
		TagsMd:        cbor.TagsForbidden,
	}.EncMode()
	if err != nil {
		panic("cborx: invalid encoding options: " + err.Error())
	}
}

// Decode decodes exactly one data item from data into v with [Strict]. It
// fails, wrapping [ErrMalformed], if data is not well-formed, breaks one of
// the limits, does not match v's type, or has bytes after the item.
func Decode(data []byte, v any) error {
	rest, err := Strict.UnmarshalFirst(data, v)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if len(rest) != 0 {
		return fmt.Errorf("%w: %d trailing bytes after the data item", ErrMalformed, len(rest))
	}
	return nil
}

// Wellformed reports, wrapping [ErrMalformed], whether data is exactly one
// data item that [Strict] accepts (no trailing bytes).
func Wellformed(data []byte) error {
	if err := Strict.Wellformed(data); err != nil {
		return fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return nil
}

// Major types of a CBOR initial byte (RFC 8949 §3.1).
const (
	MajorUint   = 0
	MajorNegInt = 1
	MajorBytes  = 2
	MajorText   = 3
	MajorArray  = 4
	MajorMap    = 5
	MajorTag    = 6
	MajorSimple = 7
)

// Null is the encoding of the CBOR simple value null.
const Null = 0xf6

// Major returns the major type of the data item that starts raw, or -1 when
// raw is empty.
func Major(raw []byte) int {
	if len(raw) == 0 {
		return -1
	}
	return int(raw[0] >> 5)
}

// IsNull reports whether raw is exactly the CBOR null value.
func IsNull(raw []byte) bool { return len(raw) == 1 && raw[0] == Null }

// StripTag removes one leading tag number tag (encoded in its shortest form,
// as RFC 8949 deterministic encoding requires) from data and reports whether
// it was present. Tags 0..23 are one byte, 24..255 two bytes.
func StripTag(data []byte, tag uint8) ([]byte, bool) {
	switch {
	case tag < 24:
		if len(data) > 0 && data[0] == 0xc0|tag {
			return data[1:], true
		}
	default:
		if len(data) > 1 && data[0] == 0xd8 && data[1] == tag {
			return data[2:], true
		}
	}
	return data, false
}

// AppendHead appends the head of a data item (RFC 8949 §3): the initial byte
// of major type major (one of the Major constants) and the argument n, in the
// shortest form (§4.2.1), which is what deterministic encoding, serde_cbor
// and the NSM all emit. It is the only CBOR head encoder in Cloister: code
// that writes CBOR byte by byte (NSM messages, attestation payloads, EIF
// signature sections) builds on it.
func AppendHead(b []byte, major byte, n uint64) []byte {
	m := major << 5
	switch {
	case n < 24:
		return append(b, m|byte(n))
	case n <= 0xff:
		return append(b, m|24, byte(n))
	case n <= 0xffff:
		return binary.BigEndian.AppendUint16(append(b, m|25), uint16(n))
	case n <= 0xffffffff:
		return binary.BigEndian.AppendUint32(append(b, m|26), uint32(n))
	default:
		return binary.BigEndian.AppendUint64(append(b, m|27), n)
	}
}

// AppendInt appends the integer v: major type 0 when v ≥ 0, otherwise major
// type 1 with argument -1-v.
func AppendInt(b []byte, v int64) []byte {
	if v >= 0 {
		return AppendHead(b, MajorUint, uint64(v))
	}
	return AppendHead(b, MajorNegInt, uint64(-1-v))
}

// AppendText appends s as a definite-length text string. s must be valid
// UTF-8 (a caller writing untrusted text checks that first).
func AppendText(b []byte, s string) []byte {
	return append(AppendHead(b, MajorText, uint64(len(s))), s...)
}

// AppendBytes appends p as a definite-length byte string (a nil p is the
// empty byte string, not null).
func AppendBytes(b, p []byte) []byte {
	return append(AppendHead(b, MajorBytes, uint64(len(p))), p...)
}
