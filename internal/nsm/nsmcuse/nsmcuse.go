// Package nsmcuse serves /dev/nsm from user space through CUSE, for the
// microVM world, where the guest kernel has no NSM device: cloister-init
// opens /dev/cuse, and every NSM_IOCTL_RAW on the resulting /dev/nsm is run
// by nsmdev.Ioctl (the Linux driver's semantics) against the caller's
// memory, reached with CUSE's unrestricted-ioctl retry protocol, and
// forwarded to the parent's emulated security module.
//
// # The retry protocol as caller memory
//
// An unrestricted CUSE ioctl reaches the server first without any of the
// caller's memory. The server answers FUSE_IOCTL_RETRY with the ranges the
// kernel must copy in (in iovecs) and may copy out (out iovecs); the kernel
// copies the in ranges and asks again, and copies the final answer's bytes
// to the out ranges in order. A range the kernel cannot read or write makes
// the ioctl fail with EFAULT. [Handler] keeps no state between passes:
//
//	pass 1: nothing          → retry, in: the struct (32 bytes at arg)
//	pass 2: the struct       → EINVAL/EMSGSIZE as the driver, or retry,
//	                           in: struct + request (request.len bytes),
//	                           out: struct + response (min(response.len, 12288))
//	pass 3: struct + request → the module is asked; answer: the struct with
//	                           response.len set, then the response bytes
//
// Each pass runs nsmdev.Ioctl on what it carries; a read of memory the pass
// lacks, or the module call before the out ranges are declared, turns into
// the retry instead of an errno, so the module is asked exactly once, in
// the last pass. A pass whose data does not match the struct it carries
// (another thread changed the struct meanwhile) is retried with the ranges
// of the new struct.
//
// # Where this differs from the driver
//
// Errnos are the driver's in every case (nsmdev's table). The order of the
// final copies is not: the kernel writes the out ranges in order and the
// struct must come first (the response may be shorter than its range), so
// when the response buffer is unwritable the caller's response.len has
// already been updated when EFAULT comes back (the driver leaves it), and
// when the struct is read-only the response bytes are not written (the
// driver writes them before failing). Buffers that overlap the struct end
// with the response's bytes rather than the struct's.
package nsmcuse

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/cloister/cloister/internal/cuse"
	"github.com/cloister/cloister/internal/nsm/nsmdev"
)

// DeviceName is the device's name, /dev/nsm as on Nitro.
const DeviceName = "nsm"

// DeviceMode is the node's mode: 0666, as the nsm driver registers its misc
// device (drivers/misc/nsm.c and AWS's out-of-tree nsm.ko: .mode = 0666).
const DeviceMode = 0o666

// ModuleTimeout bounds one request to the module: the driver's
// NSM_DEFAULT_TIMEOUT_MSECS (120 s), after which the ioctl fails with
// ETIMEDOUT.
const ModuleTimeout = 120 * time.Second

// Handler is the cuse.IoctlHandler of /dev/nsm.
type Handler struct {
	rt      nsmdev.RoundTripper
	timeout time.Duration
}

var _ cuse.IoctlHandler = (*Handler)(nil)

// NewHandler returns a Handler that sends requests through rt (an
// internal/nsm.Stream to the parent's emulated module). rt must be safe
// for concurrent use.
func NewHandler(rt nsmdev.RoundTripper) *Handler {
	return &Handler{rt: rt, timeout: ModuleTimeout}
}

// errNotYet marks an access the current pass cannot serve.
var errNotYet = errors.New("nsmcuse: memory not copied in this pass")

// Ioctl serves one pass of an ioctl on /dev/nsm (see the package
// documentation).
func (h *Handler) Ioctl(ctx context.Context, _ cuse.Header, req *cuse.IoctlIn) cuse.IoctlReply {
	p := newPass(req)
	ctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	errno := nsmdev.Ioctl(ctx, p, req.Cmd, req.Arg, roundTripper{p, h.rt})
	if p.retry {
		return cuse.IoctlReply{Retry: true, In: p.wantIn(), Out: p.wantOut()}
	}
	if errno != 0 {
		return cuse.IoctlReply{Errno: errno}
	}
	return cuse.IoctlReply{Data: p.out[:p.written]}
}

// pass is the caller memory one FUSE_IOCTL carries, as an nsmdev.Memory.
type pass struct {
	arg      uint64
	raw      *nsmdev.Raw // the struct, when this pass carries it
	rawBytes []byte
	request  []byte // the request bytes, when this pass carries them
	outOK    bool   // the out ranges of raw were declared
	out      []byte // the answer: struct, then response range
	written  int    // bytes of out written
	retry    bool   // an access needs another pass
}

