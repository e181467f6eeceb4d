package attest

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"fmt"
)

// DecodeEvidence turns an attestation document as a user may hand it over
// into raw CBOR bytes. It accepts, auto-detected in this order:
//
//   - raw CBOR: the first byte is 0x84 (COSE_Sign1 array) or 0xd2 (tag 18);
//   - hexadecimal (either case), surrounding whitespace ignored;
//   - base64, standard or URL alphabet, with or without padding, with
//     whitespace (line breaks) anywhere.
//
// The decoded bytes must start with 0x84 or 0xd2, otherwise the result is
// an error wrapping [ErrMalformed]. Input larger than what a
// [MaxDocumentSize] document can encode to fails with [ErrTooLarge]. The
// document itself is not parsed or verified.
func DecodeEvidence(b []byte) ([]byte, error) {
	if len(b) > 0 && (b[0] == 0x84 || b[0] == 0xd2) {
		if len(b) > MaxDocumentSize {
			return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(b), MaxDocumentSize)
		}
		return b, nil
	}
	if len(b) > 4*MaxDocumentSize {
		return nil, fmt.Errorf("%w: %d bytes of encoded input", ErrTooLarge, len(b))
	}
	t := bytes.Join(bytes.Fields(b), nil)
	if len(t) == 0 {
		return nil, fmt.Errorf("%w: empty evidence", ErrMalformed)
	}
	if d, err := hex.DecodeString(string(t)); err == nil && isCOSEStart(d) {
		return d, nil
	}
	s := string(bytes.TrimRight(t, "="))
	for _, enc := range []*base64.Encoding{base64.RawStdEncoding, base64.RawURLEncoding} {
		if d, err := enc.DecodeString(s); err == nil && isCOSEStart(d) {
			return d, nil
		}
	}
	return nil, fmt.Errorf("%w: evidence is neither CBOR (starting 0x84 or 0xd2) nor hex or base64 of it", ErrMalformed)
}

func isCOSEStart(d []byte) bool { return len(d) > 0 && (d[0] == 0x84 || d[0] == 0xd2) }
