//go:build !unix

package nsm

// stale cannot inspect connections here: a connection counts as usable
// (a failed exchange on it is retried as described on [Stream]).
func stale(c Conn) bool { return false }
