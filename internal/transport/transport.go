package transport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/cloister/cloister/internal/hybrid"
	"github.com/cloister/cloister/internal/wellknown"
	"github.com/mdlayher/vsock"
)

// Error classes, identical to internal/hybrid's so that one errors.Is check
// works on both sides and in every world.
var (
	ErrNoListener = hybrid.ErrNoListener // nothing listens on the destination port
	ErrTimeout    = hybrid.ErrTimeout    // no answer before the deadline
	ErrReset      = hybrid.ErrReset      // the peer reset the connection
	// ErrUnreachable means the destination CID cannot be reached from this
	// enclave (in the sandbox only the parent, CID 3 or 2, exists).
	ErrUnreachable = errors.New("vsock: context ID unreachable")
)

// ParentCID is the parent instance's CID as seen from an enclave.
const ParentCID = hybrid.ParentCID

// hostCID (VMADDR_CID_HOST) is accepted as an alias of the parent.
const hostCID = 2

// Config holds optional settings for [Listen], [Dial] and [LocalCID]. A nil
// *Config or the zero value means: detect everything from the environment.
type Config struct {
	// World overrides detection when not WorldAuto.
	World World
	// Dir is the sandbox world's vsock directory; "" means
	// $CLOISTER_VSOCK_DIR, or DefaultVsockDir when that is unset.
	Dir string
	// CID is this enclave's CID in the sandbox world; 0 means $CLOISTER_CID.
	CID uint32
}

func (c *Config) world() World {
	if c != nil && c.World != WorldAuto {
		return c.World
	}
	return Detect()
}

func (c *Config) dir() string {
	if c != nil && c.Dir != "" {
		return c.Dir
	}
	if d := os.Getenv(EnvVsockDir); d != "" {
		return d
	}
	return DefaultVsockDir
}

// sandboxCID returns the own CID in the sandbox world.
func (c *Config) sandboxCID() (uint32, error) {
	if c != nil && c.CID != 0 {
		return c.CID, nil
	}
	s := os.Getenv(EnvCID)
	if s == "" {
		return 0, fmt.Errorf("transport: $%s is not set", EnvCID)
	}
	v, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("transport: $%s=%q is not a 32-bit decimal CID", EnvCID, s)
	}
	return uint32(v), nil
}

// ownCID is sandboxCID with AnyCID when unknown (addresses only).
func (c *Config) ownCID() uint32 {
	if cid, err := c.sandboxCID(); err == nil {
		return cid
	}
	return hybrid.AnyCID
}

// GuestPath returns the sandbox world's listener socket for port:
// "<dir>/guest/vsock_<port>".
func GuestPath(dir string, port uint32) string {
	return filepath.Join(dir, wellknown.VsockGuestDir, wellknown.VsockSocketName(port))
}

// HostPath returns the sandbox world's socket for connections to the
// parent's port: "<dir>/host/vsock_<port>".
func HostPath(dir string, port uint32) string {
	return filepath.Join(dir, wellknown.VsockHostDir, wellknown.VsockSocketName(port))
}

// Listen listens for connections from the parent on port.
//
// In the sandbox world it creates the Unix socket GuestPath(dir, port),
// removing a stale one (see hybrid.ListenUnix); the listener's Addr is (own
// CID, port). Each accepted connection first carries a marker byte
// (hybrid.ListenGuest): 'F' with a file descriptor (the host client's own
// socket, handed off by the daemon: Accept returns that socket and closes
// the connection the marker came on) or 'R' (the connection itself is the
// stream, relayed by the daemon). Accepted connections report
// Local = (own CID, port),
// Remote = (3, port). The own CID is Config.CID or $CLOISTER_CID (AnyCID if
// neither is set). In the nitro and microvm worlds it is vsock.Listen.
func Listen(port uint32, cfg *Config) (net.Listener, error) {
	if cfg.world() != WorldSandbox {
		return vsock.Listen(port, nil)
	}
	l, err := hybrid.ListenGuest(GuestPath(cfg.dir(), port), &vsock.Addr{ContextID: cfg.ownCID(), Port: port}, ParentCID)
	if err != nil {
		return nil, err
	}
	return l, nil
}

// Dial connects to (cid, port), honouring ctx's deadline and cancellation.
//
// In the sandbox world only the parent exists: cid 3 (or its alias 2)
// connects to the Unix socket HostPath(dir, port); the connection reports
// Local = (own CID, port), Remote = (3, port). Any other cid fails with
// [ErrUnreachable]. A missing socket or a refused connection fails with
// [ErrNoListener]; ctx's deadline with [ErrTimeout].
//
// In the nitro and microvm worlds it is vsock.DialContext; connection
// refused or reset during connect (how a vsock peer says nobody listens)
// map to [ErrNoListener], ETIMEDOUT and ctx's deadline to [ErrTimeout],
// ENETUNREACH/EHOSTUNREACH to [ErrUnreachable].
//
// Errors are *net.OpError (Op "dial", Net "vsock").
func Dial(ctx context.Context, cid, port uint32, cfg *Config) (net.Conn, error) {
	if cfg.world() != WorldSandbox {
		c, err := vsock.DialContext(ctx, cid, port, nil)
		if err != nil {
			return nil, classifyVsockDial(ctx, err, cid, port)
		}
		return c, nil
	}
	remote := &vsock.Addr{ContextID: ParentCID, Port: port}
	if cid != ParentCID && cid != hostCID {
		return nil, &net.OpError{Op: "dial", Net: "vsock", Addr: &vsock.Addr{ContextID: cid, Port: port},
			Err: fmt.Errorf("%w: only the parent (CID 3) is reachable from a sandboxed enclave", ErrUnreachable)}
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", HostPath(cfg.dir(), port))
	if err != nil {
		if oe, ok := err.(*net.OpError); ok {
			err = oe.Err
		}
		return nil, &net.OpError{Op: "dial", Net: "vsock", Addr: remote, Err: hybrid.Classify(ctx, err, port)}
	}
	return hybrid.NewConn(nc.(*net.UnixConn), &vsock.Addr{ContextID: cfg.ownCID(), Port: port}, remote), nil
}

// classifyVsockDial maps an AF_VSOCK connect failure to the error classes.
func classifyVsockDial(ctx context.Context, err error, cid, port uint32) error {
	oe, ok := err.(*net.OpError)
	if !ok {
		oe = &net.OpError{Op: "dial", Net: "vsock", Addr: &vsock.Addr{ContextID: cid, Port: port}, Err: err}
	} else {
		c := *oe
		oe = &c
	}
	inner := oe.Err
	switch {
	case errors.Is(inner, syscall.ECONNREFUSED), errors.Is(inner, syscall.ECONNRESET):
		oe.Err = &hybrid.Error{Class: ErrNoListener, Port: port, Err: inner}
	case errors.Is(inner, syscall.ENETUNREACH), errors.Is(inner, syscall.EHOSTUNREACH):
		oe.Err = fmt.Errorf("%w: %w", ErrUnreachable, inner)
	default:
		oe.Err = hybrid.Classify(ctx, inner, port)
	}
	return oe
}

// LocalCID returns this enclave's CID: $CLOISTER_CID in the sandbox world
// (an error if unset or malformed), the AF_VSOCK local CID otherwise.
func LocalCID() (uint32, error) {
	return localCID(nil)
}

func localCID(cfg *Config) (uint32, error) {
	if cfg.world() == WorldSandbox {
		return cfg.sandboxCID()
	}
	return vsock.ContextID()
}
