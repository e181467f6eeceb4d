package eif

import (
	"errors"
	"fmt"

	"github.com/fxamacker/cbor/v2"

	"github.com/cloister/cloister/internal/cborx"
)

// serde_cbor writes definite lengths, shortest integer forms and text keys
// in struct field order; the encoders here (built on cborx's head helpers)
// match it byte for byte for the few shapes nitro's signature section uses.

// cborUintArray encodes p as serde_cbor encodes a Vec<u8>.
func cborUintArray(b []byte, p []byte) []byte {
	b = cborx.AppendHead(b, cborx.MajorArray, uint64(len(p)))
	for _, c := range p {
		b = cborx.AppendHead(b, cborx.MajorUint, uint64(c))
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
