//go:build linux

package nedev

import (
	"context"
	"encoding/binary"
	"errors"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Open opens the nitro_enclaves device at path (normally [DevicePath])
// read-write and close-on-exec. Failures are [*IoctlError]s with Op OpOpen.
func Open(path string) (Device, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		var errno unix.Errno
		if errors.As(err, &errno) {
			return nil, NewIoctlError(OpOpen, errno)
		}
		return nil, err
	}
	return &realDevice{fd: fd}, nil
}

type realDevice struct {
	mu sync.Mutex
	fd int // -1 once closed
}

func ioctl(fd int, req uintptr, arg unsafe.Pointer) (uintptr, unix.Errno) {
	for {
		r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
		if e != unix.EINTR {
			return r, e
		}
	}
}

func (d *realDevice) CreateVM() (Enclave, uint64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fd < 0 {
		return nil, 0, ErrClosed
	}
	var slot uint64
	r, e := ioctl(d.fd, IoctlCreateVM, unsafe.Pointer(&slot))
	if e != 0 {
		return nil, 0, NewIoctlError(OpCreateVM, e)
	}
	fd := int(r)
	unix.CloseOnExec(fd)
	return &realEnclave{fd: fd}, slot, nil
}

func (d *realDevice) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fd < 0 {
		return ErrClosed
	}
	err := unix.Close(d.fd)
	d.fd = -1
	return err
}

type realEnclave struct {
	mu sync.Mutex
	fd int
}

func (e *realEnclave) getFD() (int, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.fd < 0 {
		return -1, ErrClosed
	}
	return e.fd, nil
}

func (e *realEnclave) AddVCPU(id uint32) (uint32, error) {
	fd, err := e.getFD()
	if err != nil {
		return 0, err
	}
	v := id
	if _, en := ioctl(fd, IoctlAddVCPU, unsafe.Pointer(&v)); en != 0 {
		return 0, NewIoctlError(OpAddVCPU, en)
	}
	return v, nil
}

func (e *realEnclave) GetImageLoadInfo(flags uint64) (uint64, error) {
	fd, err := e.getFD()
	if err != nil {
		return 0, err
	}
	info := ImageLoadInfo{Flags: flags}
	if _, en := ioctl(fd, IoctlGetImageLoadInfo, unsafe.Pointer(&info)); en != 0 {
		return 0, NewIoctlError(OpGetImageLoadInfo, en)
	}
	return info.MemoryOffset, nil
}

func (e *realEnclave) SetUserMemoryRegion(r UserMemoryRegion) error {
	fd, err := e.getFD()
	if err != nil {
		return err
	}
	if _, en := ioctl(fd, IoctlSetUserMemoryRegion, unsafe.Pointer(&r)); en != 0 {
		return NewIoctlError(OpSetUserMemoryRegion, en)
	}
	return nil
}

func (e *realEnclave) StartEnclave(flags, cid uint64) (uint64, error) {
	fd, err := e.getFD()
	if err != nil {
		return 0, err
	}
	info := EnclaveStartInfo{Flags: flags, EnclaveCID: cid}
	if _, en := ioctl(fd, IoctlStartEnclave, unsafe.Pointer(&info)); en != 0 {
		return 0, NewIoctlError(OpStartEnclave, en)
	}
	return info.EnclaveCID, nil
}

// WaitHangup polls the enclave fd together with an eventfd that a
// cancelled ctx signals, so the wait ends without touching the enclave fd.
func (e *realEnclave) WaitHangup(ctx context.Context) error {
	fd, err := e.getFD()
	if err != nil {
		return err
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return err
	}
	defer unix.Close(efd)
	stop := context.AfterFunc(ctx, func() {
		var one [8]byte
		binary.NativeEndian.PutUint64(one[:], 1)
		_, _ = unix.Write(efd, one[:])
	})
	defer stop()
	for {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLHUP}, {Fd: int32(efd), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, -1); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			var en unix.Errno
			if errors.As(err, &en) {
				return NewIoctlError(OpPoll, en)
			}
			return err
		}
		switch {
		case fds[0].Revents&unix.POLLNVAL != 0:
			return NewIoctlError(OpPoll, unix.EBADF)
		case fds[0].Revents&(unix.POLLHUP|unix.POLLERR) != 0:
			return nil
		case fds[1].Revents != 0:
			return ctx.Err()
		}
	}
}

func (e *realEnclave) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.fd < 0 {
		return ErrClosed
	}
	err := unix.Close(e.fd)
	e.fd = -1
	return err
}
