//go:build linux

package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/cloister/cloister/internal/seccomp"
	"github.com/cloister/cloister/internal/wellknown"
)

// newRoot is where the child mounts the sandbox's root tmpfs before
// pivot_root (in its private mount namespace; the host is not affected).
const newRoot = "/tmp"

// ChildMain is the sandbox child: it builds the sandbox and executes init.
// Call it from main (or TestMain) when [IsChild] reports true; it never
// returns. A failed step is reported to the parent, which returns it from
// [Start] as a [*SetupError].
func ChildMain() {
	// Capabilities, no_new_privs and the cgroup namespace are per thread:
	// everything happens on this thread, which also executes init.
	runtime.LockOSThread()
	status := os.NewFile(fdStatus, "status")
	err := child(status)
	_, _ = status.Write(append([]byte{statusError}, err.Error()...))
	os.Exit(1)
}

// step wraps an error with the name of the step that failed.
func step(what string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", what, err)
}

func child(status *os.File) error {
	// Sent by the parent once the start is set up (this process is in
	// its cgroup from birth: cgroups.Group.Start).
	b, err := io.ReadAll(io.LimitReader(os.NewFile(fdConfig, "config"), 1<<20))
	if err != nil {
		return step("read config", err)
	}
	var cfg childConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		return step("decode config", err)
	}
	if err := unix.Unshare(unix.CLONE_NEWCGROUP); err != nil {
		return step("unshare cgroup namespace", err)
	}
	if err := closeOnExecAll(); err != nil {
		return step("close-on-exec", err)
	}
	if err := buildRoot(cfg); err != nil {
		return err
	}
	var devs []int
	if cfg.Nitro {
		// Descriptors of the emulated devices as the sandbox sees them
		// (its mounts): the supervisor recognises their ioctls by them.
		for _, d := range nitroDevices {
			fd, err := unix.Open("/dev/"+d, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				return step("open /dev/"+d, err)
			}
			devs = append(devs, fd)
		}
	}
	lfd, err := harden(cfg)
	if err != nil {
		return err
	}
	if cfg.Nitro {
		// From here on, a notified call would wait for a supervisor that
		// does not run yet: only raw sendmsg, close, write and execve
		// until init runs.
		if err := unix.Sendmsg(fdNotify, []byte{supervisorMessage}, unix.UnixRights(append([]int{lfd}, devs...)...), nil, 0); err != nil {
			return step("send the seccomp listener", err)
		}
		unix.Close(lfd)
		for _, fd := range devs {
			unix.Close(fd)
		}
	}
	unix.Close(fdNotify)
	env := []string{
		"CLOISTER_WORLD=sandbox",
		"CLOISTER_VSOCK_DIR=" + VsockMount,
		"CLOISTER_CID=" + strconv.FormatUint(uint64(cfg.CID), 10),
		"PATH=" + DefaultPath,
	}
	if cfg.Debug {
		env = append(env, "CLOISTER_DEBUG=1")
	}
	if _, err := status.Write([]byte{statusReady}); err != nil {
		return step("report ready", err)
	}
	return step("execute "+InitPath, syscall.Exec(InitPath, []string{InitPath}, env))
}

// closeOnExecAll marks every descriptor above 2 close-on-exec, so init
// inherits only stdin, stdout and stderr (and the status pipe closes when
// init starts).
func closeOnExecAll() error {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return err
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err == nil && fd > 2 {
			unix.CloseOnExec(fd)
		}
	}
	return nil
}

// mnt is mount(2) with the step name in the error.
func mnt(source, target, fstype string, flags uintptr, data string) error {
	if err := unix.Mount(source, target, fstype, flags, data); err != nil {
		what := fstype
		if flags&unix.MS_BIND != 0 {
			what = "bind " + source
		}
		return fmt.Errorf("mount %s on %s: %w", what, target, err)
	}
	return nil
}

// ensureDir makes rel (inside root) a real directory at every level:
// symbolic links and other files on the way, which the image may have put
// there, are replaced, so mounting on the path cannot be redirected.
func ensureDir(root *os.Root, rel string, perm fs.FileMode) error {
	cur := ""
	for _, elem := range splitPath(rel) {
		cur = path.Join(cur, elem)
		isDir, err := clearPath(root, cur, true)
		if err != nil {
			return err
		}
		if !isDir {
			if err := root.Mkdir(cur, perm); err != nil {
				return err
			}
		}
	}
	return nil
}

