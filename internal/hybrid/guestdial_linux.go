//go:build linux

package hybrid

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// dialGuest connects to the Unix socket name inside the listener directory
// (root when non-nil, else dir) without following anything the enclave
// controls: name is opened with O_PATH|O_NOFOLLOW relative to the
// directory, must be a socket (S_ISSOCK; a symbolic link, FIFO, directory
// or regular file is refused with [errNotSocket]) on the directory's own
// file system, and the connection goes to that very inode through
// /proc/self/fd/<n>. Only dir itself is resolved by path, following links:
// it is the daemon's, not the enclave's.
func dialGuest(ctx context.Context, dir string, root *os.File, name string) (*net.UnixConn, error) {
	var (
		fd   int
		dev  uint64
		oerr error
	)
	open := func(dfd int) {
		var dst unix.Stat_t
		if oerr = unix.Fstat(dfd, &dst); oerr != nil {
			oerr = &os.PathError{Op: "fstat", Path: dir, Err: oerr}
			return
		}
		dev = dst.Dev
		fd, oerr = unix.Openat(dfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if oerr != nil {
			oerr = &os.PathError{Op: "open", Path: name, Err: oerr}
		}
	}
	if root != nil {
		rc, err := root.SyscallConn()
		if err != nil {
			return nil, err
		}
		if err := rc.Control(func(dfd uintptr) { open(int(dfd)) }); err != nil {
			return nil, err
		}
	} else {
		dfd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, &os.PathError{Op: "open", Path: dir, Err: err}
		}
		open(dfd)
		unix.Close(dfd)
	}
	if oerr != nil {
		return nil, oerr
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, &os.PathError{Op: "fstat", Path: name, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return nil, fmt.Errorf("%s is a %s: %w", name, fileType(st.Mode), errNotSocket)
	}
	if st.Dev != dev {
		return nil, fmt.Errorf("%s is on another file system than its directory: %w", name, errNotSocket)
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", "/proc/self/fd/"+strconv.Itoa(fd))
	if err != nil {
		return nil, err
	}
	return c.(*net.UnixConn), nil
}

func fileType(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFLNK:
		return "symbolic link"
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFREG:
		return "regular file"
	case unix.S_IFIFO:
		return "FIFO"
	case unix.S_IFCHR, unix.S_IFBLK:
		return "device"
	}
	return "file of unknown type"
}
