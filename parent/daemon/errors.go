package daemon

import "github.com/cloister/cloister/parent"

// The daemon's errors are parent.Error values of parent's classes
// (parent.ErrInvalidArgument, parent.ErrNotFound, …), so that clients see
// the same classes through errors.Is.

func newErr(code string, class error, format string, args ...any) *parent.Error {
	return parent.NewError(code, class, format, args...)
}
