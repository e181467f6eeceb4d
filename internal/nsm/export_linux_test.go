//go:build linux

package nsm

import (
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// NewFakeDevice returns a Device on f whose ioctl calls ioctl and whose
// response buffer is respSize bytes (0 = MaxResponseSize).
func NewFakeDevice(f *os.File, ioctl func(fd, cmd uintptr, arg unsafe.Pointer) unix.Errno, respSize int) *Device {
	d := newDevice(f, ioctl)
	if respSize > 0 {
		d.respSize = respSize
	}
	return d
}
