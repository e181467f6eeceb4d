package nsm

import (
	"fmt"

	"github.com/cloister/cloister/internal/cborx"
	"github.com/fxamacker/cbor/v2"
)

// Size limits of the NSM protocol (Linux drivers/misc/nsm.c, QEMU
// virtio-nsm.c).
const (
	// MaxRequestSize is the largest encoded request the module accepts
	// (NSM_REQUEST_MAX_SIZE); the kernel fails larger ones with EMSGSIZE.
	MaxRequestSize = 0x1000
	// MaxResponseSize is the size of the module's response buffer
	// (NSM_RESPONSE_MAX_SIZE); no response is longer.
	MaxResponseSize = 0x3000
	// MaxAttestationField is the largest user_data, nonce or public_key
	// Cloister sends or accepts in an Attestation request (nsm-check sends
	// 1024 bytes of each and real modules accept it).
	MaxAttestationField = 1024
	// MaxPCRs is the number of PCRs of a Nitro security module.
	MaxPCRs = 32
	// PCRSize is the size of a SHA-384 PCR in bytes.
	PCRSize = 48
)

// Digest names the hash of the PCR bank in a DescribeNSM response.
type Digest string

// The Digest values the protocol defines; Nitro uses SHA384.
const (
	DigestSHA256 Digest = "SHA256"
	DigestSHA384 Digest = "SHA384"
	DigestSHA512 Digest = "SHA512"
)

// Request is one of the seven NSM requests: [DescribePCRRequest],
// [ExtendPCRRequest], [LockPCRRequest], [LockPCRsRequest],
// [DescribeNSMRequest], [AttestationRequest] or [GetRandomRequest].
type Request interface {
	// Name returns the serde variant name, e.g. "DescribePCR".
	Name() string
	isRequest()
}

// DescribePCRRequest reads a PCR: {"DescribePCR": {"index": u16}}.
type DescribePCRRequest struct{ Index uint16 }

// ExtendPCRRequest extends a PCR with data (PCR = SHA384(PCR ‖ data)):
// {"ExtendPCR": {"index": u16, "data": bstr}}.
type ExtendPCRRequest struct {
	Index uint16
	Data  []byte
}

// LockPCRRequest makes a PCR read-only: {"LockPCR": {"index": u16}}.
type LockPCRRequest struct{ Index uint16 }

// LockPCRsRequest makes PCRs [0, Range) read-only:
// {"LockPCRs": {"range": u16}}.
type LockPCRsRequest struct{ Range uint16 }

// DescribeNSMRequest asks for the module's description: the text string
// "DescribeNSM".
type DescribeNSMRequest struct{}

// AttestationRequest asks for a signed attestation document:
// {"Attestation": {"user_data": bstr|null, "nonce": bstr|null,
// "public_key": bstr|null}}. A nil slice is None (null on the wire); a
// non-nil empty slice is an empty byte string.
type AttestationRequest struct {
	UserData  []byte
	Nonce     []byte
	PublicKey []byte
}

// GetRandomRequest asks for entropy: the text string "GetRandom".
type GetRandomRequest struct{}

// Name returns "DescribePCR".
func (DescribePCRRequest) Name() string { return "DescribePCR" }

// Name returns "ExtendPCR".
func (ExtendPCRRequest) Name() string { return "ExtendPCR" }

// Name returns "LockPCR".
func (LockPCRRequest) Name() string { return "LockPCR" }

// Name returns "LockPCRs".
func (LockPCRsRequest) Name() string { return "LockPCRs" }

// Name returns "DescribeNSM".
func (DescribeNSMRequest) Name() string { return "DescribeNSM" }

// Name returns "Attestation".
func (AttestationRequest) Name() string { return "Attestation" }

// Name returns "GetRandom".
func (GetRandomRequest) Name() string { return "GetRandom" }

func (DescribePCRRequest) isRequest() {}
func (ExtendPCRRequest) isRequest()   {}
func (LockPCRRequest) isRequest()     {}
func (LockPCRsRequest) isRequest()    {}
func (DescribeNSMRequest) isRequest() {}
func (AttestationRequest) isRequest() {}
func (GetRandomRequest) isRequest()   {}

