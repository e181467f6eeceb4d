// Package jsonx is the one strict JSON decoding Cloister uses for JSON that
// comes from outside the process (key-service request bodies and key
// policies).
//
// encoding/json alone is ambiguous for such input: it keeps the last of two
// members with the same name, matches member names to struct fields
// ignoring case (so "effect" fills Effect, and of "Effect" and "effect" the
// later wins), and replaces invalid UTF-8 and lone surrogates with U+FFFD
// (so two different names can decode to the same one). Another reader of
// the same text (a log, a proxy, a person reading GetKeyPolicy) may see a
// different document than the one enforced. [Check] and [Unmarshal] refuse
// such input before encoding/json sees it:
//
//   - the input is exactly one JSON value (RFC 8259), surrounded only by
//     JSON whitespace;
//   - strings are valid UTF-8 with no lone surrogate escapes (RFC 7493,
//     I-JSON), so every name has exactly one decoded form;
//   - no object has two members whose names are equal after unescaping
//     ([ErrDuplicateName]);
//   - with [Options.FoldedNames], no object has two members whose names
//     differ only in case, under the Unicode simple folding encoding/json
//     uses to match struct fields ([ErrNameCase]);
//   - [Unmarshal] also rejects a member of an object decoded into a struct
//     whose name equals a field's JSON name only ignoring case
//     ([ErrNameCase]), and, with [Options.DisallowUnknownFields], one that
//     names no field ([ErrUnknownField]); members are thus matched
//     case-sensitively, as AWS's JSON protocols do;
//   - arrays and objects nest at most [MaxDepth] deep.
//
// Every error wraps [ErrMalformed] and is an [*Error] giving the byte offset
// and the path of the offending member. Callers cap the input size before
// calling.
package jsonx
