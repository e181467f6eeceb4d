package daemon

import (
	"errors"
	"fmt"
)

// Error classes of the daemon, checked with errors.Is and mapped to HTTP
// status codes only at the API boundary.
var (
	ErrInvalidArgument = errors.New("invalid argument")
	ErrNotFound        = errors.New("not found")
	ErrConflict        = errors.New("conflict")
	ErrResources       = errors.New("insufficient resources")
	ErrBoot            = errors.New("enclave boot failed")
	ErrUnavailable     = errors.New("unavailable")
)

// Error is a daemon error with the nitro-cli error code that corresponds to
// it, so users can look it up in nitro-cli's documentation (`nitro-cli
// explain --error-code E26`).
type Error struct {
	Code  string // e.g. "E26"; empty when nitro-cli has no equivalent
	Class error  // one of the Err* classes above
	Msg   string
}

func (e *Error) Error() string {
	if e.Code != "" {
		return fmt.Sprintf("[%s] %s", e.Code, e.Msg)
	}
	return e.Msg
}

// Is makes errors.Is(err, ErrResources) and friends work.
func (e *Error) Is(target error) bool { return target == e.Class }

func newErr(code string, class error, format string, args ...any) *Error {
	return &Error{Code: code, Class: class, Msg: fmt.Sprintf(format, args...)}
}
