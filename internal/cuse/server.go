package cuse

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"
)

// DevicePath is where Linux's cuse.ko creates the CUSE channel device (misc
// minor 203).
const DevicePath = "/dev/cuse"

// IOVec is struct fuse_ioctl_iovec: a range of the calling process's
// memory.
type IOVec struct {
	Base, Len uint64
}

// IoctlReply answers one FUSE_IOCTL. With Errno set the ioctl fails with
// it. With Retry set the kernel copies the caller's memory named by In and
// asks again with those bytes in [IoctlIn].In (and the total length of Out
// in OutSize); a later final answer's Data is then written to the Out
// ranges, in order, and must not exceed them. Otherwise the ioctl returns
// Result and Data is written to the Out ranges of the last retry.
type IoctlReply struct {
	Errno   syscall.Errno
	Result  int32
	Data    []byte
	Retry   bool
	In, Out []IOVec
}

// IoctlHandler serves the device's ioctls. Ioctl is called concurrently,
// once per FUSE_IOCTL (so once per pass of a retried ioctl); caller is the
// request's header (the calling thread's PID, UID and GID). ctx ends when
// the server stops.
type IoctlHandler interface {
	Ioctl(ctx context.Context, caller Header, req *IoctlIn) IoctlReply
}

// Config describes the device.
type Config struct {
	// Name is the device's name: the kernel creates /dev/<Name>. Required;
	// no '/', at most 64 bytes.
	Name string
	// Mode, when non-zero, is given to the device node after the kernel
	// made it (devtmpfs creates CUSE nodes 0600 root:root).
	Mode os.FileMode
	// DevDir is where the node appears; "" means /dev.
	DevDir string
	// Handler serves ioctls; nil fails every ioctl with ENOTTY.
	Handler IoctlHandler
	// Logf receives diagnostics; nil discards them.
	Logf func(format string, args ...any)
	// MaxInFlight bounds the ioctls handled at once (more wait in the
	// kernel's queue); 0 means 64.
	MaxInFlight int
	// NodeTimeout bounds the wait for the node after CUSE_INIT; 0 means 5 s.
	NodeTimeout time.Duration
}

// Server is one CUSE device being served.
type Server struct {
	ch   io.ReadWriter
	cfg  Config
	sem  chan struct{}
	logf func(format string, args ...any)

	mu     sync.Mutex
	nextFH uint64
	open   map[uint64]bool
}

// Init answers the kernel's CUSE_INIT on ch (an open /dev/cuse, or in
// tests anything whose Reads return one request and Writes send one
// answer), so that the kernel creates the device, then waits for its node
// under cfg.DevDir and sets cfg.Mode on it. Errors: a malformed config, a
// first request that is not CUSE_INIT, a kernel protocol older than 7.16,
// I/O on ch, or the node not appearing in time (the kernel refused the
// device: the name is taken, or no device number is free).
func Init(ch io.ReadWriter, cfg Config) (*Server, error) {
	if cfg.Name == "" || len(cfg.Name) > 64 || containsAny(cfg.Name, "/\x00=") {
		return nil, fmt.Errorf("cuse: device name %q: want 1..64 bytes without '/', '=' or NUL", cfg.Name)
	}
	s := &Server{ch: ch, cfg: cfg, open: map[uint64]bool{}, logf: cfg.Logf}
	if s.logf == nil {
		s.logf = func(string, ...any) {}
	}
	n := cfg.MaxInFlight
	if n <= 0 {
		n = 64
	}
	s.sem = make(chan struct{}, n)

	buf := make([]byte, bufferSize)
	req, err := s.read(buf)
	if err != nil {
		return nil, fmt.Errorf("cuse: reading CUSE_INIT: %w", err)
	}
	if req.Init == nil {
		_ = s.write(errorReply(req.Unique, -int32(syscall.EPROTO)))
		return nil, fmt.Errorf("%w: first request has opcode %d, want CUSE_INIT", ErrProtocol, req.Opcode)
	}
	if req.Init.Major != kernelVersion || req.Init.Minor < minMinor {
		_ = s.write(errorReply(req.Unique, -int32(syscall.EPROTO)))
		return nil, fmt.Errorf("cuse: kernel speaks FUSE %d.%d; want 7.%d or newer", req.Init.Major, req.Init.Minor, minMinor)
	}
	if err := s.write(initReply(req.Unique, min(req.Init.Minor, maxMinor), cfg.Name)); err != nil {
		return nil, fmt.Errorf("cuse: answering CUSE_INIT: %w", err)
	}
	if err := s.waitNode(); err != nil {
		return nil, err
	}
	return s, nil
}

// bufferSize is the read buffer: a request is at most a header, an ioctl's
// fixed part and the in data this package's handlers ask for, far below;
// the kernel wants at least FUSE_MIN_READ_BUFFER and max_write plus headers.
const bufferSize = 64<<10 + 4096

