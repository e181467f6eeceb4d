package initproc

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/cloister/cloister/internal/wellknown"
)

// execStageArg0 is argv[0] of init re-executed as the exec stage.
const execStageArg0 = "cloister-init-exec"

// IsExecStage reports whether this process is init's exec stage; the
// program's main must then call [ExecStage] before anything else.
func IsExecStage() bool { return len(os.Args) > 0 && os.Args[0] == execStageArg0 }

// ExecStage is the short-lived child through which init starts the
// application. It reads the launch description from fd 3, then on one
// locked OS thread: when asked to drop capabilities, sets no_new_privs,
// clears the ambient set and empties the bounding set (when it holds
// CAP_SETPCAP; otherwise no_new_privs already stops execve from granting
// anything); switches groups, gid and uid (each only when it differs from
// the current one); when dropping capabilities, sets the effective,
// permitted and inheritable sets to zero and verifies that they are; changes
// to the working directory; and execs the application. On failure it writes the reason to fd 4 (close-on-exec,
// so init sees EOF when exec succeeds) and returns the exit status 127 (not
// found) or 126.
func ExecStage() int {
	runtime.LockOSThread() // credentials and capabilities are per thread
	errPipe := os.NewFile(4, "exec-status")
	fail := func(code int, format string, args ...any) int {
		marker := ""
		if code == 127 {
			marker = "!"
		}
		fmt.Fprintf(errPipe, marker+format, args...)
		return code
	}
	if _, err := unix.FcntlInt(4, unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
		return 126
	}
	specFile := os.NewFile(3, "exec-spec")
	var s execSpec
	err := json.NewDecoder(io.LimitReader(specFile, 16<<20)).Decode(&s)
	specFile.Close()
	if err != nil {
		return fail(126, "reading the launch description: %v", err)
	}
	if s.DropCaps {
		// In the sandbox the application gets the task limit minus the
		// share kept for init (see wellknown.InitTaskReserve).
		if err := reserveInitTasks(); err != nil {
			return fail(126, "task limit: %v", err)
		}
		// The bounding set can only be emptied while CAP_SETPCAP is still
		// effective, i.e. before the uid switch clears the effective set.
		if err := dropBounding(); err != nil {
			return fail(126, "dropping capabilities: %v", err)
		}
	}
	if err := setCredentials(s.UID, s.GID, s.Groups); err != nil {
		return fail(126, "switching to uid %d gid %d groups %v: %v", s.UID, s.GID, s.Groups, err)
	}
	if s.DropCaps {
		if err := clearCapabilities(); err != nil {
			return fail(126, "dropping capabilities: %v", err)
		}
	}
	if err := unix.Chdir(s.Dir); err != nil {
		return fail(126, "working directory %s: %v", s.Dir, err)
	}
	err = syscall.Exec(s.Path, s.Args, s.Env)
	if errors.Is(err, unix.ENOENT) {
		return fail(127, "exec %s: %v", s.Path, err)
	}
	return fail(126, "exec %s: %v", s.Path, err)
}

// setCredentials switches supplementary groups, gid and uid, skipping each
// call whose target already holds (so an unprivileged init can keep its own
// identity, and a user namespace that denies setgroups works when the
// groups need no change).
func setCredentials(uid, gid uint32, groups []uint32) error {
	cur, err := unix.Getgroups()
	if err != nil {
		return fmt.Errorf("getgroups: %w", err)
	}
	if !sameGroups(cur, groups) {
		ints := make([]int, len(groups))
		for i, g := range groups {
			ints[i] = int(g)
		}
		// Without CAP_SETGID a difference in the primary group alone is
		// immaterial: the primary gid grants its access either way.
		if err := unix.Setgroups(ints); err != nil && !(errors.Is(err, unix.EPERM) && sameGroupsBut(cur, groups, gid)) {
			return fmt.Errorf("setgroups: %w", err)
		}
	}
	if r, e, s := unix.Getresgid(); r != int(gid) || e != int(gid) || s != int(gid) {
		if err := unix.Setresgid(int(gid), int(gid), int(gid)); err != nil {
			return fmt.Errorf("setresgid: %w", err)
		}
	}
	if r, e, s := unix.Getresuid(); r != int(uid) || e != int(uid) || s != int(uid) {
		if err := unix.Setresuid(int(uid), int(uid), int(uid)); err != nil {
			return fmt.Errorf("setresuid: %w", err)
		}
	}
	return nil
}

// sameGroups reports whether cur and want hold the same group IDs.
func sameGroups(cur []int, want []uint32) bool {
	a := make([]uint32, len(cur))
	for i, g := range cur {
		a[i] = uint32(g)
	}
	b := slices.Clone(want)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}

// sameGroupsBut reports whether cur and want hold the same group IDs once
// gid is added to both.
func sameGroupsBut(cur []int, want []uint32, gid uint32) bool {
	return sameGroups(append(slices.Clone(cur), int(gid)), append(slices.Clone(want), gid))
}

// dropBounding sets no_new_privs (so execve can grant nothing the thread
// does not already hold), clears the ambient set and, when CAP_SETPCAP is
// effective, empties the bounding set of the calling thread.
func dropBounding() error {
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("PR_SET_NO_NEW_PRIVS: %w", err)
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("clearing the ambient set: %w", err)
	}
	eff, err := capget()
	if err != nil {
		return err
	}
	if eff&(1<<unix.CAP_SETPCAP) == 0 {
		return nil
	}
	for c := 0; c < 64; c++ {
		in, err := unix.PrctlRetInt(unix.PR_CAPBSET_READ, uintptr(c), 0, 0, 0)
		if errors.Is(err, unix.EINVAL) {
			break // past the last capability this kernel knows
		}
		if err != nil {
			return fmt.Errorf("PR_CAPBSET_READ %d: %w", c, err)
		}
		if in == 1 {
			if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
				return fmt.Errorf("PR_CAPBSET_DROP %d: %w", c, err)
			}
		}
	}
	return nil
}

// clearCapabilities sets the effective, permitted and inheritable sets of
// the calling thread to zero and checks that they are.
func clearCapabilities() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capset: %w", err)
	}
	hdr = unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capget: %w", err)
	}
	for _, d := range data {
		if d.Effective|d.Permitted|d.Inheritable != 0 {
			return fmt.Errorf("capabilities still set after capset: %+v", data)
		}
	}
	return nil
}

// capget returns the calling thread's effective capability set.
func capget() (uint64, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return 0, fmt.Errorf("capget: %w", err)
	}
	return uint64(data[0].Effective) | uint64(data[1].Effective)<<32, nil
}

// reserveInitTasks lowers RLIMIT_NPROC by wellknown.InitTaskReserve, so
// that the application and its children can never use the tasks init needs.
func reserveInitTasks() error {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NPROC, &lim); err != nil {
		return err
	}
	if lim.Max == unix.RLIM_INFINITY || lim.Max <= wellknown.InitTaskReserve {
		return nil
	}
	lim.Max -= wellknown.InitTaskReserve
	if lim.Cur > lim.Max {
		lim.Cur = lim.Max
	}
	return unix.Setrlimit(unix.RLIMIT_NPROC, &lim)
}
