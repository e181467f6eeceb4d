//go:build !linux

package nedev

// Open returns ErrUnsupported: the driver exists only on Linux.
func Open(path string) (Device, error) { return nil, ErrUnsupported }
