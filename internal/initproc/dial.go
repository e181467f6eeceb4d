package initproc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// Conn is a stream to the parent. *net.UnixConn, *net.TCPConn and the
// connections of [DialVsock] and [DialUnix] satisfy it.
type Conn interface {
	io.ReadWriteCloser
	SetDeadline(t time.Time) error
}

// DialVsock connects to the parent's heartbeat port, vsock (CID 3, port
// 9000). Like [DialUnix] it uses a raw socket wrapped in an *os.File, so
// that cloister-init does not link package net (which would make a default
// cgo-enabled build dynamically linked and unusable as /init).
func DialVsock(ctx context.Context) (Conn, error) {
	return dialSocket(ctx, unix.AF_VSOCK, &unix.SockaddrVM{CID: ParentCID, Port: HeartbeatPort},
		"vsock "+strconv.Itoa(ParentCID)+":"+strconv.Itoa(HeartbeatPort))
}

// DialUnix connects to the Unix stream socket at path.
func DialUnix(ctx context.Context, path string) (Conn, error) {
	return dialSocket(ctx, unix.AF_UNIX, &unix.SockaddrUnix{Name: path}, path)
}

// dialSocket makes a non-blocking stream socket, connects it and waits for
// the connection to complete or ctx to end.
func dialSocket(ctx context.Context, domain int, sa unix.Sockaddr, name string) (Conn, error) {
	fd, err := unix.Socket(domain, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("connect %s: socket: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), name) // non-blocking, so the runtime poller serves it
	err = unix.Connect(fd, sa)
	if errors.Is(err, unix.EINPROGRESS) {
		err = waitConnected(ctx, f)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("connect %s: %w", name, err)
	}
	return f, nil
}

// waitConnected waits until the non-blocking connect on f has finished.
func waitConnected(ctx context.Context, f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	if d, ok := ctx.Deadline(); ok {
		_ = f.SetWriteDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { _ = f.SetWriteDeadline(time.Unix(1, 0)) })
	defer stop()
	var connErr error
	werr := rc.Write(func(fd uintptr) bool {
		v, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		switch {
		case err != nil:
			connErr = err
		case v != 0:
			connErr = unix.Errno(v)
		default:
			if _, err := unix.Getpeername(int(fd)); errors.Is(err, unix.ENOTCONN) {
				return false // still connecting: wait until writable again
			}
		}
		return true
	})
	if werr != nil {
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		return werr
	}
	if connErr != nil {
		return connErr
	}
	return f.SetWriteDeadline(time.Time{})
}
