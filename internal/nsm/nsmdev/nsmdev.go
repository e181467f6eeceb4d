// Package nsmdev is the Linux nsm driver's NSM_IOCTL_RAW ioctl
// (drivers/misc/nsm.c, include/uapi/linux/nsm.h, merged in Linux 6.8)
// written once, over an abstract accessor of the calling process's memory,
// so that every mechanism that serves /dev/nsm outside a Nitro enclave (CUSE
// inside the microVM guest, seccomp user notification in the sandbox)
// shares one implementation of the ABI and of its errno table.
//
// # The driver, step by step
//
// nsm_dev_ioctl in drivers/misc/nsm.c does, in this order (Ioctl does the
// same, and returns the same errno at each step):
//
//	step                                                          errno
//	cmd != NSM_IOCTL_RAW (0xC0200A00)                             EINVAL
//	copy_from_user(&raw, arg, 32) fails                           EFAULT
//	fill_req_raw: raw.request.len > NSM_REQUEST_MAX_SIZE (4096)   EMSGSIZE
//	fill_req_raw: copy_from_user(request) fails                   EFAULT
//	nsm_sendrecv_msg_locked: the device does not answer in 120 s  ETIMEDOUT
//	nsm_sendrecv_msg_locked: the virtqueue cannot be kicked       EIO
//	parse_resp_raw: raw.response.len = min(raw.response.len,
//	    device length); copy_to_user(response) fails              EFAULT
//	copy_to_user(arg, &raw, 32) fails                             EFAULT
//	otherwise                                                     0
//
// Consequences worth knowing, all as in the driver: the request reaches the
// module before the response is copied out, so an ExtendPCR whose response
// buffer is unwritable has still extended the PCR (EFAULT); on that EFAULT
// raw.response.len is not updated; response.len on success is the number of
// bytes copied (the response truncated to the caller's buffer), not the
// module's full length, so a caller cannot learn that its buffer was too
// small except by a full buffer; a zero-length request or response is never
// touched in memory, whatever its address (copy_*_user of 0 bytes succeeds);
// the response buffer given to the device is always NSM_RESPONSE_MAX_SIZE
// (12288) bytes whatever raw.response.len says.
//
// The driver's ENOMEM/ENOSPC (virtqueue allocation) and ENODATA (a device
// that returns the wrong buffer) have no counterpart here: the module is
// reached through a [RoundTripper], whose failure is EIO except for an
// ended ctx deadline, which is the driver's ETIMEDOUT. A response longer
// than NSM_RESPONSE_MAX_SIZE cannot come from a virtio device (its buffer
// is that long) and is EIO too.
//
// What happens before the driver sees the call is the kernel's and not
// emulated here: the VFS handles FIOCLEX, FIONCLEX, FIONBIO, FIOASYNC and
// the other generic ioctls itself, and the ioctl system call truncates its
// command to 32 bits (SYSCALL_DEFINE3(ioctl, unsigned int fd, unsigned int
// cmd, unsigned long arg)), which is why cmd is a uint32: a mechanism that
// sees the raw 64-bit register (seccomp) must truncate it before calling.
//
// # The older out-of-tree driver
//
// Nitro enclaves booted from nitro-cli's blobs (kernels before 6.8) load
// AWS's out-of-tree nsm.ko (aws-nitro-enclaves-sdk-bootstrap, nsm-driver/
// nsm.c). Same command number and struct, different errors: an unreadable
// or NULL arg is EINVAL there (EFAULT here), an unwritable response buffer
// is EINVAL there (EFAULT here), and the response is copied only up to
// min(response.len, 12288). Successful calls behave the same. This
// package follows the upstream driver, which is what Linux ≥ 6.8 and QEMU's
// nitro-enclave machine run.
//
// # Concurrency
//
// The driver serialises requests with one mutex per device. That is not
// observable through the ioctl (concurrent callers have no defined order),
// so Ioctl does not serialise: it is safe for concurrent use when mem and
// rt are, and the order of requests is the [RoundTripper]'s.
package nsmdev

import (
	"context"
	"encoding/binary"
	"errors"
	"syscall"
)

// IoctlRaw is NSM_IOCTL_RAW = _IOWR(0x0A, 0, struct nsm_raw) (struct nsm_raw = two struct nsm_iovec
// {__u64 addr; __u64 len;}: request, response; 32 bytes) = 0xc0200a00.
const IoctlRaw = 0xc0200a00

// Sizes of the ABI (include/uapi/linux/nsm.h).
const (
	// RawSize is sizeof(struct nsm_raw).
	RawSize = 32
	// RequestMaxSize is NSM_REQUEST_MAX_SIZE: a longer request is EMSGSIZE.
	RequestMaxSize = 0x1000
	// ResponseMaxSize is NSM_RESPONSE_MAX_SIZE: the device's response buffer.
	ResponseMaxSize = 0x3000
)

// Memory reads and writes the calling process's memory (process_vm_readv/writev for the sandbox; the CUSE
// retry protocol in the guest). A short or failed access is reported as an error; Ioctl maps it to EFAULT.
type Memory interface {
	ReadAt(p []byte, addr uint64) error
	WriteAt(p []byte, addr uint64) error
}

