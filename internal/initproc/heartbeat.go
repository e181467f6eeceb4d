package initproc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/cloister/cloister/internal/wellknown"
)

const (
	// ParentCID is the vsock context ID of the parent instance.
	ParentCID = wellknown.ParentCID
	// HeartbeatPort is the parent's vsock port for the boot heartbeat.
	HeartbeatPort = wellknown.HeartbeatPort
	// HeartbeatByte is the byte init sends and the parent echoes.
	HeartbeatByte = 0xB7
)

// ErrHeartbeat means the boot heartbeat to the parent failed: no connection,
// no answer, or a wrong answer.
var ErrHeartbeat = errors.New("initproc: heartbeat failed")

// Dialer opens a stream to the parent's heartbeat port.
type Dialer func(ctx context.Context) (Conn, error)

// HeartbeatConfig bounds the heartbeat. The zero value uses the defaults.
type HeartbeatConfig struct {
	// Attempts is how many times to try to connect; default 10. The
	// virtio-vsock device can appear shortly after init starts.
	Attempts int
	// Backoff is the wait after the first failed connect; it doubles after
	// each further failure up to MaxBackoff. Defaults 50 ms and 2 s.
	Backoff, MaxBackoff time.Duration
	// Timeout bounds the whole heartbeat, connects included; default 60 s.
	Timeout time.Duration
}

func (c HeartbeatConfig) withDefaults() HeartbeatConfig {
	if c.Attempts <= 0 {
		c.Attempts = 10
	}
	if c.Backoff <= 0 {
		c.Backoff = 50 * time.Millisecond
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 2 * time.Second
	}
	if c.Timeout <= 0 {
		c.Timeout = 60 * time.Second
	}
	return c
}

// Heartbeat tells the parent that the enclave booted: it connects with dial
// (retrying failed connects with exponential backoff), writes
// [HeartbeatByte], reads one byte and checks that it is HeartbeatByte. Every
// failure — all connects failed, a write or read error, EOF, a different
// byte, ctx cancelled or cfg.Timeout passed — is reported as [ErrHeartbeat]
// wrapping the cause.
func Heartbeat(ctx context.Context, dial Dialer, cfg HeartbeatConfig) error {
	cfg = cfg.withDefaults()
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()

	conn, err := dialRetry(ctx, dial, cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	if d, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(d)
	}
	// Unblock the I/O below when ctx is cancelled before its deadline.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if _, err := conn.Write([]byte{HeartbeatByte}); err != nil {
		return fmt.Errorf("%w: sending 0x%02X: %w", ErrHeartbeat, HeartbeatByte, ctxCause(ctx, err))
	}
	var b [1]byte
	if _, err := io.ReadFull(conn, b[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("%w: the parent closed the connection without answering: %w", ErrHeartbeat, err)
		}
		return fmt.Errorf("%w: waiting for the parent's answer: %w", ErrHeartbeat, ctxCause(ctx, err))
	}
	if b[0] != HeartbeatByte {
		return fmt.Errorf("%w: the parent answered 0x%02X, want 0x%02X", ErrHeartbeat, b[0], HeartbeatByte)
	}
	return nil
}

// ctxCause reports an I/O error caused by ctx as ctx's error. The
// connection's deadline equals ctx's, so an I/O timeout may be seen just
// before ctx.Err() is set.
func ctxCause(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w (%v)", cerr, err)
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("%w (%v)", context.DeadlineExceeded, err)
	}
	return err
}

func dialRetry(ctx context.Context, dial Dialer, cfg HeartbeatConfig) (Conn, error) {
	wait := cfg.Backoff
	var last error
	for attempt := 1; ; attempt++ {
		conn, err := dial(ctx)
		if err == nil {
			return conn, nil
		}
		last = err
		if attempt >= cfg.Attempts {
			break
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%w: connecting to the parent (attempt %d: %v): %w", ErrHeartbeat, attempt, last, ctx.Err())
		case <-t.C:
		}
		wait = min(2*wait, cfg.MaxBackoff)
	}
	return nil, fmt.Errorf("%w: connecting to the parent failed %d times, last: %w", ErrHeartbeat, cfg.Attempts, last)
}
