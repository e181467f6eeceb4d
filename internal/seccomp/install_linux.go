//go:build linux

package seccomp

import (
	"fmt"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// seccomp(2) constants (linux/seccomp.h).
const (
	seccompSetModeFilter   = 1
	seccompFilterFlagTSYNC = 1
)

// SetNoNewPrivs sets PR_SET_NO_NEW_PRIVS on the calling thread. It is
// inherited across fork and execve and cannot be unset; seccomp(2) without
// CAP_SYS_ADMIN requires it.
func SetNoNewPrivs() error {
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("%w: prctl(PR_SET_NO_NEW_PRIVS): %w", ErrInstall, err)
	}
	return nil
}

// Install loads prog with seccomp(SECCOMP_SET_MODE_FILTER,
// SECCOMP_FILTER_FLAG_TSYNC): the filter applies to every thread of the
// process (and, with TSYNC, the caller's no_new_privs is propagated to
// them), and to everything they execute. The caller must have set
// no_new_privs (see [SetNoNewPrivs]) or hold CAP_SYS_ADMIN. Filters stack:
// a loaded filter cannot be removed.
func Install(prog []bpf.RawInstruction) error {
	if len(prog) == 0 || len(prog) > 4096 {
		return fmt.Errorf("%w: program of %d instructions", ErrInstall, len(prog))
	}
	// bpf.RawInstruction has the layout of struct sock_filter.
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: (*unix.SockFilter)(unsafe.Pointer(&prog[0]))}
	r1, _, errno := unix.Syscall(unix.SYS_SECCOMP, seccompSetModeFilter, seccompFilterFlagTSYNC, uintptr(unsafe.Pointer(&fprog)))
	if errno != 0 {
		return fmt.Errorf("%w: seccomp(SET_MODE_FILTER, TSYNC): %w", ErrInstall, errno)
	}
	if r1 != 0 {
		// With TSYNC a positive return is the id of a thread that could
		// not be synchronised.
		return fmt.Errorf("%w: seccomp(TSYNC): thread %d could not be synchronised", ErrInstall, r1)
	}
	return nil
}

// seccomp(2) filter flags used by InstallListener (linux/seccomp.h).
const (
	seccompFilterFlagNewListener = 0x8
	seccompFilterFlagTSYNCESRCH  = 0x10
)

// InstallListener loads prog as [Install] does (every thread, TSYNC) and
// returns the new filter's user-notification listener
// (SECCOMP_FILTER_FLAG_NEW_LISTENER, close-on-exec): the descriptor on
// which a supervisor receives the calls prog answers with [ActNotify].
// TSYNC and a listener together need SECCOMP_FILTER_FLAG_TSYNC_ESRCH
// (Linux 5.7): a thread that cannot be synchronised makes the call fail
// with ESRCH. The caller owns the returned descriptor; whoever holds it
// decides the notified calls, so it must leave the confined process before
// anything untrusted runs there.
func InstallListener(prog []bpf.RawInstruction) (int, error) {
	if len(prog) == 0 || len(prog) > 4096 {
		return -1, fmt.Errorf("%w: program of %d instructions", ErrInstall, len(prog))
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: (*unix.SockFilter)(unsafe.Pointer(&prog[0]))}
	flags := uintptr(seccompFilterFlagTSYNC | seccompFilterFlagNewListener | seccompFilterFlagTSYNCESRCH)
	fd, _, errno := unix.Syscall(unix.SYS_SECCOMP, seccompSetModeFilter, flags, uintptr(unsafe.Pointer(&fprog)))
	if errno != 0 {
		return -1, fmt.Errorf("%w: seccomp(SET_MODE_FILTER, TSYNC|NEW_LISTENER|TSYNC_ESRCH): %w", ErrInstall, errno)
	}
	return int(fd), nil
}
