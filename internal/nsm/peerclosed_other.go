//go:build !unix

package nsm

import "net"

// stale cannot inspect connections here: a connection counts as usable
// (a failed exchange on it is retried as described on [Stream]).
func stale(c net.Conn) bool { return false }