// RoundTripper sends one raw CBOR NSM request and returns the raw CBOR response (internal/nsm.Transport fits).
type RoundTripper interface {
	RoundTrip(ctx context.Context, req []byte) ([]byte, error)
}

// Raw is struct nsm_raw as it lies in the caller's memory (little-endian,
// the byte order of x86_64 and aarch64, the platforms of Nitro enclaves).
type Raw struct {
	RequestAddr, RequestLen   uint64
	ResponseAddr, ResponseLen uint64
}

// ParseRaw decodes the 32 bytes of a struct nsm_raw.
func ParseRaw(b *[RawSize]byte) Raw {
	return Raw{
		RequestAddr:  binary.LittleEndian.Uint64(b[0:]),
		RequestLen:   binary.LittleEndian.Uint64(b[8:]),
		ResponseAddr: binary.LittleEndian.Uint64(b[16:]),
		ResponseLen:  binary.LittleEndian.Uint64(b[24:]),
	}
}

// Bytes encodes r as the 32 bytes of a struct nsm_raw.
func (r Raw) Bytes() [RawSize]byte {
	var b [RawSize]byte
	binary.LittleEndian.PutUint64(b[0:], r.RequestAddr)
	binary.LittleEndian.PutUint64(b[8:], r.RequestLen)
	binary.LittleEndian.PutUint64(b[16:], r.ResponseAddr)
	binary.LittleEndian.PutUint64(b[24:], r.ResponseLen)
	return b
}

// Ioctl performs ioctl(fd_of_/dev/nsm, cmd, arg) exactly as the Linux nsm driver does and returns 0 or the
// errno the driver returns (EINVAL for an unknown cmd, EFAULT for unreadable/unwritable memory, EMSGSIZE for a
// request over 4096 bytes, …; see the package documentation for the whole table and the driver code each
// errno mirrors). On success the response is copied to the caller's buffer truncated to its response.len,
// and response.len is set to the number of bytes copied, min(response.len, module's length), as the driver's
// parse_resp_raw does. Safe for concurrent use when mem and rt are.
func Ioctl(ctx context.Context, mem Memory, cmd uint32, arg uint64, rt RoundTripper) syscall.Errno {
	// nsm_dev_ioctl: "if (cmd != NSM_IOCTL_RAW) return -EINVAL;" (and
	// the _IOC_SIZE(cmd) != sizeof(raw) check that follows cannot fail).
	if cmd != IoctlRaw {
		return syscall.EINVAL
	}
	// nsm_dev_ioctl: copy_from_user(&raw, argp, _IOC_SIZE(cmd)) → -EFAULT.
	var rb [RawSize]byte
	if !read(mem, rb[:], arg) {
		return syscall.EFAULT
	}
	raw := ParseRaw(&rb)
	// fill_req_raw: "if (raw->request.len > sizeof(req->data)) return
	// -EMSGSIZE;", before the request is read.
	if raw.RequestLen > RequestMaxSize {
		return syscall.EMSGSIZE
	}
	// fill_req_raw: copy_from_user(req->data, request.addr,
	// request.len) → -EFAULT.
	req := make([]byte, raw.RequestLen)
	if !read(mem, req, raw.RequestAddr) {
		return syscall.EFAULT
	}
	// nsm_sendrecv_msg_locked: -ETIMEDOUT after 120 s without an answer,
	// -EIO when the virtqueue cannot be kicked.
	resp, err := rt.RoundTrip(ctx, req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return syscall.ETIMEDOUT
		}
		return syscall.EIO
	}
	if len(resp) > ResponseMaxSize {
		return syscall.EIO
	}
	// parse_resp_raw: "raw->response.len = min_t(u64, raw->response.len,
	// resp->len);" then copy_to_user(response.addr, …) → -EFAULT (raw
	// is not written back then).
	n := min(raw.ResponseLen, uint64(len(resp)))
	if !write(mem, resp[:n], raw.ResponseAddr) {
		return syscall.EFAULT
	}
	raw.ResponseLen = n
	// nsm_dev_ioctl: copy_to_user(argp, &raw, sizeof(raw)) → -EFAULT;
	// the whole struct is written back, request fields as read.
	rb = raw.Bytes()
	if !write(mem, rb[:], arg) {
		return syscall.EFAULT
	}
	return 0
}

// read copies len(p) bytes at addr into p. Zero bytes always succeed
// (copy_from_user of 0 bytes does); a range that wraps the address space
// fails without touching mem (access_ok refuses it).
func read(mem Memory, p []byte, addr uint64) bool {
	if len(p) == 0 {
		return true
	}
	if addr+uint64(len(p)) < addr {
		return false
	}
	return mem.ReadAt(p, addr) == nil
}

// write is read's counterpart for copy_to_user.
func write(mem Memory, p []byte, addr uint64) bool {
	if len(p) == 0 {
		return true
	}
	if addr+uint64(len(p)) < addr {
		return false
	}
	return mem.WriteAt(p, addr) == nil
}