// Response is one of the NSM responses: [DescribePCRResponse],
// [ExtendPCRResponse], [LockPCRResponse], [LockPCRsResponse],
// [DescribeNSMResponse], [AttestationResponse], [GetRandomResponse] or
// [ErrorResponse].
type Response interface {
	// Name returns the serde variant name, e.g. "DescribePCR" or "Error".
	Name() string
	isResponse()
}

// DescribePCRResponse is {"DescribePCR": {"lock": bool, "data": bstr}}.
type DescribePCRResponse struct {
	Lock bool
	Data []byte
}

// ExtendPCRResponse is {"ExtendPCR": {"data": bstr}}, the PCR's new value.
type ExtendPCRResponse struct{ Data []byte }

// LockPCRResponse is the text string "LockPCR".
type LockPCRResponse struct{}

// LockPCRsResponse is the text string "LockPCRs".
type LockPCRsResponse struct{}

// DescribeNSMResponse is {"DescribeNSM": {"version_major": u16,
// "version_minor": u16, "version_patch": u16, "module_id": text,
// "max_pcrs": u16, "locked_pcrs": [u16…], "digest": text}}.
type DescribeNSMResponse struct {
	VersionMajor uint16
	VersionMinor uint16
	VersionPatch uint16
	ModuleID     string
	MaxPCRs      uint16
	LockedPCRs   []uint16
	Digest       Digest
}

// AttestationResponse is {"Attestation": {"document": bstr}}; Document is
// the COSE_Sign1 attestation document.
type AttestationResponse struct{ Document []byte }

// GetRandomResponse is {"GetRandom": {"random": bstr}}.
type GetRandomResponse struct{ Random []byte }

// ErrorResponse is {"Error": "<ErrorCode name>"}.
type ErrorResponse struct{ Code ErrorCode }

// Name returns "DescribePCR".
func (DescribePCRResponse) Name() string { return "DescribePCR" }

// Name returns "ExtendPCR".
func (ExtendPCRResponse) Name() string { return "ExtendPCR" }

// Name returns "LockPCR".
func (LockPCRResponse) Name() string { return "LockPCR" }

// Name returns "LockPCRs".
func (LockPCRsResponse) Name() string { return "LockPCRs" }

// Name returns "DescribeNSM".
func (DescribeNSMResponse) Name() string { return "DescribeNSM" }

// Name returns "Attestation".
func (AttestationResponse) Name() string { return "Attestation" }

// Name returns "GetRandom".
func (GetRandomResponse) Name() string { return "GetRandom" }

// Name returns "Error".
func (ErrorResponse) Name() string { return "Error" }

func (DescribePCRResponse) isResponse() {}
func (ExtendPCRResponse) isResponse()   {}
func (LockPCRResponse) isResponse()     {}
func (LockPCRsResponse) isResponse()    {}
func (DescribeNSMResponse) isResponse() {}
func (AttestationResponse) isResponse() {}
func (GetRandomResponse) isResponse()   {}
func (ErrorResponse) isResponse()       {}

