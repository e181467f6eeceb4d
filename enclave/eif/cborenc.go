package eif

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/fxamacker/cbor/v2"
)

// Minimal deterministic CBOR encoding of the few shapes nitro's signature
// section uses, matching serde_cbor's output byte for byte: definite
// lengths, shortest integer forms, text keys in struct field order, and
// Vec<u8> as an ARRAY of unsigned integers (not a byte string).

func cborHead(b []byte, major byte, n uint64) []byte {
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

func cborText(b []byte, s string) []byte  { return append(cborHead(b, 3, uint64(len(s))), s...) }
func cborBytes(b []byte, p []byte) []byte { return append(cborHead(b, 2, uint64(len(p))), p...) }

func cborInt(b []byte, v int64) []byte {
	if v >= 0 {
		return cborHead(b, 0, uint64(v))
	}
	return cborHead(b, 1, uint64(-1-v))
}

// cborUintArray encodes p as serde_cbor encodes a Vec<u8>.
func cborUintArray(b []byte, p []byte) []byte {
	b = cborHead(b, 4, uint64(len(p)))
	for _, c := range p {
		b = cborHead(b, 0, uint64(c))
	}
	return b
}

// strictDec is the decoding mode for untrusted signature sections: no
// duplicate map keys, no indefinite lengths, no tags, bounded nesting,
// array and map sizes, unknown struct fields rejected.
var strictDec = func() cbor.DecMode {
	dm, err := cbor.DecOptions{
		DupMapKey:         cbor.DupMapKeyEnforcedAPF,
		IndefLength:       cbor.IndefLengthForbidden,
		TagsMd:            cbor.TagsForbidden,
		MaxNestedLevels:   8,
		MaxArrayElements:  MaxSignatureSize,
		MaxMapPairs:       16,
		ExtraReturnErrors: cbor.ExtraDecErrorUnknownField,
		UTF8:              cbor.UTF8RejectInvalid,
	}.DecMode()
	if err != nil {
		panic(err) // constant options; cannot fail
	}
	return dm
}()

// decodeStrict decodes b into v with strictDec and requires that b holds
// exactly one CBOR data item.
func decodeStrict(b []byte, v any) error {
	rest, err := strictDec.UnmarshalFirst(b, v)
	if err != nil {
		return err
	}
	if len(rest) != 0 {
		return errors.New("trailing bytes after CBOR item")
	}
	return nil
}

// uintsToBytes converts a decoded serde Vec<u8> back to bytes.
func uintsToBytes(field string, v []uint64) ([]byte, error) {
	out := make([]byte, len(v))
	for i, x := range v {
		if x > 0xff {
			return nil, fmt.Errorf("%s[%d] = %d is not a byte", field, i, x)
		}
		out[i] = byte(x)
	}
	return out, nil
}
