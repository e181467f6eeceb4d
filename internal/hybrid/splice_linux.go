//go:build linux

package hybrid

import (
	"net"

	"golang.org/x/sys/unix"
)

// pipeSize is the capacity requested for the relay pipes (the kernel default
// is 64 KiB; larger means fewer splice calls for bulk transfers).
const pipeSize = 1 << 18

// spliceUnix moves bytes from src to dst with splice(2) through a pipe,
// waiting for readiness through the runtime poller so deadlines and Close
// work as for ordinary reads and writes. handled is false when splicing is
// not possible (no pipe), in which case nothing was read.
func spliceUnix(dst, src *net.UnixConn) (written int64, handled bool, err error) {
	rsrc, err := src.SyscallConn()
	if err != nil {
		return 0, false, nil
	}
	rdst, err := dst.SyscallConn()
	if err != nil {
		return 0, false, nil
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return 0, false, nil
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	// Best effort: a smaller pipe still works.
	_, _ = unix.FcntlInt(uintptr(p[1]), unix.F_SETPIPE_SZ, pipeSize)

	const flags = unix.SPLICE_F_NONBLOCK | unix.SPLICE_F_MOVE
	for {
		// Socket → pipe. The pipe is empty here, so EAGAIN means the
		// socket has no data yet.
		var n int64
		var serr error
		rerr := rsrc.Read(func(fd uintptr) bool {
			for {
				n, serr = unix.Splice(int(fd), nil, p[1], nil, pipeSize, flags)
				if serr != unix.EINTR {
					break
				}
			}
			return serr != unix.EAGAIN
		})
		if rerr != nil {
			return written, true, rerr
		}
		if serr != nil {
			return written, true, &net.OpError{Op: "read", Net: "unix", Addr: src.LocalAddr(), Err: serr}
		}
		if n == 0 {
			return written, true, nil // end of stream
		}
		// Pipe → socket, until the pipe is empty again.
		for n > 0 {
			var m int64
			var werr error
			err := rdst.Write(func(fd uintptr) bool {
				for {
					m, werr = unix.Splice(p[0], nil, int(fd), nil, int(n), flags)
					if werr != unix.EINTR {
						break
					}
				}
				return werr != unix.EAGAIN
			})
			if err != nil {
				return written, true, err
			}
			if werr != nil {
				return written, true, &net.OpError{Op: "write", Net: "unix", Addr: dst.RemoteAddr(), Err: werr}
			}
			n -= m
			written += m
		}
	}
}
