//go:build unix

package nsm

import "syscall"

// stale reports whether a connection kept from an earlier exchange can no
// longer carry a request: the peer closed it (the emulated module closes
// idle connections) or sent something unasked. It peeks without blocking;
// a connection it cannot inspect counts as usable.
func stale(c Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	usable := true
	if err := rc.Control(func(fd uintptr) {
		var b [1]byte
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		usable = err == syscall.EAGAIN || err == syscall.EWOULDBLOCK
	}); err != nil {
		return false
	}
	return !usable
}
