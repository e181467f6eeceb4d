package attest

import (
	"bytes"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/veraison/go-cose"

	"github.com/cloister/cloister/internal/cborx"
)

// Size limits enforced by [ParseUnverified] (nitro-reference §4.2, §13.b4).
const (
	// MaxDocumentSize bounds the whole COSE_Sign1 document, tag included.
	// The NSM's response buffer is 12 KiB; AWS bounds the payload at 16 KiB.
	MaxDocumentSize = 16384
	// MaxCertificateSize bounds certificate and each cabundle entry.
	MaxCertificateSize = 1024
	// MaxFieldSize bounds public_key, user_data and nonce. The NSM accepts
	// 1024 bytes for each (nsm-check does that; real documents carry it).
	MaxFieldSize = 1024
	// MaxCABundle bounds the number of cabundle entries (AWS uses 4).
	MaxCABundle = 16
	// MaxModuleIDSize bounds module_id (the NSM's C ABI holds 100 bytes).
	MaxModuleIDSize = 256
	// SignatureSize is the size of an ES384 signature r‖s.
	SignatureSize = 96
)

// protectedES384 is the protected header the NSM emits, {1: -35}, as the
// content of its byte string; rawProtectedES384 is that byte string.
var (
	protectedES384    = []byte{0xa1, 0x01, 0x38, 0x22}
	rawProtectedES384 = []byte{0x44, 0xa1, 0x01, 0x38, 0x22}
)

// coseArray4 is the head of a COSE_Sign1 array in the shortest form, the
// only form go-cose decodes.
const coseArray4 = 0x84

// Document is the NSM attestation payload (nitro-reference §4.2).
type Document struct {
	ModuleID    string
	Digest      string         // always "SHA384" once parsed
	Timestamp   time.Time      // from ms since the Unix epoch, UTC
	PCRs        map[int][]byte // index -> 32, 48 or 64 bytes
	Certificate []byte         // DER leaf certificate
	CABundle    [][]byte       // DER, [root, interm_1, ..., interm_n]
	PublicKey   []byte         // nil when absent or null
	UserData    []byte         // nil when absent or null
	Nonce       []byte         // nil when absent or null
}

// Clone returns a deep copy of d.
func (d Document) Clone() Document {
	c := d
	if d.PCRs != nil {
		c.PCRs = make(map[int][]byte, len(d.PCRs))
		for k, v := range d.PCRs {
			c.PCRs[k] = slices.Clone(v)
		}
	}
	c.Certificate = slices.Clone(d.Certificate)
	if d.CABundle != nil {
		c.CABundle = make([][]byte, len(d.CABundle))
		for i, b := range d.CABundle {
			c.CABundle[i] = slices.Clone(b)
		}
	}
	c.PublicKey = slices.Clone(d.PublicKey)
	c.UserData = slices.Clone(d.UserData)
	c.Nonce = slices.Clone(d.Nonce)
	return c
}

// Unverified is a parsed but NOT verified COSE_Sign1 attestation document.
// Nothing in it may be trusted; use [Verifier.Verify] to get a [Verified].
type Unverified struct {
	Document  Document
	Protected []byte // protected header bytes (bstr content)
	Payload   []byte // payload bytes (bstr content)
	Signature []byte // r‖s, 96 bytes

	raw []byte                     // the input without a leading tag 18
	msg *cose.UntaggedSign1Message // go-cose's decoding of raw
}

// Raw returns the document bytes as given, without a leading tag 18.
func (u *Unverified) Raw() []byte { return u.raw }

