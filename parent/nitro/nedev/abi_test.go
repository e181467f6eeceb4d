package nedev

import (
	"errors"
	"strings"
	"syscall"
	"testing"
	"unsafe"
)

// ioc computes _IOC(dir, 0xAE, nr, size) as asm-generic/ioctl.h does.
func ioc(dir, nr, size uintptr) uintptr { return dir<<30 | size<<16 | 0xAE<<8 | nr }

func TestIoctlNumbers(t *testing.T) {
	const read, write = 2, 1
	tests := []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"NE_CREATE_VM", IoctlCreateVM, ioc(read, 0x20, unsafe.Sizeof(uint64(0)))},
		{"NE_ADD_VCPU", IoctlAddVCPU, ioc(read|write, 0x21, unsafe.Sizeof(uint32(0)))},
		{"NE_GET_IMAGE_LOAD_INFO", IoctlGetImageLoadInfo, ioc(read|write, 0x22, unsafe.Sizeof(ImageLoadInfo{}))},
		{"NE_SET_USER_MEMORY_REGION", IoctlSetUserMemoryRegion, ioc(write, 0x23, unsafe.Sizeof(UserMemoryRegion{}))},
		{"NE_START_ENCLAVE", IoctlStartEnclave, ioc(read|write, 0x24, unsafe.Sizeof(EnclaveStartInfo{}))},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s = %#x, want %#x", tt.name, tt.got, tt.want)
		}
	}
}

func TestErrnoMessages(t *testing.T) {
	for e := FirstErrno; e <= LastErrno; e++ {
		err := NewIoctlError(OpStartEnclave, syscall.Errno(e))
		if !errors.Is(err, e) {
			t.Errorf("errno %d: errors.Is(err, sentinel) = false", e)
		}
		if !errors.Is(err, syscall.Errno(e)) {
			t.Errorf("errno %d: errors.Is(err, syscall.Errno) = false", e)
		}
		msg := err.Error()
		if !strings.Contains(msg, e.Name()) || !strings.Contains(msg, "fix: ") || strings.HasPrefix(e.Name(), "NE_ERR_2") {
			t.Errorf("errno %d: message %q lacks the name or the fix", e, msg)
		}
		if e.Fix() == "" {
			t.Errorf("errno %d has no fix", e)
		}
		for o := FirstErrno; o <= LastErrno; o++ {
			if o != e && errors.Is(err, o) {
				t.Errorf("errno %d matches sentinel %d", e, o)
			}
		}
	}
	msg := NewIoctlError(OpAddVCPU, syscall.Errno(ErrFullCoresNotUsed)).Error()
	if !strings.Contains(msg, "use all hyperthread siblings of each core") {
		t.Errorf("FULL_CORES_NOT_USED message %q lacks the fix", msg)
	}
}

func TestGenericErrno(t *testing.T) {
	for _, en := range []syscall.Errno{syscall.EPERM, syscall.EACCES, syscall.ENOENT, syscall.ENOMEM, syscall.EINVAL, syscall.EFAULT, syscall.EBUSY, syscall.EIO, syscall.ENOTTY, syscall.EINTR, syscall.EBADF, syscall.E2BIG} {
		err := NewIoctlError(OpOpen, en)
		if !errors.Is(err, en) {
			t.Errorf("%v: errors.Is = false", en)
		}
		for e := FirstErrno; e <= LastErrno; e++ {
			if errors.Is(err, e) {
				t.Errorf("%v matches driver errno %d", en, e)
			}
		}
		if !strings.Contains(err.Error(), "fix: ") || !strings.Contains(err.Error(), string(OpOpen)) {
			t.Errorf("%v: message %q lacks op or fix", en, err)
		}
	}
	if got := NewIoctlError(OpOpen, syscall.EACCES).Error(); !strings.Contains(got, "ne group") {
		t.Errorf("EACCES on open: %q does not mention the ne group", got)
	}
}
