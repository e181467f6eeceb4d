//go:build linux

package unotify

import (
	"context"
	"encoding/binary"

	"golang.org/x/sys/unix"
)

// The notified ioctls (internal/seccomp's SupervisedPolicy).
const (
	// IoctlNSMRaw is NSM_IOCTL_RAW, /dev/nsm's one ioctl.
	IoctlNSMRaw = 0xc0200a00
	// IoctlVsockLocalCID is IOCTL_VM_SOCKETS_GET_LOCAL_CID, /dev/vsock's.
	IoctlVsockLocalCID = 0x7b9
)

// sysIoctl emulates the ioctls of the sandbox's /dev/nsm and /dev/vsock:
// only on a descriptor of exactly that file (same device, inode and
// mount); on any other descriptor the ioctl runs as it is.
func (s *Supervisor) sysIoctl(ctx context.Context, c *Caller, n *Notification) answer {
	cmd, arg := uint32(n.Args[1]), n.Args[2]
	var want *fileID
	switch cmd {
	case IoctlNSMRaw:
		want = s.nsmID
	case IoctlVsockLocalCID:
		want = s.vsockID
	}
	if want == nil {
		return cont
	}
	fd, err := c.GetFD(int32(n.Args[0]))
	if err != nil {
		if err == ErrGone {
			return s.gone()
		}
		return cont
	}
	id, err := identify(fd)
	unix.Close(fd)
	if err != nil || id != *want {
		return cont
	}
	if cmd == IoctlVsockLocalCID {
		// vsock_dev_do_ioctl: put_user of the local CID.
		b := binary.NativeEndian.AppendUint32(nil, s.cfg.CID)
		if err := c.WriteAt(b, arg); err != nil {
			return s.errAnswer("ioctl", err)
		}
		return ret(0)
	}
	if s.cfg.NSM == nil {
		return fail(unix.ENODEV)
	}
	s.nsmCalls.Add(1)
	if e := s.cfg.NSM(ctx, c, cmd, arg); e != 0 {
		if !c.Valid() {
			return s.gone()
		}
		return fail(e)
	}
	return ret(0)
}
