package enclave

import (
	"context"

	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"

	"github.com/cloister/cloister/internal/nsm"
	"github.com/cloister/cloister/internal/transport"
)

// NSMPort is the vsock port on the parent (CID 3) where the Cloister daemon
// serves the emulated security module in the microvm and sandbox worlds:
// 0x4E534D ("NSM" in ASCII).
const NSMPort uint32 = nsm.Port

// World is the kind of environment an enclave runs in. The zero value,
// WorldAuto, asks for detection.
type World = transport.World

// The worlds.
const (
	WorldAuto    = transport.WorldAuto    // detect (see OpenSession)
	WorldNitro   = transport.WorldNitro   // real Nitro enclave: /dev/nsm
	WorldMicroVM = transport.WorldMicroVM // QEMU microVM: emulated module over vsock
	WorldSandbox = transport.WorldSandbox // process sandbox: emulated module over a Unix socket
)

// Errors of the security module, for errors.Is. A module's refusal is an
// [*NSMError]; an argument refused by the SDK before anything is sent is a
// [*LimitError]; both match the sentinel of their code.
var (
	// ErrInvalidIndex: a PCR index ≥ the module's PCR count (32), or a
	// LockPCRs count above it, or an index the protocol cannot carry.
	ErrInvalidIndex = nsm.ErrInvalidIndex
	// ErrReadOnlyIndex: the PCR is locked (PCRs 0–15 always are), so it
	// cannot be extended or locked again.
	ErrReadOnlyIndex = nsm.ErrReadOnlyIndex
	// ErrInputTooLarge: user data, nonce or public key over 1024 bytes, or
	// a request over 4096 bytes.
	ErrInputTooLarge = nsm.ErrInputTooLarge
	// ErrInvalidArgument: an argument the module or the SDK rejects.
	ErrInvalidArgument = nsm.ErrInvalidArgument
	// ErrInvalidOperation: the module does not understand the request.
	ErrInvalidOperation = nsm.ErrInvalidOperation
	// ErrInvalidResponse: the module's answer is malformed or does not
	// match the request.
	ErrInvalidResponse = nsm.ErrInvalidResponse
	// ErrBufferTooSmall: the module's answer did not fit.
	ErrBufferTooSmall = nsm.ErrBufferTooSmall
	// ErrInternalError: the module or the /dev/nsm driver failed.
	ErrInternalError = nsm.ErrInternalError
	// ErrSessionClosed: the Session was closed.
	ErrSessionClosed = nsm.ErrClosed
)

// NSMError is an error answered by the security module itself; its Code
// names the NSM error (Code.String() gives "ReadOnlyIndex", …).
type NSMError = nsm.Error

// LimitError is an argument the SDK refused before sending it to the
// security module (a size over its limit, an index the protocol cannot
// carry).
type LimitError = nsm.LimitError

// NSMTransport carries one encoded NSM request to a security module and
// returns its encoded response (the bytes the /dev/nsm ioctl would carry).
// Set it in [SessionConfig] to talk to a module of your own.
type NSMTransport interface {
	RoundTrip(ctx context.Context, req []byte) ([]byte, error)
}

// SessionConfig overrides how [OpenSession] reaches the security module.
// The zero value (or a nil *SessionConfig) detects everything.
type SessionConfig struct {
	// Transport, when non-nil, carries every request; World is ignored.
	// If it implements io.Closer, Session.Close closes it.
	Transport NSMTransport
	// World selects the module when Transport is nil: WorldNitro and
	// WorldMicroVM use /dev/nsm (in a microVM, served by cloister-init and
	// forwarded to the emulated module; a guest kernel without CUSE has
	// none, and the SDK then dials the module directly); WorldSandbox dials
	// the emulated module at (ParentCID, NSMPort) through the world's vsock
	// transport. WorldAuto detects the world as [Listen] and [Dial] do.
	World World
}

// deviceWorlds says, for each world, whether the SDK reaches the security
// module through /dev/nsm (true), as every unmodified Nitro program does,
// or over the world's vsock transport to the emulated module (false). On
// Nitro /dev/nsm is the kernel's; in a microVM cloister-init serves it
// through CUSE, and the SDK falls back to the stream only when the guest
// kernel has no CUSE (no /dev/nsm). In the sandbox the monitor's seccomp
// supervisor answers /dev/nsm's ioctls; a sandbox started without that
// emulation (sandbox.Backend.NoNitro) has no /dev/nsm, and the SDK uses
// the stream. One code path, as on Nitro, at a measured cost: an
// attestation takes about 1.35x (sandbox) and 2.4-2.9x (microVM, three
// CUSE round trips) the stream's time (docs/concepts.md).
var deviceWorlds = map[World]bool{
	WorldNitro:   true,
	WorldMicroVM: true,
	WorldSandbox: true,
}

