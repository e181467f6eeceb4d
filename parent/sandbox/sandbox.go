package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"syscall"
	"time"

	"github.com/cloister/cloister/internal/nsm/nsmdev"
)

// Errors returned by this package; concrete errors wrap one of them.
var (
	// ErrInvalidSpec reports a Spec that cannot be started.
	ErrInvalidSpec = errors.New("sandbox: invalid spec")
	// ErrSetup reports a failure while building the sandbox (see [SetupError]).
	ErrSetup = errors.New("sandbox: setup failed")
	// ErrNoSlot reports that every uid range is in use.
	ErrNoSlot = errors.New("sandbox: no free uid range")
	// ErrUnsupported reports a platform without the sandbox (not Linux).
	ErrUnsupported = errors.New("sandbox: not supported on this platform")
)

// SetupError is a failure of one step of building the sandbox, reported by
// the child (or the parent) before init was executed. It wraps [ErrSetup].
type SetupError struct {
	// Msg says what failed and why, e.g. "mount tmpfs on /tmp: operation not permitted".
	Msg string
}

func (e *SetupError) Error() string { return "sandbox: " + e.Msg }

// Unwrap returns [ErrSetup].
func (e *SetupError) Unwrap() error { return ErrSetup }

// Spec describes one sandboxed enclave.
type Spec struct {
	// ID names the enclave; it names the cgroup (cloister/<ID>), so it
	// must satisfy cgroups.CheckID: 1–128 characters of [A-Za-z0-9._-].
	ID string
	// CID is the enclave's vsock context id (≥ 4), given to init as CLOISTER_CID.
	CID uint32
	// Ramdisks are paths of newc cpio archives, unpacked in order into the
	// root tmpfs (later entries replace earlier ones), as a Nitro kernel
	// unpacks an EIF's ramdisks: bootstrap first (init, modules), then the
	// customer's (rootfs/, cmd, env, workdir, user). Entries under
	// "rootfs/" land in "/", all others under "/.cloister/"; init is
	// "/.cloister/init". Device nodes, FIFOs and sockets are skipped;
	// "rootfs/.cloister" is refused. The files are opened by the parent
	// (root), so they need not be readable by the sandbox's ids.
	Ramdisks []string
	// RamdiskSections, when set instead of Ramdisks, are the archives as
	// byte ranges of open files (the sections of the daemon's sealed image):
	// the sandbox reads them in place, and nothing is copied.
	RamdiskSections []Section
	// MemoryMiB limits the enclave's memory (cgroup, root tmpfs included)
	// and sizes the root tmpfs; at least 32.
	MemoryMiB int
	// CPUs are the host CPUs the enclave may run on; nil = all of the
	// cgroup parent's.
	CPUs []int
	// PidsMax limits tasks (threads included); 0 means 1024.
	PidsMax int
	// VsockDir is the enclave's hybrid-vsock directory D: D/host, which
	// must exist, is bind-mounted read-only at /run/cloister/vsock/host.
	// /run/cloister/vsock/guest, where the enclave's listeners go, is not
	// on the host's disk: it is a private tmpfs of GuestDirBytes and
	// GuestDirInodes, reached from the host through [Process.GuestDir].
	VsockDir string
	// Console receives init's standard output and error. init writes to a
	// pipe that the launcher drains into Console, 1 MiB ahead at most;
	// when Console is that far behind the sandbox's writes wait for it,
	// but for at most a second: then output is dropped until Console
	// catches up (a notice line says how much), so a stuck Console never
	// blocks the sandbox for good. nil discards.
	Console io.Writer
	// Debug passes CLOISTER_DEBUG=1 to init.
	Debug bool
	// CgroupParent is the cgroup under which the enclave's group is
	// created; "" means "cloister".
	CgroupParent string
	// Nitro, when set, gives programs that do not use the SDK what a Nitro
	// enclave gives them: AF_VSOCK sockets, /dev/nsm and /dev/vsock,
	// emulated by a supervisor in this process (internal/unotify) that
	// answers the calls the sandbox's seccomp filter hands it (see
	// [Nitro]). nil leaves them out: socket(AF_VSOCK) fails with EPERM and
	// /dev has neither device.
	Nitro *Nitro
}

// Nitro configures the emulation of a Nitro enclave's vsock and devices
// in a sandbox ([Spec.Nitro]). The sandbox gets /dev/nsm and /dev/vsock
// (bind mounts of the host's /dev/null, mode 0666 as on Nitro) and the
// seccomp policy internal/seccomp.SupervisedPolicy; the filter's listener
// comes to this process before init runs (the launcher sends it over a
// Unix socket and closes its own copy), and a supervisor answers the
// notified calls from here, outside the sandbox, for its whole life.
type Nitro struct {
	// NSM is the enclave's security module: /dev/nsm's NSM_IOCTL_RAW
	// requests go to it (the daemon's emulator). nil: /dev/nsm's ioctls
	// fail with ENODEV.
	NSM nsmdev.RoundTripper
	// Logger receives the supervisor's diagnostics; nil discards them.
	Logger *slog.Logger
	// MaxInFlight and MaxSockets bound the supervisor (0: the defaults of
	// internal/unotify, 256 calls handled at once and 1024 emulated
	// sockets).
	MaxInFlight, MaxSockets int
	// Limiter, when not nil, paces the notified calls.
	Limiter interface {
		Wait(ctx context.Context) (time.Duration, error)
	}
}

// Paths inside the sandbox.
const (
	// InitPath is the init the sandbox executes.
	InitPath = "/.cloister/init"
	// VsockMount is where the vsock directories appear (CLOISTER_VSOCK_DIR).
	VsockMount = "/run/cloister/vsock"
	// Hostname is the sandbox's host name.
	Hostname = "enclave"
	// DefaultPath is the PATH given to init.
	DefaultPath = "/sbin:/usr/sbin:/bin:/usr/bin"
)

// ExitStatus is how a sandbox ended: init's exit status (which is the
// application's) or the signal that killed init.
type ExitStatus struct {
	// Code is init's exit status when Signal is 0.
	Code int
	// Signal is the signal that killed init, or 0.
	Signal syscall.Signal
	// OOMKills counts processes the kernel's OOM killer killed in the
	// enclave's cgroup during its life.
	OOMKills uint64
}

// String returns "exited with status N" or "killed by signal S", plus the
// OOM kill count when non-zero.
func (s ExitStatus) String() string {
	var out string
	if s.Signal != 0 {
		out = fmt.Sprintf("killed by signal %d (%v)", int(s.Signal), s.Signal)
	} else {
		out = fmt.Sprintf("exited with status %d", s.Code)
	}
	if s.OOMKills > 0 {
		out += fmt.Sprintf(" (%d OOM kills)", s.OOMKills)
	}
	return out
}

// ExitCode returns Code, or 128+Signal when killed by a signal.
func (s ExitStatus) ExitCode() int {
	if s.Signal != 0 {
		return 128 + int(s.Signal)
	}
	return s.Code
}

// childMarker is argv[0] of the re-executed child.
const childMarker = "cloister-sandbox-child"

// IsChild reports whether this process is a sandbox child started by
// [Start]. The program's main must then call [ChildMain] before doing
// anything else.
func IsChild() bool { return len(os.Args) == 1 && os.Args[0] == childMarker }

// Section is a byte range of an open file.
type Section struct {
	File         *os.File
	Offset, Size int64
}
