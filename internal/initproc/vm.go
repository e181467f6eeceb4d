package initproc

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// NoHeartbeatParam is the kernel command-line switch that skips the
// heartbeat (value 1). Only the QEMU boot test uses it, before a vsock device
// exists; the image builder refuses it for real images.
const NoHeartbeatParam = "cloister.no_heartbeat"

// mountSpec is one file system the VM flow mounts in the application's root.
type mountSpec struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
	optional               bool // failure is reported, not fatal
}

// rootMounts are mounted, in order, in the application's root after the
// switch. An already mounted target (EBUSY) is fine.
var rootMounts = []mountSpec{
	{"dev", "/dev", "devtmpfs", unix.MS_NOSUID | unix.MS_NOEXEC, "mode=0755", false},
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", false},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", false},
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755", false},
	{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777", false},
	{"shm", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777", false},
	{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "mode=0620,ptmxmode=0666", false},
	{"cgroup2", "/sys/fs/cgroup", "cgroup2", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", true},
}

// devLinks are the symbolic links created in the application's /dev.
var devLinks = [][2]string{
	{"/dev/fd", "/proc/self/fd"},
	{"/dev/stdin", "/proc/self/fd/0"},
	{"/dev/stdout", "/proc/self/fd/1"},
	{"/dev/stderr", "/proc/self/fd/2"},
}

// prepareVM runs the VM flow up to the point where the application can be
// started.
func prepareVM(ctx context.Context, cfg *Config, log logFunc) (Launch, error) {
	root, sys := cfg.root(), cfg.sys()

	if err := os.MkdirAll(filepath.Join(root, "dev"), 0o755); err != nil {
		return Launch{}, err
	}
	if err := sys.Mount("dev", filepath.Join(root, "dev"), "devtmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, ""); err != nil && !isBusy(err) {
		return Launch{}, fmt.Errorf("mounting devtmpfs on /dev: %w", err)
	}
	if err := sys.ReopenConsole(filepath.Join(root, "dev", "console")); err != nil {
		log("warning: cannot use /dev/console (%v); keeping the inherited standard streams", err)
	}

	cmdline, err := readCmdline(sys, root)
	if err != nil {
		return Launch{}, err
	}
	if err := loadModules(sys, root, log); err != nil {
		return Launch{}, err
	}

	if v, _ := cmdlineParam(cmdline, NoHeartbeatParam); v == "1" {
		log("heartbeat skipped (%s=1 on the kernel command line)", NoHeartbeatParam)
	} else {
		dial := cfg.Dial
		if dial == nil {
			dial = DialVsock
		}
		if err := Heartbeat(ctx, dial, cfg.Heartbeat); err != nil {
			return Launch{}, fmt.Errorf("%w (parent vsock CID %d port %d)", err, ParentCID, HeartbeatPort)
		}
		log("heartbeat sent to the parent (vsock %d:%d)", ParentCID, HeartbeatPort)
	}
	startNSMDevice(ctx, cfg, root, log)

	ic, err := ReadImageConfig(root, true)
	if err != nil {
		return Launch{}, err
	}
	rootfs := filepath.Join(root, "rootfs")
	if fi, err := os.Stat(rootfs); err != nil || !fi.IsDir() {
		return Launch{}, fmt.Errorf("initproc: the customer ramdisk has no rootfs/ directory: %v", err)
	}
	newRoot, err := sys.SwitchRoot(rootfs)
	if err != nil {
		return Launch{}, fmt.Errorf("initproc: switching to /rootfs: %w", err)
	}
	if err := mountRoot(sys, newRoot, log); err != nil {
		return Launch{}, err
	}
	return buildLaunch(newRoot, ic, nil, false)
}

// readCmdline mounts proc briefly (the ramdisk root has none yet) and reads
// /proc/cmdline.
func readCmdline(sys Sys, root string) (string, error) {
	proc := filepath.Join(root, "proc")
	if err := os.MkdirAll(proc, 0o555); err != nil {
		return "", err
	}
	mounted := true
	if err := sys.Mount("proc", proc, "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		if !isBusy(err) {
			return "", fmt.Errorf("initproc: mounting proc to read the kernel command line: %w", err)
		}
		mounted = false
	}
	b, err := os.ReadFile(filepath.Join(proc, "cmdline"))
	if mounted {
		if uerr := sys.Unmount(proc, unix.MNT_DETACH); uerr != nil && err == nil {
			err = fmt.Errorf("unmounting %s: %w", proc, uerr)
		}
	}
	if err != nil {
		return "", fmt.Errorf("initproc: reading the kernel command line: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// cmdlineParam returns the value of the last name=value (or bare name,
// value "") on a kernel command line.
func cmdlineParam(cmdline, name string) (string, bool) {
	val, found := "", false
	for _, f := range strings.Fields(cmdline) {
		k, v, _ := strings.Cut(f, "=")
		if k == name {
			val, found = v, true
		}
	}
	return val, found
}

// loadModules loads Nitro's /nsm.ko when present, then every module named in
// /modules/order from /modules/, deleting each file once loaded.
func loadModules(sys Sys, root string, log logFunc) error {
	load := func(file, label string) error {
		f, err := os.Open(file)
		if err != nil {
			return fmt.Errorf("initproc: kernel module %s: %w", label, err)
		}
		err = sys.LoadModule(f)
		f.Close()
		switch {
		case errors.Is(err, unix.EEXIST):
			log("kernel module %s already loaded", label)
		case err != nil:
			return fmt.Errorf("initproc: loading kernel module %s: %w", label, err)
		default:
			log("loaded kernel module %s", label)
		}
		return os.Remove(file)
	}
	if nsm := filepath.Join(root, "nsm.ko"); fileExists(nsm) {
		if err := load(nsm, "nsm.ko"); err != nil {
			return err
		}
	}
	dir := filepath.Join(root, "modules")
	order, err := os.ReadFile(filepath.Join(dir, "order"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("initproc: reading the module list: %w", err)
	}
	for _, line := range splitLines(order) {
		name := strings.TrimSpace(line)
		if name == "" || strings.HasPrefix(name, "#") {
			continue
		}
		if strings.Contains(name, "/") || name == "." || name == ".." {
			return fmt.Errorf("initproc: /modules/order names %q; want a file name in /modules", name)
		}
		if err := load(filepath.Join(dir, name), name); err != nil {
			return err
		}
	}
	return os.Remove(filepath.Join(dir, "order"))
}

func fileExists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// mountRoot mounts rootMounts and creates devLinks under root.
func mountRoot(sys Sys, root string, log logFunc) error {
	for _, m := range rootMounts {
		target := filepath.Join(root, m.target)
		err := os.MkdirAll(target, 0o755)
		if err == nil {
			err = sys.Mount(m.source, target, m.fstype, m.flags, m.data)
		}
		if err != nil && !isBusy(err) {
			if m.optional {
				log("warning: mounting %s on %s: %v", m.fstype, m.target, err)
				continue
			}
			return fmt.Errorf("initproc: mounting %s on %s: %w", m.fstype, m.target, err)
		}
	}
	for _, l := range devLinks {
		p := filepath.Join(root, l[0])
		if fileExists(p) {
			continue
		}
		if err := os.Symlink(l[1], p); err != nil {
			return fmt.Errorf("initproc: %w", err)
		}
	}
	return nil
}