// nsmDevicePath is /dev/nsm (a variable for the package's tests).
var nsmDevicePath = nsm.DevicePath

// deviceExists reports whether path exists.
func deviceExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// Session talks to the enclave's security module — the real Nitro NSM
// through /dev/nsm, or the module the Cloister daemon emulates for microVM
// and sandbox enclaves — with the same API and the same wire protocol. It
// is safe for concurrent use; requests are serialised by the module.
type Session struct {
	c     *nsm.Client
	t     *closableTransport
	world World

	closeOnce sync.Once
	closeErr  error
}

// closableTransport refuses requests once closed.
type closableTransport struct {
	t      NSMTransport
	closed atomic.Bool
}

func (c *closableTransport) RoundTrip(ctx context.Context, req []byte) ([]byte, error) {
	if c.closed.Load() {
		return nil, ErrSessionClosed
	}
	return c.t.RoundTrip(ctx, req)
}

// OpenSession opens the security module and checks that it answers (one
// DescribeNSM request). Without a Transport in cfg, the world is cfg.World
// or, for WorldAuto, detected: $CLOISTER_WORLD if it names a world, else
// sandbox if $CLOISTER_VSOCK_DIR is set, else nitro if /dev/nsm is the
// kernel's misc device, else microvm. Nitro and microvm open /dev/nsm, as
// an unmodified Nitro program does (microvm falls back to the emulated
// module over vsock when the guest has no /dev/nsm); sandbox connects to
// (ParentCID, NSMPort) and reconnects after failures. ctx bounds the
// check. Errors say which module could not be reached and wrap the cause
// (e.g. fs.ErrNotExist for a missing /dev/nsm on Nitro, [ErrNoListener]
// when no emulated module listens). A Transport from cfg is not closed on
// failure.
func OpenSession(ctx context.Context, cfg *SessionConfig) (*Session, error) {
	var c SessionConfig
	if cfg != nil {
		c = *cfg
	}
	t := c.Transport
	s := &Session{world: c.World}
	if t == nil {
		if s.world == WorldAuto {
			s.world = transport.Detect()
		}
		useDevice, known := deviceWorlds[s.world]
		switch {
		case !known:
			return nil, fmt.Errorf("enclave: open security module: unknown world %v", s.world)
		case useDevice && (s.world == WorldNitro || deviceExists(nsmDevicePath)):
			d, err := nsm.OpenDevice(nsmDevicePath)
			if err != nil {
				return nil, fmt.Errorf("enclave: open security module: %w", err)
			}
			t = d
		default:
			tc := &transport.Config{World: s.world}
			t = nsm.NewStream(func(ctx context.Context) (net.Conn, error) {
				return transport.Dial(ctx, ParentCID, NSMPort, tc)
			})
		}
	}
	s.t = &closableTransport{t: t}
	s.c = nsm.NewClient(s.t)
	if _, err := s.c.DescribeNSM(ctx); err != nil {
		if c.Transport == nil {
			s.Close()
		}
		return nil, fmt.Errorf("enclave: security module (%v world) does not answer: %w", s.world, err)
	}
	return s, nil
}

// World returns the world whose module the session uses: the detected or
// configured one, or SessionConfig.World as given (WorldAuto by default)
// when a custom Transport was set.
func (s *Session) World() World { return s.world }

// AttestOptions are the caller's values embedded in an attestation
// document. Each is at most 1024 bytes; nil leaves the field null.
type AttestOptions struct {
	Nonce     []byte // a verifier's challenge, proving freshness
	UserData  []byte // application data to bind to the document
	PublicKey []byte // a DER public key (KMS requires an RSA SPKI)
}

// Attest returns a signed attestation document (COSE_Sign1, as the NSM
// emits it) carrying opts and the locked PCRs. It refuses a field over
// 1024 bytes with a [*LimitError] matching [ErrInputTooLarge] without
// contacting the module. The document is returned as received; verify it
// with the attest package.
func (s *Session) Attest(ctx context.Context, opts AttestOptions) ([]byte, error) {
	doc, err := s.c.Attestation(ctx, opts.UserData, opts.Nonce, opts.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("enclave: attest: %w", err)
	}
	return doc, nil
}

// PCR is the state of a platform configuration register.
type PCR struct {
	Locked bool   // read-only: locked at boot (0–15) or by LockPCR/LockPCRs
	Value  []byte // 48 bytes (SHA-384)
}

