package nsm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// Stream is a [Transport] to an emulated security module over a stream
// connection (vsock or a Unix socket): each request and each response is
// one frame (see [WriteFrame]). Requests are sent one at a time; Stream is
// safe for concurrent use.
//
// The connection is dialled lazily on the first RoundTrip, and again when
// the one kept from an earlier request turns out, before use, to have been
// closed by the peer (the emulated module closes idle connections). After
// any failure (dial, write, read, bad frame, ctx ended mid-exchange) the
// connection is closed and the next RoundTrip dials a new one. When an
// exchange fails on a connection kept from an earlier request (the peer
// may have restarted meanwhile) and ctx is still live, the request is sent
// once more on a fresh connection, unless it is ExtendPCR or LockPCR,
// which are not idempotent: those errors reach the caller.
type Stream struct {
	dial func(ctx context.Context) (Conn, error)
	sem  chan struct{} // one token: the right to run an exchange

	mu     sync.Mutex // guards conn and closed
	conn   Conn       // nil when not connected
	closed bool
}

var _ Transport = (*Stream)(nil)

// Conn is a connection a [Stream] uses: a net.Conn, or an *os.File
// holding a socket (which cloister-init uses, as it does not link package
// net). When it also implements syscall.Conn, Stream peeks at it before
// reusing it (see [Stream]).
type Conn interface {
	io.ReadWriteCloser
	SetDeadline(t time.Time) error
}

// NewStream returns a Stream that obtains connections from dial (a
// func(ctx) (net.Conn, error) fits).
func NewStream[C Conn](dial func(ctx context.Context) (C, error)) *Stream {
	s := &Stream{sem: make(chan struct{}, 1)}
	s.dial = func(ctx context.Context) (Conn, error) {
		c, err := dial(ctx)
		if err != nil {
			return nil, err
		}
		return c, nil
	}
	s.sem <- struct{}{}
	return s
}

// RoundTrip writes req as one frame and reads one response frame of at
// most [MaxResponseSize] bytes. It refuses an empty request with
// ErrInvalidArgument and one over [MaxRequestSize] with a [*LimitError]
// before touching the connection. ctx bounds the wait for the connection,
// the dial, and the exchange (its deadline becomes the connection's
// deadline; cancellation interrupts blocked I/O and the error then wraps
// ctx.Err()). After Close it fails with [ErrClosed].
func (s *Stream) RoundTrip(ctx context.Context, req []byte) ([]byte, error) {
	if len(req) == 0 {
		return nil, fmt.Errorf("nsm: stream: empty request: %w", ErrInvalidArgument)
	}
	if len(req) > MaxRequestSize {
		return nil, &LimitError{Op: "stream", Field: "request", Value: len(req), Max: MaxRequestSize, Code: InputTooLarge}
	}
	select {
	case <-s.sem:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { s.sem <- struct{}{} }()

	resp, reused, err := s.try(ctx, req)
	if err != nil && reused && ctx.Err() == nil && !errors.Is(err, ErrClosed) && idempotent(req) {
		// The connection was idle since an earlier request and may have
		// been closed by a restarted peer: retry once on a fresh one.
		resp, _, err = s.try(ctx, req)
	}
	return resp, err
}

// try runs one exchange, dialling if needed, and reports whether it used a
// connection left over from an earlier request. The caller holds the sem
// token.
func (s *Stream) try(ctx context.Context, req []byte) ([]byte, bool, error) {
	s.mu.Lock()
	reused := s.conn != nil
	s.mu.Unlock()
	c, err := s.connect(ctx)
	if err != nil {
		return nil, false, err
	}
	resp, keep, err := exchange(ctx, c, req)
	if !keep {
		s.mu.Lock()
		if s.conn == c {
			s.conn = nil
		}
		closed := s.closed
		s.mu.Unlock()
		c.Close()
		if err != nil && closed {
			return nil, reused, fmt.Errorf("%w (%w)", ErrClosed, err)
		}
	}
	if err != nil {
		return nil, reused, err
	}
	return resp, reused, nil
}

// idempotent reports whether sending req twice has the same effect as
// sending it once: everything but ExtendPCR and LockPCR (a second LockPCR
// would fail with ReadOnlyIndex).
func idempotent(req []byte) bool {
	r, err := DecodeRequest(req)
	if err != nil {
		return false
	}
	switch r.(type) {
	case ExtendPCRRequest, LockPCRRequest:
		return false
	}
	return true
}

// connect returns the current connection or dials one. The caller holds
// the sem token.
func (s *Stream) connect(ctx context.Context) (Conn, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrClosed
	}
	c := s.conn
	s.mu.Unlock()
	if c != nil {
		if !stale(c) {
			return c, nil
		}
		// Closed by the peer while idle: dial afresh, so that even a
		// request that cannot be retried (ExtendPCR, LockPCR) goes out.
		s.mu.Lock()
		if s.conn == c {
			s.conn = nil
		}
		s.mu.Unlock()
		c.Close()
	}
	c, err := s.dial(ctx)
	if err != nil {
		return nil, fmt.Errorf("nsm: stream: connect to the security module: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		c.Close()
		return nil, ErrClosed
	}
	s.conn = c
	return c, nil
}

// exchange runs one request/response on c under ctx and reports whether c
// may be used again.
func exchange(ctx context.Context, c Conn, req []byte) (resp []byte, keep bool, err error) {
	dl, hasDL := ctx.Deadline() // zero when none: clears an earlier deadline
	if err := c.SetDeadline(dl); err != nil {
		return nil, false, fmt.Errorf("nsm: stream: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	err = WriteFrame(c, req)
	if err == nil {
		resp, err = ReadFrame(c, MaxResponseSize)
	}
	if !stop() {
		// ctx ended and its deadline in the past may still hit c.
		if err == nil {
			return resp, false, nil
		}
		return nil, false, fmt.Errorf("nsm: stream: %w", ctx.Err())
	}
	if err != nil {
		if hasDL && errors.Is(err, os.ErrDeadlineExceeded) {
			err = context.DeadlineExceeded
		}
		return nil, false, fmt.Errorf("nsm: stream: %w", err)
	}
	return resp, true, nil
}

// Close closes the current connection, if any, which interrupts an
// exchange in progress, and makes every later RoundTrip fail with
// [ErrClosed].
func (s *Stream) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.conn == nil {
		return nil
	}
	err := s.conn.Close()
	s.conn = nil
	return err
}
