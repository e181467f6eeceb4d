//go:build linux

package nsm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctlFunc performs ioctl(fd, cmd, arg) and returns its errno (0 on
// success). It is the seam unit tests replace with a fake device.
type ioctlFunc func(fd uintptr, cmd uintptr, arg unsafe.Pointer) unix.Errno

func sysIoctl(fd uintptr, cmd uintptr, arg unsafe.Pointer) unix.Errno {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, cmd, uintptr(arg))
	return errno
}

// Device is a [Transport] over the /dev/nsm ioctl interface of a Nitro
// enclave. It is safe for concurrent use (the driver serialises requests).
type Device struct {
	f        *os.File
	ioctl    ioctlFunc
	respSize int // response buffer size; MaxResponseSize except in tests

	mu     sync.Mutex
	closed bool
}

var _ Transport = (*Device)(nil)

// OpenDevice opens the security module device at path ([DevicePath] when
// empty) read-write. It fails, wrapping the os error, when the device does
// not exist (not in a Nitro enclave) or cannot be opened.
func OpenDevice(path string) (*Device, error) {
	if path == "" {
		path = DevicePath
	}
	if !rawLayoutOK() {
		return nil, errors.New("nsm: open device: struct nsm_raw layout unsupported on this 32-bit platform")
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("nsm: open device: %w", err)
	}
	return newDevice(f, sysIoctl), nil
}

func newDevice(f *os.File, ioctl ioctlFunc) *Device {
	return &Device{f: f, ioctl: ioctl, respSize: MaxResponseSize}
}

// RoundTrip sends req with one NSM_IOCTL_RAW ioctl (0xC0200A00) and returns
// the response bytes. Checks and error mapping:
//   - an empty request is refused with ErrInvalidArgument, one over
//     [MaxRequestSize] with a [*LimitError] matching ErrInputTooLarge,
//     before the ioctl;
//   - EINTR is retried; EMSGSIZE (the kernel's "request too large") maps to
//     an [*Error] with code InputTooLarge; any other errno maps to an error
//     matching ErrInternalError that also wraps the errno;
//   - a response length beyond the buffer, or a response that fills a
//     buffer smaller than [MaxResponseSize] (the kernel truncates silently),
//     is ErrInternalError or ErrBufferTooSmall respectively.
//
// The ioctl itself cannot be interrupted: when ctx ends first RoundTrip
// returns ctx.Err() and the request completes in the background, its
// result discarded.
func (d *Device) RoundTrip(ctx context.Context, req []byte) ([]byte, error) {
	if len(req) == 0 {
		return nil, fmt.Errorf("nsm: device: empty request: %w", ErrInvalidArgument)
	}
	if len(req) > MaxRequestSize {
		return nil, &LimitError{Op: "ioctl", Field: "request", Value: len(req), Max: MaxRequestSize, Code: InputTooLarge}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	closed := d.closed
	d.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	type result struct {
		b   []byte
		err error
	}
	done := make(chan result, 1)
	in := append([]byte(nil), req...) // owned by the goroutine
	out := make([]byte, d.respSize)
	go func() {
		b, err := d.call(in, out)
		done <- result{b, err}
	}()
	select {
	case r := <-done:
		return r.b, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// call performs the ioctl with in and out pinned for its duration.
func (d *Device) call(in, out []byte) ([]byte, error) {
	var pin runtime.Pinner
	defer pin.Unpin()
	pin.Pin(&in[0])
	pin.Pin(&out[0])
	msg := &nsmRaw{
		Request:  nsmIovec{Addr: unsafe.Pointer(&in[0]), Len: uint64(len(in))},
		Response: nsmIovec{Addr: unsafe.Pointer(&out[0]), Len: uint64(len(out))},
	}
	pin.Pin(msg)
	rc, err := d.f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("nsm: device: %w", err)
	}
	var errno unix.Errno
	cerr := rc.Control(func(fd uintptr) {
		for {
			errno = d.ioctl(fd, ioctlRaw, unsafe.Pointer(msg))
			if errno != unix.EINTR {
				return
			}
		}
	})
	if cerr != nil {
		if errors.Is(cerr, os.ErrClosed) {
			return nil, ErrClosed
		}
		return nil, fmt.Errorf("nsm: device: %w", cerr)
	}
	switch errno {
	case 0:
	case unix.EMSGSIZE:
		return nil, &Error{Op: "ioctl", Code: InputTooLarge}
	default:
		return nil, fmt.Errorf("nsm: device ioctl: %w (%w)", ErrInternalError, errno)
	}
	n := msg.Response.Len
	switch {
	case n > uint64(len(out)):
		return nil, fmt.Errorf("nsm: device: driver reported a %d-byte response for a %d-byte buffer: %w", n, len(out), ErrInternalError)
	case n == uint64(len(out)) && len(out) < MaxResponseSize:
		return nil, fmt.Errorf("nsm: device: response filled the %d-byte buffer and may be truncated: %w", len(out), ErrBufferTooSmall)
	}
	return out[:n:n], nil
}

// Close closes the device file. Requests in flight finish first; later
// ones fail with [ErrClosed].
func (d *Device) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	return d.f.Close()
}
