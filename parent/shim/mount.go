package shim

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// Mount is one of the root file system mounts containerd passes in
// CreateTaskRequest.Rootfs (its snapshotter's overlay or bind mount).
type Mount struct {
	Type, Source string
	Options      []string
}

// mountFlags are the options that are mount(2) flags; the rest go to the
// file system as data.
var mountFlags = map[string]struct {
	clear bool
	flag  uintptr
}{
	"ro":         {false, unix.MS_RDONLY},
	"rw":         {true, unix.MS_RDONLY},
	"nosuid":     {false, unix.MS_NOSUID},
	"suid":       {true, unix.MS_NOSUID},
	"nodev":      {false, unix.MS_NODEV},
	"dev":        {true, unix.MS_NODEV},
	"noexec":     {false, unix.MS_NOEXEC},
	"exec":       {true, unix.MS_NOEXEC},
	"bind":       {false, unix.MS_BIND},
	"rbind":      {false, unix.MS_BIND | unix.MS_REC},
	"noatime":    {false, unix.MS_NOATIME},
	"relatime":   {false, unix.MS_RELATIME},
	"nodiratime": {false, unix.MS_NODIRATIME},
	"sync":       {false, unix.MS_SYNCHRONOUS},
	"remount":    {false, unix.MS_REMOUNT},
	"defaults":   {false, 0},
}

// MountAll mounts ms on target in order (as runc does for the rootfs).
// On failure it unmounts what it mounted.
func MountAll(ms []Mount, target string) error {
	if err := os.MkdirAll(target, 0o711); err != nil {
		return fmt.Errorf("shim: rootfs: %w", err)
	}
	for i, m := range ms {
		var flags uintptr
		var data []string
		for _, o := range m.Options {
			if f, ok := mountFlags[o]; ok {
				if f.clear {
					flags &^= f.flag
				} else {
					flags |= f.flag
				}
				continue
			}
			data = append(data, o)
		}
		typ := m.Type
		if flags&unix.MS_BIND != 0 {
			typ = ""
		}
		err := unix.Mount(m.Source, target, typ, flags&^unix.MS_RDONLY, strings.Join(data, ","))
		if err == nil && flags&unix.MS_BIND != 0 && flags&unix.MS_RDONLY != 0 {
			err = unix.Mount("", target, "", flags|unix.MS_REMOUNT, "")
		} else if err == nil && flags&unix.MS_RDONLY != 0 {
			err = unix.Mount("", target, "", unix.MS_REMOUNT|unix.MS_RDONLY, "")
		}
		if err != nil {
			for range i {
				_ = unix.Unmount(target, unix.MNT_DETACH)
			}
			return fmt.Errorf("shim: mount rootfs (%s %s on %s): %w", m.Type, m.Source, target, err)
		}
	}
	return nil
}

// UnmountAll unmounts everything mounted on target.
func UnmountAll(target string) error {
	for {
		err := unix.Unmount(target, unix.MNT_DETACH)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("shim: unmount rootfs %s: %w", target, err)
		}
	}
}
