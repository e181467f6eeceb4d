package parent

import (
	"errors"
	"fmt"
	"net/http"
)

// Error classes of the daemon's API. The daemon returns them wrapped in an
// *Error; the client rebuilds the same *Error from the response, so
// errors.Is(err, parent.ErrNotFound) works on both sides of the socket.
var (
	ErrInvalidArgument = errors.New("invalid argument")
	ErrNotFound        = errors.New("not found")
	ErrConflict        = errors.New("conflict")
	ErrResources       = errors.New("insufficient resources")
	ErrBoot            = errors.New("enclave boot failed")
	ErrUnavailable     = errors.New("unavailable")
	ErrInternal        = errors.New("internal error")
)

// classes maps each class to its wire kind and HTTP status: the one place
// the API boundary spells them.
var classes = []struct {
	class  error
	kind   string
	status int
}{
	{ErrInvalidArgument, "invalid_argument", http.StatusBadRequest},
	{ErrNotFound, "not_found", http.StatusNotFound},
	{ErrConflict, "conflict", http.StatusConflict},
	{ErrResources, "insufficient_resources", http.StatusConflict},
	{ErrBoot, "boot_failed", http.StatusBadGateway},
	{ErrUnavailable, "unavailable", http.StatusServiceUnavailable},
	{ErrInternal, "internal", http.StatusInternalServerError},
}

// Error is an error of the daemon, on either side of the API: its class
// (one of the Err* above), nitro-cli's error code where one applies (so
// users can look it up with `cloister explain --error-code`), and the
// message. Status is the HTTP status it travelled with (0 inside the
// daemon).
type Error struct {
	Code   string // e.g. "E26"; empty when nitro-cli has no equivalent
	Class  error
	Msg    string
	Status int
}

// NewError returns an *Error of class with code and a formatted message.
func NewError(code string, class error, format string, args ...any) *Error {
	return &Error{Code: code, Class: class, Msg: fmt.Sprintf(format, args...)}
}

// Error formats the error as "[Exx] message", or the message alone.
func (e *Error) Error() string {
	if e.Code != "" {
		return "[" + e.Code + "] " + e.Msg
	}
	return e.Msg
}

// Is makes errors.Is(err, ErrResources) and friends work.
func (e *Error) Is(target error) bool { return target == e.Class }

// ErrorKinds lists every error kind of the API (APIError.Kind), in the
// order ErrorKind tries their classes.
func ErrorKinds() []string {
	kinds := make([]string, len(classes))
	for i, c := range classes {
		kinds[i] = c.kind
	}
	return kinds
}

// ErrorKind returns the API's kind of err (APIError.Kind: invalid_argument,
// not_found, …), "internal" for an error of no known class.
func ErrorKind(err error) string {
	kind, _ := errorClass(err)
	return kind
}

func errorClass(err error) (kind string, status int) {
	for _, c := range classes {
		if errors.Is(err, c.class) {
			return c.kind, c.status
		}
	}
	return "internal", http.StatusInternalServerError
}

// APIErrorOf converts err into the body and HTTP status of an error
// response. Errors of no known class are internal.
func APIErrorOf(err error) (APIError, int) {
	body := APIError{Message: err.Error()}
	var status int
	body.Kind, status = errorClass(err)
	var e *Error
	if errors.As(err, &e) {
		body.Code, body.Message = e.Code, e.Msg
	}
	return body, status
}

// errorOf rebuilds the daemon's error from a response.
func errorOf(body APIError, status int) *Error {
	e := &Error{Code: body.Code, Msg: body.Message, Status: status, Class: ErrInternal}
	for _, c := range classes {
		if c.kind == body.Kind {
			e.Class = c.class
			break
		}
	}
	return e
}