// EncodeRequest returns the serde_cbor encoding of r: unit variants as a
// text string, the others as a one-entry map {variant: {fields…}} with the
// fields in declaration order, minimal-width integers, byte strings for the
// byte fields and null for absent attestation fields. It fails only for a
// nil request. It does not enforce [MaxRequestSize]; [Client] does.
func EncodeRequest(r Request) ([]byte, error) {
	var b []byte
	switch r := r.(type) {
	case DescribePCRRequest:
		b = appendVariant(make([]byte, 0, 24), r.Name(), 1)
		b = appendUintField(b, "index", uint64(r.Index))
	case ExtendPCRRequest:
		b = appendVariant(make([]byte, 0, 32+len(r.Data)), r.Name(), 2)
		b = appendUintField(b, "index", uint64(r.Index))
		b = cborx.AppendText(b, "data")
		b = cborx.AppendBytes(b, r.Data)
	case LockPCRRequest:
		b = appendVariant(make([]byte, 0, 24), r.Name(), 1)
		b = appendUintField(b, "index", uint64(r.Index))
	case LockPCRsRequest:
		b = appendVariant(make([]byte, 0, 24), r.Name(), 1)
		b = appendUintField(b, "range", uint64(r.Range))
	case DescribeNSMRequest:
		b = cborx.AppendText(nil, r.Name())
	case AttestationRequest:
		b = appendVariant(make([]byte, 0, 64+len(r.UserData)+len(r.Nonce)+len(r.PublicKey)), r.Name(), 3)
		b = cborx.AppendText(b, "user_data")
		b = appendBytesOrNull(b, r.UserData)
		b = cborx.AppendText(b, "nonce")
		b = appendBytesOrNull(b, r.Nonce)
		b = cborx.AppendText(b, "public_key")
		b = appendBytesOrNull(b, r.PublicKey)
	case GetRandomRequest:
		b = cborx.AppendText(nil, r.Name())
	default:
		return nil, fmt.Errorf("nsm: encode request: unsupported request %T", r)
	}
	return b, nil
}

// EncodeResponse returns the serde_cbor encoding of r (same rules as
// [EncodeRequest]; "LockPCR" and "LockPCRs" are text strings, errors are
// {"Error": name}). It fails for a nil response or an ErrorResponse whose
// code is not one of the nine defined codes. It does not enforce
// [MaxResponseSize].
func EncodeResponse(r Response) ([]byte, error) {
	var b []byte
	switch r := r.(type) {
	case DescribePCRResponse:
		b = appendVariant(make([]byte, 0, 32+len(r.Data)), r.Name(), 2)
		b = cborx.AppendText(b, "lock")
		b = appendBool(b, r.Lock)
		b = cborx.AppendText(b, "data")
		b = cborx.AppendBytes(b, r.Data)
	case ExtendPCRResponse:
		b = appendVariant(make([]byte, 0, 24+len(r.Data)), r.Name(), 1)
		b = cborx.AppendText(b, "data")
		b = cborx.AppendBytes(b, r.Data)
	case LockPCRResponse:
		b = cborx.AppendText(nil, r.Name())
	case LockPCRsResponse:
		b = cborx.AppendText(nil, r.Name())
	case DescribeNSMResponse:
		b = appendVariant(make([]byte, 0, 128+len(r.ModuleID)+3*len(r.LockedPCRs)), r.Name(), 7)
		b = appendUintField(b, "version_major", uint64(r.VersionMajor))
		b = appendUintField(b, "version_minor", uint64(r.VersionMinor))
		b = appendUintField(b, "version_patch", uint64(r.VersionPatch))
		b = cborx.AppendText(b, "module_id")
		b = cborx.AppendText(b, r.ModuleID)
		b = appendUintField(b, "max_pcrs", uint64(r.MaxPCRs))
		b = cborx.AppendText(b, "locked_pcrs")
		b = cborx.AppendHead(b, cborx.MajorArray, uint64(len(r.LockedPCRs)))
		for _, i := range r.LockedPCRs {
			b = cborx.AppendHead(b, cborx.MajorUint, uint64(i))
		}
		b = cborx.AppendText(b, "digest")
		b = cborx.AppendText(b, string(r.Digest))
	case AttestationResponse:
		b = appendVariant(make([]byte, 0, 32+len(r.Document)), r.Name(), 1)
		b = cborx.AppendText(b, "document")
		b = cborx.AppendBytes(b, r.Document)
	case GetRandomResponse:
		b = appendVariant(make([]byte, 0, 32+len(r.Random)), r.Name(), 1)
		b = cborx.AppendText(b, "random")
		b = cborx.AppendBytes(b, r.Random)
	case ErrorResponse:
		if !r.Code.valid() {
			return nil, fmt.Errorf("nsm: encode response: undefined error code %d", uint8(r.Code))
		}
		b = cborx.AppendHead(make([]byte, 0, 32), cborx.MajorMap, 1)
		b = cborx.AppendText(b, "Error")
		b = cborx.AppendText(b, r.Code.String())
	default:
		return nil, fmt.Errorf("nsm: encode response: unsupported response %T", r)
	}
	return b, nil
}

