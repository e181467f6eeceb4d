package initproc

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/cloister/cloister/internal/kmod"
)

// Sys is the set of privileged system calls the VM flow makes. [RealSys]
// makes them for real; tests pass a fake that records them.
type Sys interface {
	// Mount is mount(2).
	Mount(source, target, fstype string, flags uintptr, data string) error
	// Unmount is umount2(2).
	Unmount(target string, flags int) error
	// LoadModule loads the kernel module in f with finit_module(2).
	LoadModule(f *os.File) error
	// SwitchRoot makes newRoot the root directory of this process (bind
	// mount, chdir, move onto "/", chroot, chdir "/") and returns the path
	// under which this process now sees the new root: "/" for real,
	// newRoot itself for a fake.
	SwitchRoot(newRoot string) (string, error)
	// ReopenConsole opens path read-write and makes it stdin, stdout and
	// stderr.
	ReopenConsole(path string) error
	// Sync is sync(2).
	Sync()
	// Reboot ends the VM with reboot(LINUX_REBOOT_CMD_RESTART); with the
	// kernel's reboot=t and QEMU's -no-reboot, or on Nitro, that terminates
	// the VM. It returns only on failure.
	Reboot() error
}

// RealSys makes the system calls of [Sys] for real.
type RealSys struct{}

var _ Sys = RealSys{}

// Mount calls mount(2).
func (RealSys) Mount(source, target, fstype string, flags uintptr, data string) error {
	return unix.Mount(source, target, fstype, flags, data)
}

// Unmount calls umount2(2).
func (RealSys) Unmount(target string, flags int) error { return unix.Unmount(target, flags) }

// LoadModule calls finit_module(fd, "", flags) with the flags
// [moduleInitFlags] gives for the file's name.
func (RealSys) LoadModule(f *os.File) error {
	err := unix.FinitModule(int(f.Fd()), "", moduleInitFlags(f.Name()))
	if err != nil && kmod.Compressed(f.Name()) && (errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL)) {
		return fmt.Errorf("%w (a compressed module: the enclave kernel must be Linux 6.4 or later with CONFIG_MODULE_DECOMPRESS and this algorithm)", err)
	}
	return err
}

// moduleInitFlags is MODULE_INIT_COMPRESSED_FILE for a compressed module
// file (kmod.Compressed: the kernel decompresses it), else 0.
func moduleInitFlags(name string) int {
	if kmod.Compressed(name) {
		return unix.MODULE_INIT_COMPRESSED_FILE
	}
	return 0
}

// SwitchRoot does what Nitro's init does: bind-mounts newRoot on itself,
// changes into it, moves the mount onto "/", chroots into "." and changes to
// "/". It returns "/".
func (RealSys) SwitchRoot(newRoot string) (string, error) {
	steps := []struct {
		what string
		fn   func() error
	}{
		{"bind-mount " + newRoot, func() error { return unix.Mount(newRoot, newRoot, "", unix.MS_BIND|unix.MS_REC, "") }},
		{"chdir " + newRoot, func() error { return unix.Chdir(newRoot) }},
		{"move " + newRoot + " onto /", func() error { return unix.Mount(".", "/", "", unix.MS_MOVE, "") }},
		{"chroot .", func() error { return unix.Chroot(".") }},
		{"chdir /", func() error { return unix.Chdir("/") }},
	}
	for _, s := range steps {
		if err := s.fn(); err != nil {
			return "", fmt.Errorf("%s: %w", s.what, err)
		}
	}
	return "/", nil
}

// ReopenConsole opens path and duplicates it onto file descriptors 0, 1
// and 2.
func (RealSys) ReopenConsole(path string) error {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	for target := 0; target <= 2; target++ {
		if err := unix.Dup3(fd, target, 0); err != nil {
			return fmt.Errorf("dup %s onto fd %d: %w", path, target, err)
		}
	}
	return nil
}

// Sync calls sync(2).
func (RealSys) Sync() { unix.Sync() }

// Reboot calls reboot(LINUX_REBOOT_CMD_RESTART), Nitro's RB_AUTOBOOT.
func (RealSys) Reboot() error { return unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART) }

// isBusy reports whether err says the mount point is already mounted.
func isBusy(err error) bool { return errors.Is(err, unix.EBUSY) }