// ParseUnverified decodes an attestation document without verifying any
// signature or certificate. It accepts the untagged COSE_Sign1 the NSM emits
// and the same array behind CBOR tag 18, and checks, failing with an error
// wrapping [ErrMalformed] unless noted:
//
//   - size ≤ [MaxDocumentSize] ([ErrTooLarge]); strict CBOR (internal/cborx:
//     no other tags, no indefinite lengths, no duplicate map keys, bounded
//     nesting), no bytes after the array;
//   - a COSE array of exactly 4 items, its head in the shortest form (0x84):
//     protected bstr, unprotected map, payload bstr, signature bstr;
//   - the protected bytes decode to exactly {1: -35} (ES384) and nothing
//     else; another algorithm fails with [ErrUnsupportedAlgorithm];
//   - the unprotected header is an empty map; the signature is 96 bytes;
//   - the payload is a map with text keys; exactly module_id, digest,
//     timestamp, pcrs, certificate, cabundle are required and public_key,
//     user_data, nonce are optional; any other key is rejected;
//   - module_id non-empty text (≤ [MaxModuleIDSize] bytes); digest the text
//     "SHA384"; timestamp an unsigned integer > 0 (ms since the epoch);
//     pcrs a map of 1..32 entries, unsigned index 0..31, bstr of 32, 48 or
//     64 bytes; certificate bstr of 1..1024 bytes; cabundle an array of
//     1..[MaxCABundle] bstr of 1..1024 bytes each; public_key, user_data,
//     nonce absent, null or a bstr of at most 1024 bytes. No required field
//     may be null;
//   - only then, with all of the above established by the strict decoder,
//     go-cose (github.com/veraison/go-cose) decodes the same bytes, and must
//     find the same headers (only alg ES384), payload and signature: [Verifier]
//     verifies the signature of exactly that message with go-cose.
func ParseUnverified(b []byte) (*Unverified, error) {
	if len(b) > MaxDocumentSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(b), MaxDocumentSize)
	}
	data, _ := cborx.StripTag(b, cose.CBORTagSign1Message)
	if len(data) == 0 {
		return nil, fmt.Errorf("%w: empty input", ErrMalformed)
	}
	if cborx.Major(data) != cborx.MajorArray {
		return nil, fmt.Errorf("%w: not a COSE_Sign1 array", ErrMalformed)
	}
	if data[0] != coseArray4 {
		return nil, fmt.Errorf("%w: COSE_Sign1 array head % x is not 84 (array of 4, shortest form)", ErrMalformed, data[:min(len(data), 9)])
	}
	var arr []cbor.RawMessage
	if err := cborx.Decode(data, &arr); err != nil {
		return nil, fmt.Errorf("%w: COSE_Sign1: %w", ErrMalformed, err)
	}
	if len(arr) != 4 {
		return nil, fmt.Errorf("%w: COSE_Sign1 has %d items, want 4", ErrMalformed, len(arr))
	}
	u := &Unverified{raw: data}
	var err error
	if u.Protected, err = decodeBytes(arr[0], "protected header"); err != nil {
		return nil, err
	}
	if err := checkProtected(u.Protected); err != nil {
		return nil, err
	}
	if err := checkUnprotected(arr[1]); err != nil {
		return nil, err
	}
	if u.Payload, err = decodeBytes(arr[2], "payload"); err != nil {
		return nil, err
	}
	if u.Signature, err = decodeBytes(arr[3], "signature"); err != nil {
		return nil, err
	}
	if len(u.Signature) != SignatureSize {
		return nil, fmt.Errorf("%w: signature is %d bytes, want %d", ErrMalformed, len(u.Signature), SignatureSize)
	}
	if u.Document, err = parsePayload(u.Payload); err != nil {
		return nil, err
	}
	if u.msg, err = decodeGoCOSE(u); err != nil {
		return nil, err
	}
	return u, nil
}

// decodeGoCOSE hands the strictly checked u.raw to go-cose and checks that
// go-cose sees the message ParseUnverified saw.
func decodeGoCOSE(u *Unverified) (*cose.UntaggedSign1Message, error) {
	var m cose.UntaggedSign1Message
	if err := m.UnmarshalCBOR(u.raw); err != nil {
		return nil, fmt.Errorf("%w: COSE_Sign1 (go-cose): %w", ErrMalformed, err)
	}
	if alg, err := m.Headers.Protected.Algorithm(); err != nil || alg != cose.AlgorithmES384 || len(m.Headers.Protected) != 1 ||
		len(m.Headers.Unprotected) != 0 || !bytes.Equal(m.Payload, u.Payload) || !bytes.Equal(m.Signature, u.Signature) {
		return nil, fmt.Errorf("%w: go-cose decodes the COSE_Sign1 differently", ErrMalformed)
	}
	return &m, nil
}

func decodeBytes(raw cbor.RawMessage, what string) ([]byte, error) {
	if cborx.Major(raw) != cborx.MajorBytes {
		return nil, fmt.Errorf("%w: %s is not a byte string", ErrMalformed, what)
	}
	var b []byte
	if err := cborx.Decode(raw, &b); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrMalformed, what, err)
	}
	if b == nil {
		b = []byte{}
	}
	return b, nil
}