func containsAny(s, chars string) bool {
	for i := 0; i < len(s); i++ {
		for j := 0; j < len(chars); j++ {
			if s[i] == chars[j] {
				return true
			}
		}
	}
	return false
}

// waitNode waits for DevDir/Name and chmods it.
func (s *Server) waitNode() error {
	dir := s.cfg.DevDir
	if dir == "" {
		dir = "/dev"
	}
	path := dir + "/" + s.cfg.Name
	timeout := s.cfg.NodeTimeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	deadline := time.Now().Add(timeout)
	for {
		_, err := os.Stat(path)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cuse: the kernel did not create %s after CUSE_INIT (is the name taken? see the kernel log): %w", path, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if s.cfg.Mode != 0 {
		if err := os.Chmod(path, s.cfg.Mode); err != nil {
			return fmt.Errorf("cuse: setting the mode of %s: %w", path, err)
		}
	}
	return nil
}

// read reads and decodes one request into buf.
func (s *Server) read(buf []byte) (Request, error) {
	for {
		n, err := s.ch.Read(buf)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			return Request{}, err
		}
		if n == 0 {
			return Request{}, io.EOF
		}
		return ParseRequest(buf[:n])
	}
}

// write sends one answer. ENOENT (the request is gone: its caller was
// killed) is not an error.
func (s *Server) write(b []byte) error {
	_, err := s.ch.Write(b)
	if errors.Is(err, syscall.ENOENT) {
		return nil
	}
	return err
}

// Serve answers requests until reading ch fails (ENODEV once the channel is
// closed or the connection aborted), which it returns, or ctx ends (it then
// returns ctx.Err() after the next request; close ch to stop it at once).
// Malformed requests are logged and skipped. Handlers still running get a
// cancelled ctx when Serve returns.
func (s *Server) Serve(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	buf := make([]byte, bufferSize)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		req, err := s.read(buf)
		if errors.Is(err, ErrProtocol) {
			s.logf("cuse: %v", err)
			if req.Len != 0 {
				_ = s.write(errorReply(req.Unique, -int32(syscall.EIO)))
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("cuse: reading requests: %w", err)
		}
		s.handle(ctx, req)
	}
}

// handle answers one request; ioctls in their own goroutine.
func (s *Server) handle(ctx context.Context, req Request) {
	var out []byte
	switch {
	case req.Opcode == opForget || req.Opcode == opBatchForget:
		return // never answered
	case req.Open != nil:
		s.mu.Lock()
		s.nextFH++
		fh := s.nextFH
		s.open[fh] = true
		s.mu.Unlock()
		out = openReply(req.Unique, fh)
	case req.Release != nil:
		s.mu.Lock()
		delete(s.open, req.Release.FH)
		s.mu.Unlock()
		out = errorReply(req.Unique, 0)
	case req.Ioctl != nil:
		io := *req.Ioctl
		io.In = append([]byte(nil), io.In...) // buf is reused
		select {
		case s.sem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		go func() {
			defer func() { <-s.sem }()
			if err := s.write(s.ioctl(ctx, req.Header, &io)); err != nil {
				s.logf("cuse: answering ioctl %#x: %v", io.Cmd, err)
			}
		}()
		return
	case req.Opcode == opRead || req.Opcode == opWrite:
		out = errorReply(req.Unique, -int32(syscall.EINVAL))
	default: // FUSE_INTERRUPT (no more, please), FUSE_POLL, FUSE_FLUSH, …
		out = errorReply(req.Unique, -int32(syscall.ENOSYS))
	}
	if err := s.write(out); err != nil {
		s.logf("cuse: answering request %d (opcode %d): %v", req.Unique, req.Opcode, err)
	}
}

// ioctl runs the handler and checks its answer against what the kernel
// accepts, turning a bad answer into EIO (as the kernel itself would).
func (s *Server) ioctl(ctx context.Context, h Header, io *IoctlIn) []byte {
	if s.cfg.Handler == nil {
		return errorReply(h.Unique, -int32(syscall.ENOTTY))
	}
	r := s.cfg.Handler.Ioctl(ctx, h, io)
	switch {
	case r.Errno != 0:
		return errorReply(h.Unique, -int32(r.Errno))
	case r.Retry && len(r.In)+len(r.Out) > ioctlMaxIOV:
		s.logf("cuse: ioctl %#x: handler asked for %d iovecs, the kernel allows %d", io.Cmd, len(r.In)+len(r.Out), ioctlMaxIOV)
		return errorReply(h.Unique, -int32(syscall.EIO))
	case !r.Retry && uint64(len(r.Data)) > uint64(io.OutSize):
		s.logf("cuse: ioctl %#x: handler answered %d bytes for %d bytes of out iovecs", io.Cmd, len(r.Data), io.OutSize)
		return errorReply(h.Unique, -int32(syscall.EIO))
	}
	return ioctlReply(h.Unique, r)
}

// OpenHandles returns how many opens of the device are not yet released.
func (s *Server) OpenHandles() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.open)
}
