package nsm

import (
	"errors"
	"fmt"
)

// ErrorCode is an NSM error code. The numeric values are the ones libnsm's C
// API uses (the declaration order of nsm-api's ErrorCode enum); on the wire
// only the names appear, as the text string of an {"Error": name} response.
type ErrorCode uint8

// The error codes of the NSM API, in declaration order.
const (
	Success          ErrorCode = iota // no error; never sent by a well-behaved module
	InvalidArgument                   // input argument(s) invalid
	InvalidIndex                      // PCR index out of bounds
	InvalidResponse                   // the response does not correspond to the request
	ReadOnlyIndex                     // the PCR is locked and the operation would modify it
	InvalidOperation                  // the request cannot be fulfilled (unknown or malformed request)
	BufferTooSmall                    // the output buffer is too small
	InputTooLarge                     // the user-provided input is too large
	InternalError                     // the module failed internally
)

var errorCodeNames = [...]string{
	Success:          "Success",
	InvalidArgument:  "InvalidArgument",
	InvalidIndex:     "InvalidIndex",
	InvalidResponse:  "InvalidResponse",
	ReadOnlyIndex:    "ReadOnlyIndex",
	InvalidOperation: "InvalidOperation",
	BufferTooSmall:   "BufferTooSmall",
	InputTooLarge:    "InputTooLarge",
	InternalError:    "InternalError",
}

// String returns the wire name of c ("ReadOnlyIndex", …), or
// "ErrorCode(n)" for a value outside the enum.
func (c ErrorCode) String() string {
	if int(c) < len(errorCodeNames) {
		return errorCodeNames[c]
	}
	return fmt.Sprintf("ErrorCode(%d)", uint8(c))
}

// valid reports whether c is one of the nine defined codes.
func (c ErrorCode) valid() bool { return int(c) < len(errorCodeNames) }

// ParseErrorCode returns the code whose wire name is exactly name
// (case-sensitive, as serde requires) and whether there is one.
func ParseErrorCode(name string) (ErrorCode, bool) {
	for i, n := range errorCodeNames {
		if n == name {
			return ErrorCode(i), true
		}
	}
	return 0, false
}

// Sentinel errors, one per NSM error code except Success. An [*Error] from
// the module and a [*LimitError] raised by the client before sending both
// match the sentinel of their code with errors.Is.
var (
	ErrInvalidArgument  = errors.New("nsm: invalid argument")
	ErrInvalidIndex     = errors.New("nsm: invalid PCR index")
	ErrInvalidResponse  = errors.New("nsm: invalid response")
	ErrReadOnlyIndex    = errors.New("nsm: PCR is read-only (locked)")
	ErrInvalidOperation = errors.New("nsm: invalid operation")
	ErrBufferTooSmall   = errors.New("nsm: buffer too small")
	ErrInputTooLarge    = errors.New("nsm: input too large")
	ErrInternalError    = errors.New("nsm: internal error")
)

// Other sentinel errors of this package.
var (
	// ErrMalformed is wrapped by every error from DecodeRequest and
	// DecodeResponse: the bytes are not a message of the NSM protocol as
	// this package accepts it (see the package comment for the rules).
	ErrMalformed = errors.New("nsm: malformed message")
	// ErrFrame is wrapped by framing errors on the stream transport: a
	// length prefix of zero or above the limit.
	ErrFrame = errors.New("nsm: bad frame")
	// ErrClosed is returned by a transport used after Close.
	ErrClosed = errors.New("nsm: transport closed")
)

// sentinel returns the sentinel error for c, or nil for Success and
// unknown codes.
func (c ErrorCode) sentinel() error {
	switch c {
	case InvalidArgument:
		return ErrInvalidArgument
	case InvalidIndex:
		return ErrInvalidIndex
	case InvalidResponse:
		return ErrInvalidResponse
	case ReadOnlyIndex:
		return ErrReadOnlyIndex
	case InvalidOperation:
		return ErrInvalidOperation
	case BufferTooSmall:
		return ErrBufferTooSmall
	case InputTooLarge:
		return ErrInputTooLarge
	case InternalError:
		return ErrInternalError
	}
	return nil
}

// Error is an error reported by the security module itself: the response
// to a request was {"Error": Code}. It matches the sentinel of its code
// with errors.Is (e.g. errors.Is(err, ErrReadOnlyIndex)).
type Error struct {
	Op   string    // the request that failed, e.g. "ExtendPCR"
	Code ErrorCode // the code the module returned
}

// Error returns "nsm: <op>: module returned <Code>".
func (e *Error) Error() string {
	return fmt.Sprintf("nsm: %s: module returned %s", e.Op, e.Code)
}

// Is reports whether target is the sentinel error of e.Code.
func (e *Error) Is(target error) bool {
	s := e.Code.sentinel()
	return s != nil && target == s
}

// LimitError is an argument the client refused before sending anything to
// the module: a field or the encoded request over its size limit (Code
// InputTooLarge) or a PCR index or range the wire format cannot carry (Code
// InvalidIndex). It matches the sentinel of Code with errors.Is.
type LimitError struct {
	Op    string    // the request, e.g. "Attestation"
	Field string    // "user_data", "nonce", "public_key", "request", "index", "range"
	Value int       // the offending size in bytes, or the offending index
	Max   int       // the largest accepted value
	Code  ErrorCode // InputTooLarge or InvalidIndex
}

// Error describes the refused argument and the limit it broke.
func (e *LimitError) Error() string {
	if e.Code == InputTooLarge {
		return fmt.Sprintf("nsm: %s: %s is %d bytes, the limit is %d (not sent)", e.Op, e.Field, e.Value, e.Max)
	}
	return fmt.Sprintf("nsm: %s: %s %d outside 0..%d (not sent)", e.Op, e.Field, e.Value, e.Max)
}

// Is reports whether target is the sentinel error of e.Code.
func (e *LimitError) Is(target error) bool {
	s := e.Code.sentinel()
	return s != nil && target == s
}
