//go:build !linux

package unotify

// CheckHost fails: supervision needs Linux.
func CheckHost() error { return ErrUnsupported }