func checkProtected(p []byte) error {
	if bytes.Equal(p, protectedES384) {
		return nil // the NSM's exact bytes: the common case
	}
	if cborx.Major(p) != cborx.MajorMap {
		return fmt.Errorf("%w: protected header is not a map", ErrMalformed)
	}
	var m map[int64]cbor.RawMessage
	if err := cborx.Decode(p, &m); err != nil {
		return fmt.Errorf("%w: protected header: %w", ErrMalformed, err)
	}
	alg, ok := m[1]
	if !ok {
		return fmt.Errorf("%w: protected header has no algorithm", ErrMalformed)
	}
	var a int64
	if k := cborx.Major(alg); k != cborx.MajorUint && k != cborx.MajorNegInt {
		return fmt.Errorf("%w: protected header: algorithm is not an integer", ErrUnsupportedAlgorithm)
	}
	if err := cborx.Decode(alg, &a); err != nil {
		return fmt.Errorf("%w: protected header algorithm: %w", ErrUnsupportedAlgorithm, err)
	}
	if a != int64(cose.AlgorithmES384) {
		return fmt.Errorf("%w: COSE algorithm %d, want ES384 (-35)", ErrUnsupportedAlgorithm, a)
	}
	if len(m) != 1 {
		return fmt.Errorf("%w: protected header has %d entries, want only the algorithm", ErrMalformed, len(m))
	}
	// {1: -35} spelled another way (non-shortest integers): the signature
	// covers these bytes, and the NSM only ever writes a1 01 38 22.
	return fmt.Errorf("%w: protected header %x is {1: -35} but not in its shortest encoding a1013822", ErrMalformed, p)
}

func checkUnprotected(raw cbor.RawMessage) error {
	if cborx.Major(raw) != cborx.MajorMap {
		return fmt.Errorf("%w: unprotected header is not a map", ErrMalformed)
	}
	var m map[any]any
	if err := cborx.Decode(raw, &m); err != nil {
		return fmt.Errorf("%w: unprotected header: %w", ErrMalformed, err)
	}
	if len(m) != 0 {
		return fmt.Errorf("%w: unprotected header has %d entries, want none", ErrMalformed, len(m))
	}
	return nil
}

var requiredKeys = []string{"module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle"}

func parsePayload(p []byte) (Document, error) {
	var d Document
	if cborx.Major(p) != cborx.MajorMap {
		return d, fmt.Errorf("%w: payload is not a map", ErrMalformed)
	}
	var m map[string]cbor.RawMessage
	if err := cborx.Decode(p, &m); err != nil {
		return d, fmt.Errorf("%w: payload: %w", ErrMalformed, err)
	}
	for k := range m {
		switch k {
		case "module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle", "public_key", "user_data", "nonce":
		default:
			return d, fmt.Errorf("%w: payload has unknown key %q", ErrMalformed, k)
		}
	}
	for _, k := range requiredKeys {
		raw, ok := m[k]
		if !ok {
			return d, fmt.Errorf("%w: payload lacks %s", ErrMalformed, k)
		}
		if cborx.IsNull(raw) {
			return d, fmt.Errorf("%w: payload %s is null", ErrMalformed, k)
		}
	}
	var err error
	if d.ModuleID, err = decodeText(m["module_id"], "module_id"); err != nil {
		return d, err
	}
	if d.ModuleID == "" || len(d.ModuleID) > MaxModuleIDSize {
		return d, fmt.Errorf("%w: module_id length %d, want 1..%d", ErrMalformed, len(d.ModuleID), MaxModuleIDSize)
	}
	if d.Digest, err = decodeText(m["digest"], "digest"); err != nil {
		return d, err
	}
	if d.Digest != "SHA384" {
		return d, fmt.Errorf("%w: digest %.16q, want \"SHA384\"", ErrMalformed, d.Digest)
	}
	if d.Timestamp, err = decodeTimestamp(m["timestamp"]); err != nil {
		return d, err
	}
	if d.PCRs, err = decodePCRs(m["pcrs"]); err != nil {
		return d, err
	}
	if d.Certificate, err = decodeSized(m["certificate"], "certificate", 1, MaxCertificateSize); err != nil {
		return d, err
	}
	if d.CABundle, err = decodeBundle(m["cabundle"]); err != nil {
		return d, err
	}
	if d.PublicKey, err = decodeOptional(m, "public_key"); err != nil {
		return d, err
	}
	if d.UserData, err = decodeOptional(m, "user_data"); err != nil {
		return d, err
	}
	if d.Nonce, err = decodeOptional(m, "nonce"); err != nil {
		return d, err
	}
	return d, nil
}

