package nsmemu

import (
	"context"
	"crypto/rand"
	"crypto/sha512"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cloister/cloister/attest"
	"github.com/cloister/cloister/internal/nsm"
)

// Version of the NSM API the emulator reports in DescribeNSM: 1.0.0, the
// value QEMU's virtio-nsm device reports.
const (
	VersionMajor = 1
	VersionMinor = 0
	VersionPatch = 0
)

// Layout of the emulated PCR bank (nitro-reference §3.4).
const (
	// BootPCRs is the number of PCRs locked at boot: 0..15.
	BootPCRs = 16
	// RandomSize is the number of bytes of one GetRandom response.
	RandomSize = 256
	// MaxModuleID bounds Config.ModuleID: the module_id buffer of libnsm's
	// C API (NsmDescription.module_id) holds 100 bytes.
	MaxModuleID = 100
)

// debugZeroPCRs are the PCRs a debug-mode enclave reports as all zeros, as
// a real Nitro enclave started with --debug-mode does (PCR3 and PCR4 keep
// their values).
var debugZeroPCRs = [...]int{0, 1, 2, 8}

// Config configures an [Emulator].
type Config struct {
	// ModuleID is the module_id of DescribeNSM and of attestation
	// documents: the enclave ID. Required, 1..100 bytes.
	ModuleID string
	// Issuer signs attestation documents (under the host's development
	// root). Required.
	Issuer *attest.Issuer
	// PCRs are the measured boot PCRs, index 0..15, 48 bytes each
	// (typically 0, 1, 2 from the EIF and 3, 4, 8 where known). Absent
	// ones are 48 zero bytes.
	PCRs map[int][]byte
	// Debug marks a debug-mode enclave: PCR0, 1, 2 and 8 are reported as
	// zeros (by DescribePCR and in documents) whatever PCRs says.
	Debug bool
	// Clock gives attestation timestamps; default time.Now.
	Clock func() time.Time
	// Rand supplies GetRandom; default crypto/rand.Reader.
	Rand io.Reader
	// Logger receives request errors at debug level and internal failures
	// at error level; default discards.
	Logger *slog.Logger
	// IdleTimeout, when positive, makes Serve close a connection on which
	// no complete request arrives for that long (a client such as
	// nsm.Stream reconnects on its next request). Zero means no limit.
	IdleTimeout time.Duration
	// Attestations, when not nil, paces Attestation requests: each one
	// waits for Attestations.Wait before its document is signed. The
	// signing is the emulator's one expensive operation and runs in the
	// host process, outside the enclave's CPU limit: a limiter scaled to
	// the enclave's vCPUs keeps an attestation loop from taking the
	// host's CPUs. Nil means no limit.
	Attestations Limiter
}

// Limiter paces one kind of request (see Config.Attestations).
// *ratelimit.Bucket implements it.
type Limiter interface {
	// Wait returns when the request may proceed, with how long it waited,
	// or with ctx's error if ctx ended first.
	Wait(ctx context.Context) (time.Duration, error)
}

// Stats are an Emulator's counters.
type Stats struct {
	// IdleClosed counts connections Serve closed after IdleTimeout.
	IdleClosed uint64 `json:"idle_closed"`
	// Attestations counts attestation documents issued.
	Attestations uint64 `json:"attestations"`
	// Throttled counts attestation requests that had to wait for the
	// limiter (including those abandoned while waiting).
	Throttled uint64 `json:"throttled"`
	// Waiting counts attestation requests waiting for the limiter now.
	Waiting int64 `json:"waiting"`
}

// Emulator is an emulated Nitro security module for one enclave: 32
// SHA-384 PCRs, 0..15 locked at boot with the configured measurements,
// 16..31 zero, extendable and lockable. It is safe for concurrent use.
type Emulator struct {
	moduleID string
	issuer   *attest.Issuer
	clock    func() time.Time
	rand     io.Reader
	log      *slog.Logger
	idle     time.Duration
	limiter  Limiter

	idleClosed, attestations, throttled atomic.Uint64
	waiting                             atomic.Int64

	mu     sync.Mutex
	pcrs   [nsm.MaxPCRs][nsm.PCRSize]byte
	locked [nsm.MaxPCRs]bool
	randMu sync.Mutex // serialises reads of rand (io.Reader need not be concurrency-safe)
}