// DecodeRequest decodes one NSM request with the strict CBOR mode of
// internal/cborx (duplicate keys, indefinite lengths, tags, trailing bytes
// and excessive nesting are refused). Beyond well-formedness it checks:
// the input is at most [MaxRequestSize] bytes; the top level is a known
// unit-variant text string ("DescribeNSM", "GetRandom") or a one-entry map
// whose key is a known struct variant and whose value is a map with text
// keys; every required field is present with exactly its type (u16 as an
// unsigned integer ≤ 65535, data as a byte string — the text form QEMU
// also takes is refused); attestation fields are a byte string, null, or
// absent (absent = null, as serde does for Option); unknown fields are
// refused. Every error wraps [ErrMalformed].
func DecodeRequest(b []byte) (Request, error) {
	if len(b) > MaxRequestSize {
		return nil, malformed("request is %d bytes, the limit is %d", len(b), MaxRequestSize)
	}
	name, body, err := decodeEnvelope(b)
	if err != nil {
		return nil, err
	}
	if body == nil {
		switch name {
		case "DescribeNSM":
			return DescribeNSMRequest{}, nil
		case "GetRandom":
			return GetRandomRequest{}, nil
		}
		return nil, malformed("unknown unit request %q", name)
	}
	f, err := decodeFields(name, body)
	if err != nil {
		return nil, err
	}
	switch name {
	case "DescribePCR", "LockPCR":
		if err := f.only("index"); err != nil {
			return nil, err
		}
		i, err := f.u16("index")
		if err != nil {
			return nil, err
		}
		if name == "DescribePCR" {
			return DescribePCRRequest{Index: i}, nil
		}
		return LockPCRRequest{Index: i}, nil
	case "ExtendPCR":
		if err := f.only("index", "data"); err != nil {
			return nil, err
		}
		i, err := f.u16("index")
		if err != nil {
			return nil, err
		}
		d, err := f.bytes("data")
		if err != nil {
			return nil, err
		}
		return ExtendPCRRequest{Index: i, Data: d}, nil
	case "LockPCRs":
		if err := f.only("range"); err != nil {
			return nil, err
		}
		r, err := f.u16("range")
		if err != nil {
			return nil, err
		}
		return LockPCRsRequest{Range: r}, nil
	case "Attestation":
		if err := f.only("user_data", "nonce", "public_key"); err != nil {
			return nil, err
		}
		var req AttestationRequest
		if req.UserData, err = f.optBytes("user_data"); err != nil {
			return nil, err
		}
		if req.Nonce, err = f.optBytes("nonce"); err != nil {
			return nil, err
		}
		if req.PublicKey, err = f.optBytes("public_key"); err != nil {
			return nil, err
		}
		return req, nil
	}
	return nil, malformed("unknown request %q", name)
}