func decodeText(raw cbor.RawMessage, what string) (string, error) {
	if cborx.Major(raw) != cborx.MajorText {
		return "", fmt.Errorf("%w: %s is not a text string", ErrMalformed, what)
	}
	var s string
	if err := cborx.Decode(raw, &s); err != nil {
		return "", fmt.Errorf("%w: %s: %w", ErrMalformed, what, err)
	}
	return s, nil
}

func decodeTimestamp(raw cbor.RawMessage) (time.Time, error) {
	if cborx.Major(raw) != cborx.MajorUint {
		return time.Time{}, fmt.Errorf("%w: timestamp is not an unsigned integer", ErrMalformed)
	}
	var ms uint64
	if err := cborx.Decode(raw, &ms); err != nil {
		return time.Time{}, fmt.Errorf("%w: timestamp: %w", ErrMalformed, err)
	}
	if ms == 0 || ms > math.MaxInt64 {
		return time.Time{}, fmt.Errorf("%w: timestamp %d out of range", ErrMalformed, ms)
	}
	return time.UnixMilli(int64(ms)).UTC(), nil
}

func decodePCRs(raw cbor.RawMessage) (map[int][]byte, error) {
	if cborx.Major(raw) != cborx.MajorMap {
		return nil, fmt.Errorf("%w: pcrs is not a map", ErrMalformed)
	}
	var m map[uint64]cbor.RawMessage
	if err := cborx.Decode(raw, &m); err != nil {
		return nil, fmt.Errorf("%w: pcrs: %w", ErrMalformed, err)
	}
	if len(m) < 1 || len(m) > 32 {
		return nil, fmt.Errorf("%w: pcrs has %d entries, want 1..32", ErrMalformed, len(m))
	}
	out := make(map[int][]byte, len(m))
	for idx, v := range m {
		if idx > 31 {
			return nil, fmt.Errorf("%w: pcr index %d out of range 0..31", ErrMalformed, idx)
		}
		b, err := decodeBytes(v, fmt.Sprintf("pcr %d", idx))
		if err != nil {
			return nil, err
		}
		if n := len(b); n != 32 && n != 48 && n != 64 {
			return nil, fmt.Errorf("%w: pcr %d is %d bytes, want 32, 48 or 64", ErrMalformed, idx, n)
		}
		out[int(idx)] = b
	}
	return out, nil
}

func decodeSized(raw cbor.RawMessage, what string, min, max int) ([]byte, error) {
	b, err := decodeBytes(raw, what)
	if err != nil {
		return nil, err
	}
	if len(b) < min || len(b) > max {
		return nil, fmt.Errorf("%w: %s is %d bytes, want %d..%d", ErrMalformed, what, len(b), min, max)
	}
	return b, nil
}

func decodeBundle(raw cbor.RawMessage) ([][]byte, error) {
	if cborx.Major(raw) != cborx.MajorArray {
		return nil, fmt.Errorf("%w: cabundle is not an array", ErrMalformed)
	}
	var items []cbor.RawMessage
	if err := cborx.Decode(raw, &items); err != nil {
		return nil, fmt.Errorf("%w: cabundle: %w", ErrMalformed, err)
	}
	if len(items) < 1 || len(items) > MaxCABundle {
		return nil, fmt.Errorf("%w: cabundle has %d entries, want 1..%d", ErrMalformed, len(items), MaxCABundle)
	}
	out := make([][]byte, len(items))
	for i, it := range items {
		b, err := decodeSized(it, fmt.Sprintf("cabundle[%d]", i), 1, MaxCertificateSize)
		if err != nil {
			return nil, err
		}
		out[i] = b
	}
	return out, nil
}

func decodeOptional(m map[string]cbor.RawMessage, key string) ([]byte, error) {
	raw, ok := m[key]
	if !ok || cborx.IsNull(raw) {
		return nil, nil
	}
	return decodeSized(raw, key, 0, MaxFieldSize)
}
