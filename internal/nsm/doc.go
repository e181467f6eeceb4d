// Package nsm speaks the protocol of the AWS Nitro Security Module (NSM):
// the CBOR wire codec, a typed [Client], and two [Transport]s — [Device]
// for /dev/nsm inside a Nitro enclave and [Stream] for the module the
// Cloister daemon emulates (package parent/nsmemu) for microVM and sandbox
// enclaves. The public API is enclave.Session.
//
// # Wire format
//
// Messages are exactly what AWS's nsm-api (serde) puts on the wire: an
// externally tagged enum, where a unit variant is a CBOR text string
// ("DescribeNSM", "GetRandom", "LockPCR", "LockPCRs") and a struct variant
// is a one-entry map {variant: {field: value, …}} with text keys in
// declaration order, minimal-width unsigned integers, byte strings for the
// serde_bytes fields and null for None. Module errors are
// {"Error": "<ErrorCode name>"}. [EncodeRequest] and [EncodeResponse]
// produce these bytes (golden tests pin every message, and a cross-check
// with github.com/hf/nsm shows byte-identical requests).
//
// [DecodeRequest] and [DecodeResponse] use the strict CBOR mode of
// internal/cborx (no duplicate keys, indefinite lengths, tags or trailing
// bytes; bounded nesting) and then check every field's presence and exact
// CBOR type. They are stricter than serde in a few places, deliberately:
// the text-string form of byte fields that serde_bytes and QEMU accept is
// refused, and requests with unknown fields are refused. Responses ignore
// unknown fields as nsm-api does, so that a newer module stays readable.
//
// # Limits
//
// A request is at most [MaxRequestSize] (4096) bytes and a response at most
// [MaxResponseSize] (12288). The [Client] refuses, before sending, an
// attestation field over [MaxAttestationField] (1024) bytes, a request over
// 4096 bytes and a PCR index the wire's u16 cannot carry, with a
// [*LimitError]. A module's refusal is an [*Error]. Both match the
// sentinel of their code (ErrReadOnlyIndex, ErrInputTooLarge, …) with
// errors.Is.
//
// # /dev/nsm
//
// [Device] issues the NSM_IOCTL_RAW ioctl (0xC0200A00, struct nsm_raw =
// two {addr, len} iovecs) itself rather than through github.com/hf/nsm's
// Session: that Session has no context support, reports EMSGSIZE as a
// generic errno instead of InputTooLarge, indexes &req[0] without a length
// check, and decodes responses with fxamacker/cbor's permissive defaults
// (duplicate keys, unknown variants) and without the InvalidIndex code. The
// ioctl sits behind a function seam so the unit tests drive the whole path
// — struct layout, buffer sizes, EINTR retries, EMSGSIZE, a truncated
// response — against a fake driver in front of the emulator. hf/nsm is
// still used by the tests, as an independent encoder and decoder.
//
// # Stream framing
//
// On the stream (vsock port [Port] = 0x4E534D on the parent, or its Unix
// socket in the sandbox) each message is a 4-byte big-endian length N
// followed by N bytes of NSM CBOR, the bytes the ioctl would carry; one
// request, one response, repeated on one connection. See [WriteFrame],
// [ReadFrame] and [Stream].
package nsm
