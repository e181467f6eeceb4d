//go:build linux

package unotify

import (
	"context"
	"encoding/binary"
	"errors"
	"time"
	"unsafe"

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
	if isNetdevIoctl(uint32(n.Args[1])) {
		return s.netdevIoctl(c, n)
	}
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

// Network device ioctls. On a socket, whatever its family, the kernel
// answers the commands 0x8900–0x89ff that its protocol does not
// (sock_do_ioctl → dev_ioctl, dev_ifconf) and the wireless ones
// 0x8b00–0x8bff (wext_handle_ioctl) for the network namespace of that
// socket. The sandbox holds sockets of the host's namespace: a host
// program's connection to an enclave listener is handed off to it (the
// hybrid handoff, no relay), and the accepted end of a connection that
// the monitor makes to an enclave listener (relay, requeue) belongs to the
// monitor's namespace, as every accepted Unix socket belongs to the
// connecting side's. Let run, SIOCGIFCONF on such a socket would
// list the host's interfaces and addresses; and a call let run on one
// descriptor may run on another that the sandbox swapped in meanwhile.
// So these commands are never let run: the supervisor answers the
// commands that only read (below) on a socket of its own in the
// sandbox's namespace, whatever the caller's socket, and refuses the
// others with EPERM (they change a device, which needs CAP_NET_ADMIN, a
// capability no program in the sandbox has).
const (
	siocgifconf = 0x8912
	ifreqSize   = 40 // struct ifreq on 64-bit ABIs
	// maxIfconf bounds the buffer of an emulated SIOCGIFCONF (the
	// sandbox's namespace has lo only).
	maxIfconf = 64 << 10
)

// perSocketIoctls are the commands in the network device range that the
// socket layer or AF_UNIX answer for the socket itself, not its
// namespace's devices; they run as they are (on a socket of the host's
// namespace, SIOCGSKNS and SIOCUNIXFILE need CAP_NET_ADMIN over the
// host's namespace and fail).
var perSocketIoctls = map[uint32]bool{
	0x8901: true, // FIOSETOWN
	0x8902: true, // SIOCSPGRP
	0x8903: true, // FIOGETOWN
	0x8904: true, // SIOCGPGRP
	0x8905: true, // SIOCATMARK
	0x8906: true, // SIOCGSTAMP
	0x8907: true, // SIOCGSTAMPNS
	0x894b: true, // SIOCOUTQNSD
	0x894c: true, // SIOCGSKNS
	0x89e0: true, // SIOCUNIXFILE (SIOCPROTOPRIVATE)
}

// ifreqGets are the network device commands that only read, with a
// struct ifreq in and out.
var ifreqGets = map[uint32]bool{
	0x8910: true, // SIOCGIFNAME
	0x8913: true, // SIOCGIFFLAGS
	0x8915: true, // SIOCGIFADDR
	0x8917: true, // SIOCGIFDSTADDR
	0x8919: true, // SIOCGIFBRDADDR
	0x891b: true, // SIOCGIFNETMASK
	0x891d: true, // SIOCGIFMETRIC
	0x8921: true, // SIOCGIFMTU
	0x8927: true, // SIOCGIFHWADDR
	0x8933: true, // SIOCGIFINDEX
	0x8935: true, // SIOCGIFPFLAGS
	0x8942: true, // SIOCGIFTXQLEN
	0x8970: true, // SIOCGIFMAP
}

// isNetdevIoctl reports whether cmd is answered for a socket's network
// namespace (see above).
func isNetdevIoctl(cmd uint32) bool {
	return (cmd&^0xff == 0x8900 && !perSocketIoctls[cmd]) || cmd&^0xff == 0x8b00
}

// netdevIoctl answers a network device ioctl for the sandbox's network
// namespace, whatever namespace the caller's socket belongs to.
func (s *Supervisor) netdevIoctl(c *Caller, n *Notification) answer {
	cmd, arg := uint32(n.Args[1]), n.Args[2]
	fd, err := c.GetFD(int32(n.Args[0]))
	if err != nil {
		if errors.Is(err, ErrGone) {
			return s.gone()
		}
		return fail(unix.EBADF)
	}
	_, _, isSock, err := cookie(fd)
	unix.Close(fd)
	switch {
	case err != nil:
		return s.errAnswer("ioctl", err)
	case !isSock:
		return fail(unix.ENOTTY) // a file or device: the VFS's answer
	case cmd == siocgifconf:
		return s.ifconf(c, arg)
	case !ifreqGets[cmd]:
		return fail(unix.EPERM)
	}
	var ifr [ifreqSize]byte
	if err := c.ReadAt(ifr[:], arg); err != nil {
		return s.errAnswer("ioctl", err)
	}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(s.ifSock), uintptr(cmd), uintptr(unsafe.Pointer(&ifr[0]))); e != 0 {
		return fail(e)
	}
	if err := c.WriteAt(ifr[:], arg); err != nil {
		return s.errAnswer("ioctl", err)
	}
	return ret(0)
}

// ifconf answers SIOCGIFCONF (dev_ifconf): struct ifconf is a length and
// a buffer; with no buffer the kernel stores the length needed, else it
// fills at most the length given and stores what it used.
func (s *Supervisor) ifconf(c *Caller, arg uint64) answer {
	var hdr [16]byte // int ifc_len, padding, char *ifc_buf
	if err := c.ReadAt(hdr[:], arg); err != nil {
		return s.errAnswer("ioctl", err)
	}
	l := int32(binary.NativeEndian.Uint32(hdr[:4]))
	ubuf := binary.NativeEndian.Uint64(hdr[8:])
	var local struct {
		len int32
		_   int32
		buf uintptr
	}
	var buf []byte
	if ubuf != 0 {
		buf = make([]byte, max(0, min(l, maxIfconf))+1)
		local.len, local.buf = int32(len(buf)-1), uintptr(unsafe.Pointer(&buf[0]))
	}
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(s.ifSock), siocgifconf, uintptr(unsafe.Pointer(&local)))
	if e != 0 {
		return fail(e)
	}
	if ubuf != 0 && local.len > 0 {
		if err := c.WriteAt(buf[:local.len], ubuf); err != nil {
			return s.errAnswer("ioctl", err)
		}
	}
	binary.NativeEndian.PutUint32(hdr[:4], uint32(local.len))
	if err := c.WriteAt(hdr[:4], arg); err != nil {
		return s.errAnswer("ioctl", err)
	}
	return ret(0)
}
