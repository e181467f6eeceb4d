//go:build linux

package unotify

import (
	"context"
	"encoding/binary"
	"time"

	"golang.org/x/sys/unix"
)

// The emulated ioctls.
const (
	// IoctlNSMRaw is NSM_IOCTL_RAW, /dev/nsm's one ioctl.
	IoctlNSMRaw = 0xc0200a00
	// IoctlVsockLocalCID is IOCTL_VM_SOCKETS_GET_LOCAL_CID, /dev/vsock's.
	IoctlVsockLocalCID = 0x7b9
)

// vfsIoctls are the commands the kernel's VFS answers itself for a
// character device (fs/ioctl.c, do_vfs_ioctl), whatever the driver: they
// run as they are on /dev/nsm (a bind of /dev/null in the sandbox) with
// the result they have on the real device. Every other command reaches
// the nsm driver, which answers EINVAL unless it is NSM_IOCTL_RAW.
// (Numbers of x86_64 and arm64, include/uapi/asm-generic/ioctls.h and
// linux/fs.h.)
var vfsIoctls = map[uint32]bool{
	0x5451:     true, // FIOCLEX
	0x5450:     true, // FIONCLEX
	0x5421:     true, // FIONBIO
	0x5452:     true, // FIOASYNC
	0x5460:     true, // FIOQSIZE
	0xc0045877: true, // FIFREEZE
	0xc0045878: true, // FITHAW
	0xc020660b: true, // FS_IOC_FIEMAP
	0x2:        true, // FIGETBSZ
	0x40049409: true, // FICLONE
	0x4020940d: true, // FICLONERANGE
	0xc0189436: true, // FIDEDUPERANGE
	0x80111500: true, // FS_IOC_GETFSUUID
	0x80811501: true, // FS_IOC_GETFSSYSFSPATH
}

// sysIoctl emulates the sandbox's /dev/nsm and /dev/vsock: ioctls on a
// descriptor of exactly that file (same device, inode and mount). On any
// other descriptor, and for the commands the VFS answers, the ioctl runs
// as it is.
func (s *Supervisor) sysIoctl(ctx context.Context, c *Caller, n *Notification) answer {
	if s.nsmID == nil && s.vsockID == nil {
		return cont
	}
	cmd, arg := uint32(n.Args[1]), n.Args[2]
	fd, err := c.GetFD(int32(n.Args[0]))
	if err != nil {
		if err == ErrGone {
			return s.gone()
		}
		return cont
	}
	id, err := identify(fd)
	// An O_PATH descriptor cannot take ioctls at all (EBADF from the
	// kernel), whatever file it names.
	fl, ferr := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	unix.Close(fd)
	switch {
	case err != nil || ferr != nil || fl&unix.O_PATH != 0:
		return cont
	case s.vsockID != nil && id == *s.vsockID:
		if cmd != IoctlVsockLocalCID {
			return cont // /dev/null's ENOTTY is /dev/vsock's too
		}
		// vsock_dev_do_ioctl: put_user of the local CID.
		b := binary.NativeEndian.AppendUint32(nil, s.cfg.CID)
		if err := c.WriteAt(b, arg); err != nil {
			return s.errAnswer("ioctl", err)
		}
		return ret(0)
	case s.nsmID != nil && id == *s.nsmID:
		if vfsIoctls[cmd] {
			return cont
		}
		return later(func() answer { return s.nsm(ctx, c, cmd, arg) })
	}
	return cont
}

// nsm performs one /dev/nsm ioctl; the request is abandoned (ctx
// cancelled) if the caller goes away meanwhile.
func (s *Supervisor) nsm(ctx context.Context, c *Caller, cmd uint32, arg uint64) answer {
	if s.cfg.NSM == nil {
		return fail(unix.ENODEV)
	}
	s.nsmCalls.Add(1)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Most requests take well under validPoll; only one that waits (an
	// attestation paced by the module) is watched for its caller.
	quit := make(chan struct{})
	defer close(quit)
	timer := time.AfterFunc(validPoll, func() {
		t := time.NewTicker(validPoll)
		defer t.Stop()
		for {
			if !c.Valid() {
				cancel()
				return
			}
			select {
			case <-quit:
				return
			case <-t.C:
			}
		}
	})
	defer timer.Stop()
	if e := s.cfg.NSM(ctx, c, cmd, arg); e != 0 {
		if !c.Valid() {
			return s.gone()
		}
		return fail(e)
	}
	return ret(0)
}
