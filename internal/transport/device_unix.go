//go:build unix

package transport

import (
	"os"
	"syscall"
)

// kernelDevice reports whether path is a character device with the misc
// major number: the nsm driver's /dev/nsm, not a CUSE device.
func kernelDevice(path string) bool {
	fi, err := os.Stat(path)
	if err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return false
	}
	return major(uint64(st.Rdev)) == miscMajor
}

// major is the kernel's MAJOR() of an encoded dev_t (glibc's gnu_dev_major).
func major(dev uint64) uint64 {
	return (dev>>8)&0xfff | (dev>>32)&^0xfff
}
