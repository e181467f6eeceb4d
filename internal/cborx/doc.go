// Package cborx holds the one strict CBOR decoding mode that Cloister uses
// for every byte string that comes from outside the process (attestation
// documents, NSM requests and responses, key-service messages), a
// deterministic encoding mode for what Cloister itself emits, and the one
// head encoder ([AppendHead], with [AppendInt], [AppendText] and
// [AppendBytes]) for CBOR that must be written byte by byte (the NSM's
// messages, attestation payloads, nitro's EIF signature section).
//
// Limits enforced by [Strict] (and therefore by [Decode]):
//
//   - nesting of arrays, maps and tags: at most [MaxNestedLevels] (16);
//   - array elements: at most [MaxArrayElements] (2048) per array;
//   - map pairs: at most [MaxMapPairs] (2048) per map;
//   - duplicate map keys are an error (compared after decoding, so 0x01 and
//     0x1801 are the same key);
//   - indefinite-length strings, arrays and maps are an error;
//   - every CBOR tag is an error (a caller that must accept COSE's tag 18
//     strips it itself, see [StripTag]);
//   - text strings must be valid UTF-8; byte strings never decode into Go
//     strings; NaN and infinities are rejected; integers never decode into
//     floats or the other way round (fxamacker/cbor's defaults);
//   - bignums are refused (they are tags);
//   - [Decode] rejects any byte after the first data item.
//
// Byte-string lengths are bounded only by the input length, so callers cap
// the input size before decoding.
package cborx
