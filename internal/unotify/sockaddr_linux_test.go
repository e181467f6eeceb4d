//go:build linux

package unotify

import (
	"testing"
	"unsafe"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

// TestSockaddrVMMatchesXSys checks the encoding against x/sys/unix's
// RawSockaddrVM layout.
func TestSockaddrVMMatchesXSys(t *testing.T) {
	a := NewSockaddrVM(16, 9000)
	var raw unix.RawSockaddrVM
	raw.Family, raw.Port, raw.Cid = AFVsock, 9000, 16
	want := (*[16]byte)(unsafe.Pointer(&raw))[:]
	if diff := cmp.Diff(want, a.Bytes()); diff != "" {
		t.Errorf("bytes (-x/sys +ours):\n%s", diff)
	}
}