// New returns an Emulator for cfg. It fails when ModuleID is empty or over
// [MaxModuleID] bytes, Issuer is nil, or a PCR index is outside 0..15 or
// its value is not 48 bytes.
func New(cfg Config) (*Emulator, error) {
	if cfg.ModuleID == "" || len(cfg.ModuleID) > MaxModuleID {
		return nil, fmt.Errorf("nsm emulator: module ID must be 1..%d bytes, got %d", MaxModuleID, len(cfg.ModuleID))
	}
	if cfg.Issuer == nil {
		return nil, errors.New("nsm emulator: no attestation issuer configured")
	}
	e := &Emulator{moduleID: cfg.ModuleID, issuer: cfg.Issuer, clock: cfg.Clock, rand: cfg.Rand, log: cfg.Logger,
		idle: cfg.IdleTimeout, limiter: cfg.Attestations}
	if e.clock == nil {
		e.clock = time.Now
	}
	if e.rand == nil {
		e.rand = rand.Reader
	}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	for i, v := range cfg.PCRs {
		if i < 0 || i >= BootPCRs {
			return nil, fmt.Errorf("nsm emulator: PCR%d: only boot PCRs 0..%d can be configured", i, BootPCRs-1)
		}
		if len(v) != nsm.PCRSize {
			return nil, fmt.Errorf("nsm emulator: PCR%d is %d bytes, want %d", i, len(v), nsm.PCRSize)
		}
		copy(e.pcrs[i][:], v)
	}
	if cfg.Debug {
		for _, i := range debugZeroPCRs {
			e.pcrs[i] = [nsm.PCRSize]byte{}
		}
	}
	for i := range BootPCRs {
		e.locked[i] = true
	}
	return e, nil
}

// Handle executes one raw NSM request and returns the raw response, exactly
// as the device would: errors are {"Error": name} responses, never Go
// errors. Outcomes:
//   - a request over 4096 bytes → InputTooLarge; one DecodeRequest refuses
//     → InvalidOperation (as QEMU's virtio-nsm);
//   - DescribePCR, ExtendPCR, LockPCR with index ≥ 32 → InvalidIndex;
//     ExtendPCR or LockPCR on a locked PCR (0..15 always) → ReadOnlyIndex;
//     ExtendPCR sets PCR = SHA384(PCR ‖ data) and returns it;
//   - LockPCRs with range > 32 → InvalidIndex, else locks [0, range);
//   - DescribeNSM → version 1.0.0, the module ID, max_pcrs 32, the locked
//     PCRs in ascending order, digest SHA384;
//   - Attestation with user_data, nonce or public_key over 1024 bytes →
//     InputTooLarge; otherwise, once the Attestations limiter (if any)
//     lets it through, a document signed by the Issuer whose pcrs are
//     exactly the locked PCRs, timestamp from Clock, the three fields
//     echoed (null when absent); if ctx ends while it waits → InternalError;
//   - GetRandom → 256 bytes from Rand;
//   - a response over 12288 bytes → InputTooLarge (as QEMU); an Issuer or
//     Rand failure → InternalError.
//
// ctx carries values for the logger and bounds the wait for the limiter.
func (e *Emulator) Handle(ctx context.Context, req []byte) []byte {
	resp := e.handle(ctx, req)
	b, err := nsm.EncodeResponse(resp)
	if err == nil && len(b) > nsm.MaxResponseSize {
		e.log.DebugContext(ctx, "nsm emulator: response too large", "op", resp.Name(), "size", len(b))
		resp = nsm.ErrorResponse{Code: nsm.InputTooLarge}
		b, err = nsm.EncodeResponse(resp)
	}
	if err != nil {
		// Unreachable: every response built by handle encodes.
		e.log.ErrorContext(ctx, "nsm emulator: encode response", "err", err)
		b, _ = nsm.EncodeResponse(nsm.ErrorResponse{Code: nsm.InternalError})
	}
	return b
}