// DescribePCR returns the value and lock state of PCR index (0..31 on
// Nitro; [ErrInvalidIndex] otherwise).
func (s *Session) DescribePCR(ctx context.Context, index int) (PCR, error) {
	p, err := s.c.DescribePCR(ctx, index)
	if err != nil {
		return PCR{}, fmt.Errorf("enclave: describe PCR%d: %w", index, err)
	}
	return PCR{Locked: p.Locked, Value: p.Value}, nil
}

// ExtendPCR extends PCR index with data — new value = SHA-384(old ‖ data)
// — and returns the new value. Only unlocked PCRs (16..31 until locked)
// can be extended: [ErrReadOnlyIndex] otherwise.
func (s *Session) ExtendPCR(ctx context.Context, index int, data []byte) ([]byte, error) {
	v, err := s.c.ExtendPCR(ctx, index, data)
	if err != nil {
		return nil, fmt.Errorf("enclave: extend PCR%d: %w", index, err)
	}
	return v, nil
}

// LockPCR makes PCR index read-only; from then on it appears in attestation
// documents. Locking a locked PCR fails with [ErrReadOnlyIndex].
func (s *Session) LockPCR(ctx context.Context, index int) error {
	if err := s.c.LockPCR(ctx, index); err != nil {
		return fmt.Errorf("enclave: lock PCR%d: %w", index, err)
	}
	return nil
}

// LockPCRs makes PCRs 0..n-1 read-only (already locked ones stay locked).
// n above the PCR count (32) fails with [ErrInvalidIndex].
func (s *Session) LockPCRs(ctx context.Context, n int) error {
	if err := s.c.LockPCRs(ctx, n); err != nil {
		return fmt.Errorf("enclave: lock PCRs 0..%d: %w", n-1, err)
	}
	return nil
}

// Description is what the security module reports about itself.
type Description struct {
	VersionMajor, VersionMinor, VersionPatch int
	ModuleID                                 string // the enclave ID, e.g. "i-…-enc…"
	MaxPCRs                                  int    // 32 on Nitro
	LockedPCRs                               []int  // ascending as reported
	Digest                                   string // "SHA384" on Nitro
}

// Describe returns the module's version, module ID, PCR count, currently
// locked PCRs and PCR digest.
func (s *Session) Describe(ctx context.Context) (Description, error) {
	d, err := s.c.DescribeNSM(ctx)
	if err != nil {
		return Description{}, fmt.Errorf("enclave: describe security module: %w", err)
	}
	locked := make([]int, len(d.LockedPCRs))
	for i, p := range d.LockedPCRs {
		locked[i] = int(p)
	}
	return Description{
		VersionMajor: int(d.VersionMajor), VersionMinor: int(d.VersionMinor), VersionPatch: int(d.VersionPatch),
		ModuleID: d.ModuleID, MaxPCRs: int(d.MaxPCRs), LockedPCRs: locked, Digest: string(d.Digest),
	}, nil
}

// Random returns n bytes of entropy from the module, issuing as many
// GetRandom requests as needed (each yields up to 256 bytes). n < 0 is
// [ErrInvalidArgument].
func (s *Session) Random(ctx context.Context, n int) ([]byte, error) {
	if n < 0 {
		return nil, fmt.Errorf("enclave: random: negative length %d: %w", n, ErrInvalidArgument)
	}
	out := make([]byte, 0, n)
	for len(out) < n {
		r, err := s.c.GetRandom(ctx)
		if err != nil {
			return nil, fmt.Errorf("enclave: random: %w", err)
		}
		out = append(out, r[:min(len(r), n-len(out))]...)
	}
	return out, nil
}

// Reader returns an io.Reader of module entropy: each Read fills p
// completely with GetRandom results or fails. Reads are not bounded by a
// context (io.Reader has none); use Random to bound them.
func (s *Session) Reader() io.Reader { return randReader{s} }

type randReader struct{ s *Session }

func (r randReader) Read(p []byte) (int, error) {
	b, err := r.s.Random(context.Background(), len(p))
	if err != nil {
		return 0, err
	}
	return copy(p, b), nil
}

// Close releases the module (closes /dev/nsm or the connection to the
// emulated module). Later calls fail with [ErrSessionClosed]; Close is
// idempotent.
func (s *Session) Close() error {
	s.closeOnce.Do(func() {
		s.t.closed.Store(true)
		if c, ok := s.t.t.(io.Closer); ok {
			s.closeErr = c.Close()
		}
	})
	return s.closeErr
}