// ensureFile makes rel an empty regular file (a bind-mount target).
func ensureFile(root *os.Root, rel string) error {
	if err := ensureDir(root, path.Dir(rel), 0o755); err != nil {
		return err
	}
	if _, err := clearPath(root, rel, false); err != nil {
		return err
	}
	f, err := root.OpenFile(rel, os.O_WRONLY|os.O_CREATE|os.O_EXCL|noFollow, 0o644)
	if err != nil {
		return err
	}
	return f.Close()
}

func splitPath(rel string) []string {
	var out []string
	for _, e := range strings.Split(path.Clean(rel), "/") {
		if e != "" && e != "." {
			out = append(out, e)
		}
	}
	return out
}

// devices are bind-mounted from the host into the sandbox's /dev.
var devices = []string{"null", "zero", "full", "random", "urandom", "tty"}

// nitroDevices are bind mounts of the host's /dev/null in a sandbox with
// Spec.Nitro, whose ioctls the supervisor emulates (never the host's
// /dev/vsock, which may reach a real hypervisor).
var nitroDevices = []string{"nsm", "vsock"}

func buildRoot(cfg childConfig) error {
	if err := mnt("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return err
	}
	size := fmt.Sprintf("size=%dm", cfg.MemoryMiB)
	if err := mnt("tmpfs", newRoot, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, size+",mode=0755"); err != nil {
		return err
	}
	root, err := os.OpenRoot(newRoot)
	if err != nil {
		return step("open new root", err)
	}
	defer root.Close()

	old := unix.Umask(0)
	if err := root.Mkdir(".cloister", 0o755); err != nil {
		return step("mkdir /.cloister", err)
	}
	for i, rr := range cfg.Ramdisks {
		f := os.NewFile(uintptr(fdRamdisk0+i), "ramdisk")
		var r io.Reader = f
		if rr.Size >= 0 {
			r = io.NewSectionReader(f, rr.Offset, rr.Size)
		}
		err := unpack(root, r)
		f.Close()
		if err != nil {
			return fmt.Errorf("unpack ramdisk %d: %w", i, err)
		}
	}
	if fi, err := root.Lstat(".cloister/init"); err != nil || !fi.Mode().IsRegular() {
		return fmt.Errorf("unpack ramdisks: no regular file %s in the bootstrap ramdisk (%v)", InitPath, err)
	}
	unix.Umask(old)

	at := func(rel string) string { return newRoot + "/" + rel }
	dirs := []struct {
		rel  string
		perm fs.FileMode
	}{{"proc", 0o555}, {"dev", 0o755}, {"tmp", 0o1777}, {"run", 0o755}, {".oldroot", 0o700}}
	for _, d := range dirs {
		if err := ensureDir(root, d.rel, d.perm); err != nil {
			return step("mkdir /"+d.rel, err)
		}
	}
	nosuid := uintptr(unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC)
	if err := mnt("proc", at("proc"), "proc", nosuid, ""); err != nil {
		return err
	}
	if err := mnt("tmpfs", at("dev"), "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "size=1m,mode=0755"); err != nil {
		return err
	}
	for _, d := range devices {
		if err := ensureFile(root, "dev/"+d); err != nil {
			return step("create /dev/"+d, err)
		}
		if err := mnt("/dev/"+d, at("dev/"+d), "", unix.MS_BIND, ""); err != nil {
			return err
		}
	}
	if cfg.Nitro {
		for _, d := range nitroDevices {
			if err := ensureFile(root, "dev/"+d); err != nil {
				return step("create /dev/"+d, err)
			}
			if err := mnt("/dev/null", at("dev/"+d), "", unix.MS_BIND, ""); err != nil {
				return err
			}
		}
	}
	for _, d := range []string{"dev/pts", "dev/shm"} {
		if err := ensureDir(root, d, 0o755); err != nil {
			return step("mkdir /"+d, err)
		}
	}
	if err := mnt("devpts", at("dev/pts"), "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"); err != nil {
		return err
	}
	if err := mnt("tmpfs", at("dev/shm"), "tmpfs", nosuid, size+",mode=1777"); err != nil {
		return err
	}
	for name, target := range map[string]string{
		"ptmx": "pts/ptmx", "fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2",
	} {
		if err := root.Symlink(target, "dev/"+name); err != nil {
			return step("symlink /dev/"+name, err)
		}
	}
	if err := mnt("tmpfs", at("tmp"), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, size+",mode=1777"); err != nil {
		return err
	}
	if err := mnt("tmpfs", at("run"), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, size+",mode=0755"); err != nil {
		return err
	}
	for _, v := range []struct {
		name string
		fd   int
		ro   bool
	}{{wellknown.VsockHostDir, fdHostDir, true}, {wellknown.VsockGuestDir, fdGuestDir, false}} {
		rel := "run/cloister/vsock/" + v.name
		if err := ensureDir(root, rel, 0o755); err != nil {
			return step("mkdir /"+rel, err)
		}
		// v.fd is a detached clone of the host directory (open_tree).
		if err := unix.MoveMount(v.fd, "", unix.AT_FDCWD, at(rel), unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
			return step("vsock "+v.name+" directory: move_mount on "+at(rel), err)
		}
		flags := nosuid
		if v.ro {
			flags |= unix.MS_RDONLY
		}
		if err := remount(at(rel), flags); err != nil {
			return step("vsock "+v.name+" directory", err)
		}
		unix.Close(v.fd)
	}

	if err := unix.Sethostname([]byte(Hostname)); err != nil {
		return step("sethostname", err)
	}
	if err := unix.PivotRoot(newRoot, at(".oldroot")); err != nil {
		return step("pivot_root", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return step("chdir /", err)
	}
	if err := unix.Unmount("/.oldroot", unix.MNT_DETACH); err != nil {
		return step("unmount the old root", err)
	}
	if err := os.Remove("/.oldroot"); err != nil {
		return step("remove /.oldroot", err)
	}
	return nil
}

// remount applies flags to the bind mount at target, keeping the atime
// flags the kernel locks for mounts inherited from the host.
func remount(target string, flags uintptr) error {
	var st unix.Statfs_t
	if err := unix.Statfs(target, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", target, err)
	}
	for _, f := range []struct{ st, ms uintptr }{
		{unix.ST_NOATIME, unix.MS_NOATIME}, {unix.ST_NODIRATIME, unix.MS_NODIRATIME}, {unix.ST_RELATIME, unix.MS_RELATIME},
	} {
		if uintptr(st.Flags)&f.st != 0 {
			flags |= f.ms
		}
	}
	return mnt("", target, "", unix.MS_BIND|unix.MS_REMOUNT|flags, "")
}

// Capabilities kept by the sandbox's init (linux/capability.h).
const (
	capSetgid  = 6
	capSetpcap = 8
	capSetuid  = 7
)

// harden applies the process restrictions, seccomp last. With cfg.Nitro
// the filter is the supervised policy and its listener is returned;
// otherwise -1.
func harden(cfg childConfig) (int, error) {
	var nofile unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &nofile); err != nil {
		return -1, step("getrlimit", err)
	}
	nofile.Max = min(nofile.Max, 65536)
	nofile.Cur = nofile.Max
	for _, l := range []struct {
		name string
		res  int
		lim  unix.Rlimit
	}{
		{"RLIMIT_NOFILE", unix.RLIMIT_NOFILE, nofile},
		{"RLIMIT_CORE", unix.RLIMIT_CORE, unix.Rlimit{}},
		// init's own limit; it lowers it by InitTaskReserve for the application.
		{"RLIMIT_NPROC", unix.RLIMIT_NPROC, unix.Rlimit{Cur: uint64(cfg.PidsMax + wellknown.InitTaskReserve), Max: uint64(cfg.PidsMax + wellknown.InitTaskReserve)}},
	} {
		if err := unix.Setrlimit(l.res, &l.lim); err != nil {
			return -1, step("setrlimit "+l.name, err)
		}
	}
	for c := 0; c < 64; c++ {
		if c == capSetuid || c == capSetgid || c == capSetpcap {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
			if errors.Is(err, unix.EINVAL) {
				break // beyond the kernel's last capability
			}
			return -1, step(fmt.Sprintf("drop capability %d from the bounding set", c), err)
		}
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return -1, step("clear ambient capabilities", err)
	}
	// init keeps SETUID and SETGID to switch to the image's user, and
	// SETPCAP to empty the bounding set before it execs the application,
	// which therefore starts with no capability in any set.
	keep := uint32(1<<capSetuid | 1<<capSetgid | 1<<capSetpcap)
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	data := [2]unix.CapUserData{{Effective: keep, Permitted: keep}}
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return -1, step("capset", err)
	}
	if err := seccomp.SetNoNewPrivs(); err != nil {
		return -1, err
	}
	if cfg.Nitro {
		prog, err := seccomp.SupervisedProgram()
		if err != nil {
			return -1, err
		}
		return seccomp.InstallListener(prog)
	}
	prog, err := seccomp.SandboxProgram()
	if err != nil {
		return -1, err
	}
	return -1, seccomp.Install(prog)
}