func (e *Emulator) fail(ctx context.Context, op string, code nsm.ErrorCode) nsm.Response {
	e.log.DebugContext(ctx, "nsm emulator: request refused", "op", op, "error", code.String())
	return nsm.ErrorResponse{Code: code}
}

func (e *Emulator) handle(ctx context.Context, raw []byte) nsm.Response {
	if len(raw) > nsm.MaxRequestSize {
		return e.fail(ctx, "?", nsm.InputTooLarge)
	}
	req, err := nsm.DecodeRequest(raw)
	if err != nil {
		e.log.DebugContext(ctx, "nsm emulator: undecodable request", "err", err)
		return nsm.ErrorResponse{Code: nsm.InvalidOperation}
	}
	switch r := req.(type) {
	case nsm.DescribePCRRequest:
		if r.Index >= nsm.MaxPCRs {
			return e.fail(ctx, r.Name(), nsm.InvalidIndex)
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		return nsm.DescribePCRResponse{Lock: e.locked[r.Index], Data: clone(e.pcrs[r.Index])}
	case nsm.ExtendPCRRequest:
		if r.Index >= nsm.MaxPCRs {
			return e.fail(ctx, r.Name(), nsm.InvalidIndex)
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		if e.locked[r.Index] {
			return e.fail(ctx, r.Name(), nsm.ReadOnlyIndex)
		}
		h := sha512.New384()
		h.Write(e.pcrs[r.Index][:])
		h.Write(r.Data)
		h.Sum(e.pcrs[r.Index][:0])
		return nsm.ExtendPCRResponse{Data: clone(e.pcrs[r.Index])}
	case nsm.LockPCRRequest:
		if r.Index >= nsm.MaxPCRs {
			return e.fail(ctx, r.Name(), nsm.InvalidIndex)
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		if e.locked[r.Index] {
			return e.fail(ctx, r.Name(), nsm.ReadOnlyIndex)
		}
		e.locked[r.Index] = true
		return nsm.LockPCRResponse{}
	case nsm.LockPCRsRequest:
		if r.Range > nsm.MaxPCRs {
			return e.fail(ctx, r.Name(), nsm.InvalidIndex)
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		for i := range int(r.Range) {
			e.locked[i] = true
		}
		return nsm.LockPCRsResponse{}
	case nsm.DescribeNSMRequest:
		e.mu.Lock()
		defer e.mu.Unlock()
		locked := make([]uint16, 0, nsm.MaxPCRs)
		for i, l := range e.locked {
			if l {
				locked = append(locked, uint16(i))
			}
		}
		return nsm.DescribeNSMResponse{
			VersionMajor: VersionMajor, VersionMinor: VersionMinor, VersionPatch: VersionPatch,
			ModuleID: e.moduleID, MaxPCRs: nsm.MaxPCRs, LockedPCRs: locked, Digest: nsm.DigestSHA384,
		}
	case nsm.AttestationRequest:
		return e.attest(ctx, r)
	case nsm.GetRandomRequest:
		b := make([]byte, RandomSize)
		e.randMu.Lock()
		_, err := io.ReadFull(e.rand, b)
		e.randMu.Unlock()
		if err != nil {
			e.log.ErrorContext(ctx, "nsm emulator: GetRandom: read entropy", "err", err)
			return nsm.ErrorResponse{Code: nsm.InternalError}
		}
		return nsm.GetRandomResponse{Random: b}
	}
	return nsm.ErrorResponse{Code: nsm.InvalidOperation}
}

func (e *Emulator) attest(ctx context.Context, r nsm.AttestationRequest) nsm.Response {
	if len(r.UserData) > nsm.MaxAttestationField || len(r.Nonce) > nsm.MaxAttestationField ||
		len(r.PublicKey) > nsm.MaxAttestationField {
		return e.fail(ctx, r.Name(), nsm.InputTooLarge)
	}
	if e.limiter != nil {
		e.waiting.Add(1)
		d, err := e.limiter.Wait(ctx)
		e.waiting.Add(-1)
		if d > 0 || err != nil {
			e.throttled.Add(1)
		}
		if err != nil {
			e.log.DebugContext(ctx, "nsm emulator: attestation abandoned while throttled", "err", err)
			return nsm.ErrorResponse{Code: nsm.InternalError}
		}
	}
	pcrs := make(map[int][]byte, nsm.MaxPCRs)
	e.mu.Lock()
	for i, l := range e.locked {
		if l {
			pcrs[i] = clone(e.pcrs[i])
		}
	}
	e.mu.Unlock()
	doc, err := e.issuer.Issue(attest.IssueRequest{
		ModuleID:  e.moduleID,
		PCRs:      pcrs,
		UserData:  r.UserData,
		Nonce:     r.Nonce,
		PublicKey: r.PublicKey,
		Timestamp: e.clock(),
	})
	if err != nil {
		if errors.Is(err, attest.ErrTooLarge) {
			return e.fail(ctx, r.Name(), nsm.InputTooLarge)
		}
		e.log.ErrorContext(ctx, "nsm emulator: issue attestation document", "err", err)
		return nsm.ErrorResponse{Code: nsm.InternalError}
	}
	e.attestations.Add(1)
	return nsm.AttestationResponse{Document: doc}
}

func clone(p [nsm.PCRSize]byte) []byte { return append([]byte(nil), p[:]...) }

// Stats returns the emulator's counters.
func (e *Emulator) Stats() Stats {
	return Stats{IdleClosed: e.idleClosed.Load(), Attestations: e.attestations.Load(),
		Throttled: e.throttled.Load(), Waiting: e.waiting.Load()}
}

// Serve accepts connections on l and answers NSM requests on each, one
// goroutine per connection, using the stream framing of [nsm.ReadFrame]
// and [nsm.WriteFrame]: one request frame (≤ 4096 bytes), one response
// frame, repeated until the peer closes. A frame whose length prefix is
// over 4096 gets an InputTooLarge response and the connection is closed (its
// payload is never read); a zero length closes the connection, and so does
// IdleTimeout passing before a whole request frame has arrived. Serve does
// not bound the number of connections: wrap l (internal/connlimit) for that. When ctx
// ends Serve closes l and every connection and returns nil; if Accept fails
// otherwise it closes the connections and returns that error. Serve does
// not return before its connection goroutines have ended.
func (e *Emulator) Serve(ctx context.Context, l net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("nsm emulator: accept: %w", err)
		}
		wg.Go(func() { e.serveConn(ctx, c) })
	}
}

func (e *Emulator) serveConn(ctx context.Context, c net.Conn) {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	for {
		if e.idle > 0 {
			_ = c.SetReadDeadline(time.Now().Add(e.idle))
		}
		req, err := nsm.ReadFrame(c, nsm.MaxRequestSize)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() == nil {
				// Close before counting: a caller that sees the count
				// may rely on the connection being gone.
				c.Close()
				e.idleClosed.Add(1)
				e.log.DebugContext(ctx, "nsm emulator: idle connection closed", "after", e.idle)
				return
			}
			var fe *nsm.FrameSizeError
			if errors.As(err, &fe) && fe.Size > nsm.MaxRequestSize {
				b, _ := nsm.EncodeResponse(nsm.ErrorResponse{Code: nsm.InputTooLarge})
				nsm.WriteFrame(c, b)
			}
			if !errors.Is(err, io.EOF) && ctx.Err() == nil {
				e.log.DebugContext(ctx, "nsm emulator: connection ends", "remote", c.RemoteAddr(), "err", err)
			}
			return
		}
		if err := nsm.WriteFrame(c, e.Handle(ctx, req)); err != nil {
			e.log.DebugContext(ctx, "nsm emulator: write response", "err", err)
			return
		}
	}
}