// DecodeResponse decodes one NSM response with the strict CBOR mode of
// internal/cborx. Beyond well-formedness it checks: the input is at most
// [MaxResponseSize] bytes; the top level is "LockPCR" or "LockPCRs" as a
// text string, {"Error": <one of the nine code names>}, or a one-entry map
// of a known struct variant to a map with text keys; every field is present
// with exactly its type (u16 ≤ 65535, bool, byte strings for data, random
// and document, text for module_id, one of "SHA256", "SHA384", "SHA512"
// for digest, an array of u16 for locked_pcrs). Unknown fields are ignored,
// as nsm-api's serde types do, so that a newer module stays readable.
// Every error wraps [ErrMalformed].
func DecodeResponse(b []byte) (Response, error) {
	if len(b) > MaxResponseSize {
		return nil, malformed("response is %d bytes, the limit is %d", len(b), MaxResponseSize)
	}
	name, body, err := decodeEnvelope(b)
	if err != nil {
		return nil, err
	}
	if body == nil {
		switch name {
		case "LockPCR":
			return LockPCRResponse{}, nil
		case "LockPCRs":
			return LockPCRsResponse{}, nil
		}
		return nil, malformed("unknown unit response %q", name)
	}
	if name == "Error" {
		if cborx.Major(body) != cborx.MajorText {
			return nil, malformed("Error: value is not a text string")
		}
		var s string
		if err := cborx.Decode(body, &s); err != nil {
			return nil, malformed("Error: %v", err)
		}
		c, ok := ParseErrorCode(s)
		if !ok {
			return nil, malformed("Error: unknown error code %q", s)
		}
		return ErrorResponse{Code: c}, nil
	}
	f, err := decodeFields(name, body)
	if err != nil {
		return nil, err
	}
	switch name {
	case "DescribePCR":
		l, err := f.boolean("lock")
		if err != nil {
			return nil, err
		}
		d, err := f.bytes("data")
		if err != nil {
			return nil, err
		}
		return DescribePCRResponse{Lock: l, Data: d}, nil
	case "ExtendPCR":
		d, err := f.bytes("data")
		if err != nil {
			return nil, err
		}
		return ExtendPCRResponse{Data: d}, nil
	case "DescribeNSM":
		var r DescribeNSMResponse
		if r.VersionMajor, err = f.u16("version_major"); err != nil {
			return nil, err
		}
		if r.VersionMinor, err = f.u16("version_minor"); err != nil {
			return nil, err
		}
		if r.VersionPatch, err = f.u16("version_patch"); err != nil {
			return nil, err
		}
		if r.ModuleID, err = f.text("module_id"); err != nil {
			return nil, err
		}
		if r.MaxPCRs, err = f.u16("max_pcrs"); err != nil {
			return nil, err
		}
		if r.LockedPCRs, err = f.u16s("locked_pcrs"); err != nil {
			return nil, err
		}
		d, err := f.text("digest")
		if err != nil {
			return nil, err
		}
		switch Digest(d) {
		case DigestSHA256, DigestSHA384, DigestSHA512:
			r.Digest = Digest(d)
		default:
			return nil, malformed("DescribeNSM: unknown digest %q", d)
		}
		return r, nil
	case "Attestation":
		d, err := f.bytes("document")
		if err != nil {
			return nil, err
		}
		return AttestationResponse{Document: d}, nil
	case "GetRandom":
		d, err := f.bytes("random")
		if err != nil {
			return nil, err
		}
		return GetRandomResponse{Random: d}, nil
	}
	return nil, malformed("unknown response %q", name)
}

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...)
}

// decodeEnvelope splits an externally tagged serde enum value into its
// variant name and, for a struct variant, the raw value (nil for a unit
// variant encoded as a text string).
func decodeEnvelope(b []byte) (string, cbor.RawMessage, error) {
	switch cborx.Major(b) {
	case cborx.MajorText:
		var s string
		if err := cborx.Decode(b, &s); err != nil {
			return "", nil, malformed("%v", err)
		}
		return s, nil, nil
	case cborx.MajorMap:
		var m map[string]cbor.RawMessage
		if err := cborx.Decode(b, &m); err != nil {
			return "", nil, malformed("%v", err)
		}
		if len(m) != 1 {
			return "", nil, malformed("top-level map has %d entries, want 1", len(m))
		}
		for k, v := range m {
			return k, v, nil
		}
	case -1:
		return "", nil, malformed("empty message")
	}
	return "", nil, malformed("top level is CBOR major type %d, want a text string or a map", cborx.Major(b))
}

// fields is the decoded body of a struct variant.
type fields struct {
	variant string
	m       map[string]cbor.RawMessage
}

func decodeFields(variant string, body cbor.RawMessage) (fields, error) {
	if cborx.Major(body) != cborx.MajorMap {
		return fields{}, malformed("%s: value is not a map", variant)
	}
	var m map[string]cbor.RawMessage
	if err := cborx.Decode(body, &m); err != nil {
		return fields{}, malformed("%s: %v", variant, err)
	}
	return fields{variant: variant, m: m}, nil
}

// only fails if the body has a key other than names.
func (f fields) only(names ...string) error {
next:
	for k := range f.m {
		for _, n := range names {
			if k == n {
				continue next
			}
		}
		return malformed("%s: unknown field %q", f.variant, k)
	}
	return nil
}