func newPass(req *cuse.IoctlIn) *pass {
	p := &pass{arg: req.Arg}
	if len(req.In) < nsmdev.RawSize {
		return p
	}
	var b [nsmdev.RawSize]byte
	copy(b[:], req.In)
	raw := nsmdev.ParseRaw(&b)
	p.raw, p.rawBytes = &raw, req.In[:nsmdev.RawSize]
	if raw.RequestLen <= nsmdev.RequestMaxSize && uint64(len(req.In)) == nsmdev.RawSize+raw.RequestLen {
		p.request = req.In[nsmdev.RawSize:]
	}
	if uint64(req.OutSize) == nsmdev.RawSize+p.responseRange() {
		p.outOK = true
		p.out = make([]byte, req.OutSize)
	}
	return p
}

// responseRange is the length of the response's out range.
func (p *pass) responseRange() uint64 {
	return min(p.raw.ResponseLen, nsmdev.ResponseMaxSize)
}

// wantIn returns the in ranges of the next pass.
func (p *pass) wantIn() []cuse.IOVec {
	v := []cuse.IOVec{{Base: p.arg, Len: nsmdev.RawSize}}
	if p.raw != nil && p.raw.RequestLen > 0 && p.raw.RequestLen <= nsmdev.RequestMaxSize {
		v = append(v, cuse.IOVec{Base: p.raw.RequestAddr, Len: p.raw.RequestLen})
	}
	return v
}

// wantOut returns the out ranges of the next pass: the struct first, since
// the response may be shorter than its range.
func (p *pass) wantOut() []cuse.IOVec {
	if p.raw == nil {
		return nil
	}
	v := []cuse.IOVec{{Base: p.arg, Len: nsmdev.RawSize}}
	if n := p.responseRange(); n > 0 {
		v = append(v, cuse.IOVec{Base: p.raw.ResponseAddr, Len: n})
	}
	return v
}

// ReadAt serves the struct and the request from this pass's data.
func (p *pass) ReadAt(b []byte, addr uint64) error {
	n := uint64(len(b))
	switch {
	case p.raw != nil && addr == p.arg && n == nsmdev.RawSize:
		copy(b, p.rawBytes)
	case p.request != nil && addr == p.raw.RequestAddr && n == uint64(len(p.request)):
		copy(b, p.request)
	default:
		p.retry = true
		return errNotYet
	}
	return nil
}

// WriteAt places b in the answer: the struct at 0, the response after it.
func (p *pass) WriteAt(b []byte, addr uint64) error {
	if !p.outOK {
		p.retry = true
		return errNotYet
	}
	var off uint64
	switch {
	case addr == p.arg && len(b) == nsmdev.RawSize:
		off = 0
	case addr == p.raw.ResponseAddr && uint64(len(b)) <= p.responseRange():
		off = nsmdev.RawSize
	default:
		return fmt.Errorf("nsmcuse: write of %d bytes at %#x outside the declared ranges", len(b), addr)
	}
	copy(p.out[off:], b)
	p.written = max(p.written, int(off)+len(b))
	return nil
}

// roundTripper asks the module only in the pass that has everything.
type roundTripper struct {
	p  *pass
	rt nsmdev.RoundTripper
}

func (r roundTripper) RoundTrip(ctx context.Context, req []byte) ([]byte, error) {
	if r.p.request == nil && len(req) > 0 || !r.p.outOK {
		r.p.retry = true
		return nil, errNotYet
	}
	return r.rt.RoundTrip(ctx, req)
}

// Config says where and how [Serve] serves /dev/nsm.
type Config struct {
	// Open opens the CUSE channel; nil opens cuse.DevicePath (the kernel's
	// cuse module must be loaded).
	Open func() (io.ReadWriteCloser, error)
	// DevDir is where the kernel makes the node; "" means /dev.
	DevDir string
	// Module carries requests to the security module (required).
	Module nsmdev.RoundTripper
	// Logf receives diagnostics; nil discards them.
	Logf func(format string, args ...any)
	// Ready, when non-nil, is called once the device exists.
	Ready func()
}

// Serve creates /dev/nsm through CUSE with mode [DeviceMode] and serves it
// with a [Handler] over cfg.Module until ctx ends or the channel fails,
// and returns what stopped it.
func Serve(ctx context.Context, cfg Config) error {
	if cfg.Module == nil {
		return errors.New("nsmcuse: no security module to forward requests to")
	}
	open := cfg.Open
	if open == nil {
		open = func() (io.ReadWriteCloser, error) { return os.OpenFile(cuse.DevicePath, os.O_RDWR, 0) }
	}
	ch, err := open()
	if err != nil {
		return fmt.Errorf("nsmcuse: opening the CUSE channel: %w", err)
	}
	defer ch.Close()
	s, err := cuse.Init(ch, cuse.Config{Name: DeviceName, Mode: DeviceMode, DevDir: cfg.DevDir, Handler: NewHandler(cfg.Module), Logf: cfg.Logf})
	if err != nil {
		return fmt.Errorf("nsmcuse: creating /dev/%s: %w", DeviceName, err)
	}
	if cfg.Ready != nil {
		cfg.Ready()
	}
	// The channel is non-blocking (os.OpenFile puts character devices that
	// support poll on the runtime's poller), so closing it ends Serve's read.
	stop := context.AfterFunc(ctx, func() { ch.Close() })
	defer stop()
	return s.Serve(ctx)
}
