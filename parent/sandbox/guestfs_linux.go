//go:build linux

package sandbox

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// The enclave's listener directory (/run/cloister/vsock/guest) is a
// private tmpfs of this size and inode count: it only needs to hold the
// enclave's listening sockets (one inode each, no data), and must not be a
// way to store data outside the enclave's memory limit.
const (
	GuestDirBytes  = 1 << 20
	GuestDirInodes = 1024
)

// newGuestFS creates the enclave's listener directory: a tmpfs of
// GuestDirBytes and GuestDirInodes, mode 01777, owned by uid (the
// sandbox's root), nosuid, nodev and noexec, as a detached mount (fsopen,
// fsmount) attached nowhere on the host. The child moves it to
// /run/cloister/vsock/guest; the monitor reaches the sockets in it through
// the returned descriptor only, so no host path leads there and nothing is
// left mounted on the host if the monitor dies.
func newGuestFS(uid int) (*os.File, error) {
	fsfd, err := unix.Fsopen("tmpfs", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("sandbox: listener directory: fsopen tmpfs: %w", err)
	}
	defer unix.Close(fsfd)
	for _, o := range [][2]string{
		{"size", strconv.Itoa(GuestDirBytes)},
		{"nr_inodes", strconv.Itoa(GuestDirInodes)},
		{"mode", "1777"},
		{"uid", strconv.Itoa(uid)},
		{"gid", strconv.Itoa(uid)},
	} {
		if err := unix.FsconfigSetString(fsfd, o[0], o[1]); err != nil {
			return nil, fmt.Errorf("sandbox: listener directory: tmpfs option %s=%s: %w", o[0], o[1], err)
		}
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return nil, fmt.Errorf("sandbox: listener directory: create tmpfs: %w", err)
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV|unix.MOUNT_ATTR_NOEXEC)
	if err != nil {
		return nil, fmt.Errorf("sandbox: listener directory: fsmount: %w", err)
	}
	return os.NewFile(uintptr(mfd), "guest-tmpfs"), nil
}
