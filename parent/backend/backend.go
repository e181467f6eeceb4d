// Package backend defines what the Cloister daemon needs from an enclave
// backend — the process sandbox, the QEMU microVM or a real Nitro enclave —
// so that the daemon's control plane (resource carving, naming, state,
// per-enclave services, API) is the same for all three.
//
// A backend launches one enclave from a [Spec] and hands back an
// [Instance]. Everything the daemon provides to the enclave (heartbeat,
// emulated security module, console log, egress proxy, host↔enclave
// connections) reaches it through the host side of its vsock, which the
// backend exposes with [Backend.HostListen] and [Instance.Connector].
package backend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
)

// Sentinel errors a backend returns, wrapped with detail.
var (
	// ErrUnsupportedImage means the image cannot run on this backend (for
	// example an image built without a kernel on the microVM backend).
	ErrUnsupportedImage = errors.New("backend: image not supported by this backend")
	// ErrUnavailable means the backend's prerequisites are missing on this
	// host (no QEMU, no /dev/nitro_enclaves, no user namespaces …).
	ErrUnavailable = errors.New("backend: not available on this host")
)

// Spec describes one enclave to launch. All resources are already carved
// out by the daemon: the backend must confine the enclave to exactly them.
// The daemon builds a Spec once and checks it once, with [ValidateSpec];
// backends rely on that check.
type Spec struct {
	ID        string // EnclaveID, e.g. i-0123456789abcdef0-enc0123456789abcdef
	Name      string
	CID       uint32 // ≥ 4
	CPUs      []int  // dedicated host CPU ids
	MemoryMiB int
	Debug     bool
	// EIFPath names where the image came from, for messages only: a
	// backend never opens it.
	EIFPath string
	// Image holds the exact bytes to boot: the daemon's sealed in-memory
	// copy, the one it measured (see docs/ARCHITECTURE.md, "The image that
	// boots"). A backend reads the image only from here (ReadAt, or
	// copy_file_range from it), never from EIFPath, and does not close it.
	Image *os.File `json:"-"`
	// ImageVerified says Image is the sealed copy whose CRC the daemon
	// checked when it validated and measured it (the monitor sets it
	// once it has checked the seals): backends then check its layout
	// only, not the CRC again.
	ImageVerified bool `json:"-"`
	// Dir is the enclave's private directory; [Dir]'s methods name every
	// path in it.
	Dir Dir
	// Console receives the enclave's console output (serial console or the
	// sandbox's stdout/stderr).
	Console io.Writer `json:"-"`
	// NSM is the enclave's emulated security module (the daemon's
	// parent/nsmemu), for a backend that serves /dev/nsm itself: the
	// sandbox's supervisor sends it the raw requests of /dev/nsm's ioctl.
	// nil when the daemon runs none.
	NSM NSMRoundTripper `json:"-"`
}

// NSMRoundTripper sends one raw CBOR NSM request and returns the raw CBOR
// response (nsmdev.RoundTripper, internal/nsm.Transport).
type NSMRoundTripper interface {
	RoundTrip(ctx context.Context, req []byte) ([]byte, error)
}

// Exit describes how an enclave ended.
type Exit struct {
	// Code is the application's exit status when known, else -1.
	Code int `json:"Code"`
	// Signal names the signal that killed the enclave or its application, if any.
	Signal string `json:"Signal,omitempty"`
	// Reason is a human-readable summary ("exited with status 3",
	// "terminated", "kernel panic", "out of memory").
	Reason string `json:"Reason"`
}

func (e Exit) String() string { return e.Reason }

// Instance is one running enclave.
type Instance interface {
	// Pid is the host process that embodies the enclave (sandbox init,
	// QEMU), or 0 when there is none (Nitro).
	Pid() int
	// Done is closed when the enclave has ended.
	Done() <-chan struct{}
	// Exit reports how the enclave ended; valid after Done is closed.
	Exit() Exit
	// Terminate stops the enclave and releases everything the backend
	// created for it. It is idempotent and returns when the enclave is gone.
	Terminate(ctx context.Context) error
	// Dial opens a host-initiated connection to port inside the enclave.
	Dial(ctx context.Context, port uint32) (net.Conn, error)
}

// Backend launches enclaves of one kind.
type Backend interface {
	// Kind says which backend this is.
	Kind() Kind
	// Check reports whether the backend can run on this host, with an error
	// that says what is missing and how to fix it.
	Check(ctx context.Context) error
	// HostListen listens for connections the enclave described by spec
	// opens to the parent (CID 3) on port. The daemon calls it before
	// Launch for the heartbeat and its other services.
	HostListen(ctx context.Context, spec Spec, port uint32) (net.Listener, error)
	// Launch starts the enclave from a Spec that passed [ValidateSpec]. It
	// returns once the enclave's first process runs; the daemon then waits
	// for the heartbeat.
	Launch(ctx context.Context, spec Spec) (Instance, error)
}

// Kind names a backend. It is the value of the daemon configuration's
// "backend" and of describe-enclaves' Backend.
type Kind string

// The backends.
const (
	KindSandbox Kind = "sandbox"
	KindQEMU    Kind = "qemu"
	KindNitro   Kind = "nitro"
)

func (k Kind) String() string { return string(k) }

// Capabilities are what a backend offers beyond [Backend]; the daemon
// decides by them, never by a backend's [Kind].
type Capabilities struct {
	// NoKernel: the backend runs images built without a kernel
	// (eif.IsNoKernel), which share the host's kernel.
	NoKernel bool
	// EmulatedNSM: the enclave's security module is the daemon's emulator
	// (parent/nsmemu), whose documents the development root signs; without
	// it the enclave has a real one.
	EmulatedNSM bool
	// HostSockets: the enclave's connections to the parent arrive on Unix
	// sockets at [Dir.HostListener] (hybrid vsock), which host programs may
	// listen on; without it they arrive on AF_VSOCK.
	HostSockets bool
}

// Capable is implemented by backends that offer [Capabilities].
type Capable interface {
	Capabilities() Capabilities
}

// CapabilitiesOf returns b's capabilities: none unless b is [Capable].
func CapabilitiesOf(b Backend) Capabilities {
	if c, ok := b.(Capable); ok {
		return c.Capabilities()
	}
	return Capabilities{}
}

// ValidateSpec checks the parts of a Spec every backend relies on.
func ValidateSpec(s Spec) error {
	switch {
	case s.ID == "":
		return errors.New("backend: spec has no enclave id")
	case s.CID < 4 || s.CID == 0xFFFFFFFF:
		return fmt.Errorf("backend: enclave CID %d is outside 4..4294967294", s.CID)
	case len(s.CPUs) == 0:
		return errors.New("backend: spec has no CPUs")
	case s.MemoryMiB <= 0:
		return errors.New("backend: spec has no memory")
	case s.Image == nil:
		return errors.New("backend: spec has no image")
	case s.Dir == "":
		return errors.New("backend: spec has no private directory")
	}
	return nil
}

// Cleaner is implemented by backends that can remove what an enclave left
// behind when its monitor died without cleaning up (processes, cgroups,
// mounts, memory). Cleanup must be safe to call when nothing is left.
type Cleaner interface {
	Cleanup(ctx context.Context, spec Spec) error
}