func (f fields) raw(name string) (cbor.RawMessage, error) {
	v, ok := f.m[name]
	if !ok {
		return nil, malformed("%s: field %q is missing", f.variant, name)
	}
	return v, nil
}

func (f fields) u16(name string) (uint16, error) {
	v, err := f.raw(name)
	if err != nil {
		return 0, err
	}
	return f.decodeU16(name, v)
}

func (f fields) decodeU16(name string, v cbor.RawMessage) (uint16, error) {
	if cborx.Major(v) != cborx.MajorUint {
		return 0, malformed("%s: %s is not an unsigned integer", f.variant, name)
	}
	var u uint64
	if err := cborx.Decode(v, &u); err != nil {
		return 0, malformed("%s: %s: %v", f.variant, name, err)
	}
	if u > 0xffff {
		return 0, malformed("%s: %s %d does not fit in u16", f.variant, name, u)
	}
	return uint16(u), nil
}

func (f fields) u16s(name string) ([]uint16, error) {
	v, err := f.raw(name)
	if err != nil {
		return nil, err
	}
	if cborx.Major(v) != cborx.MajorArray {
		return nil, malformed("%s: %s is not an array", f.variant, name)
	}
	var items []cbor.RawMessage
	if err := cborx.Decode(v, &items); err != nil {
		return nil, malformed("%s: %s: %v", f.variant, name, err)
	}
	out := make([]uint16, len(items))
	for i, it := range items {
		if out[i], err = f.decodeU16(name, it); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (f fields) boolean(name string) (bool, error) {
	v, err := f.raw(name)
	if err != nil {
		return false, err
	}
	switch {
	case len(v) == 1 && v[0] == 0xf4:
		return false, nil
	case len(v) == 1 && v[0] == 0xf5:
		return true, nil
	}
	return false, malformed("%s: %s is not a boolean", f.variant, name)
}

func (f fields) text(name string) (string, error) {
	v, err := f.raw(name)
	if err != nil {
		return "", err
	}
	if cborx.Major(v) != cborx.MajorText {
		return "", malformed("%s: %s is not a text string", f.variant, name)
	}
	var s string
	if err := cborx.Decode(v, &s); err != nil {
		return "", malformed("%s: %s: %v", f.variant, name, err)
	}
	return s, nil
}

func (f fields) bytes(name string) ([]byte, error) {
	v, err := f.raw(name)
	if err != nil {
		return nil, err
	}
	return f.decodeBytes(name, v)
}

func (f fields) decodeBytes(name string, v cbor.RawMessage) ([]byte, error) {
	if cborx.Major(v) != cborx.MajorBytes {
		return nil, malformed("%s: %s is not a byte string", f.variant, name)
	}
	var p []byte
	if err := cborx.Decode(v, &p); err != nil {
		return nil, malformed("%s: %s: %v", f.variant, name, err)
	}
	if p == nil {
		p = []byte{}
	}
	return p, nil
}

// optBytes decodes an Option<ByteBuf>: absent or null is nil, a byte
// string is a non-nil slice (empty for a zero-length byte string).
func (f fields) optBytes(name string) ([]byte, error) {
	v, ok := f.m[name]
	if !ok || cborx.IsNull(v) {
		return nil, nil
	}
	return f.decodeBytes(name, v)
}

func appendBytesOrNull(b, p []byte) []byte {
	if p == nil {
		return append(b, cborx.Null)
	}
	return cborx.AppendBytes(b, p)
}

func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, 0xf5)
	}
	return append(b, 0xf4)
}

func appendUintField(b []byte, name string, v uint64) []byte {
	return cborx.AppendHead(cborx.AppendText(b, name), cborx.MajorUint, v)
}

// appendVariant starts {name: {…n fields…}}.
func appendVariant(b []byte, name string, n int) []byte {
	b = cborx.AppendHead(b, cborx.MajorMap, 1)
	b = cborx.AppendText(b, name)
	return cborx.AppendHead(b, cborx.MajorMap, uint64(n))
}
