package nsm

import "unsafe"

// DevicePath is where the Nitro security module's misc device appears
// inside a Nitro enclave.
const DevicePath = "/dev/nsm"

// ioctlRaw is NSM_IOCTL_RAW = _IOWR(0x0A, 0x00, struct nsm_raw) with
// sizeof(struct nsm_raw) = 32: direction read|write (3) << 30, size 32
// << 16, type 0x0A << 8, number 0.
const ioctlRaw = 3<<30 | 32<<16 | 0x0A<<8

// nsmIovec is struct nsm_iovec { __u64 addr; __u64 len; } on a 64-bit
// platform (Nitro enclaves are x86_64 or aarch64). Addr is a real pointer
// so the buffers stay visible to the garbage collector during the ioctl.
type nsmIovec struct {
	Addr unsafe.Pointer
	Len  uint64
}

// nsmRaw is struct nsm_raw { struct nsm_iovec request, response; }, 32
// bytes, layout-compatible with struct iovec[2] on 64-bit Linux.
type nsmRaw struct {
	Request  nsmIovec
	Response nsmIovec
}

// rawLayoutOK reports whether nsmRaw has the kernel's 32-byte layout on
// this platform (false on 32-bit platforms, where the device is refused).
func rawLayoutOK() bool {
	return unsafe.Sizeof(nsmRaw{}) == 32 && unsafe.Offsetof(nsmRaw{}.Response) == 16
}
