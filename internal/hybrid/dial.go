package hybrid

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"

	"github.com/mdlayher/vsock"
)

// DialConfig holds the optional settings of [Dial]. The zero value (or a nil
// pointer) is ready to use.
type DialConfig struct {
	// LocalCID is the context ID reported by the connection's LocalAddr.
	// Zero means ParentCID (3), the parent's CID in Cloister. (Firecracker's
	// guests see the host as CID 2; set 2 to report that.)
	LocalCID uint32
	// RemoteCID is the enclave's context ID, reported by RemoteAddr and in
	// errors. Zero means unknown, reported as AnyCID.
	RemoteCID uint32
	// HandshakeTimeout bounds one attempt: connecting to the Unix socket,
	// writing the request and reading "OK <n>\n". Zero means 5 s. The
	// context's deadline, if earlier, wins.
	HandshakeTimeout time.Duration
	// RetryDelay is the wait after the first failed attempt; it doubles
	// after each further failure up to RetryMaxDelay. Zero means 10 ms.
	RetryDelay time.Duration
	// RetryMaxDelay caps the wait between attempts. Zero means 250 ms.
	RetryMaxDelay time.Duration
	// MaxAttempts limits the number of attempts; zero means no limit
	// (retry until the context ends). 1 disables retries.
	MaxAttempts int
}

func (c *DialConfig) orDefault() DialConfig {
	var d DialConfig
	if c != nil {
		d = *c
	}
	if d.LocalCID == 0 {
		d.LocalCID = ParentCID
	}
	if d.RemoteCID == 0 {
		d.RemoteCID = AnyCID
	}
	if d.HandshakeTimeout <= 0 {
		d.HandshakeTimeout = 5 * time.Second
	}
	if d.RetryDelay <= 0 {
		d.RetryDelay = 10 * time.Millisecond
	}
	if d.RetryMaxDelay <= 0 {
		d.RetryMaxDelay = 250 * time.Millisecond
	}
	if d.RetryMaxDelay < d.RetryDelay {
		d.RetryMaxDelay = d.RetryDelay
	}
	return d
}

// Dial connects to port on the far side of the hybrid-vsock CONNECT socket
// udsPath (a Firecracker or cloud-hypervisor uds_path, or a [Server]'s
// socket). One attempt connects to udsPath, writes "CONNECT <port>\n" in a
// single write, and reads the reply one byte at a time up to '\n' (at most
// [MaxLineLen] bytes, so no byte of the stream that follows is consumed); the
// reply must parse with [ParseOK].
//
// Failed attempts are retried with exponential backoff while ctx lasts
// (bounded by cfg.MaxAttempts), because a VMM delivers the request only once
// the guest's vsock driver is up and the enclave may not listen yet:
//   - the socket file missing or refusing connections, or the connection
//     closed before any reply byte: class [ErrNoListener];
//   - a reset (ECONNRESET, EPIPE) before the reply: class [ErrReset];
//   - no complete reply within the attempt's timeout: class [ErrTimeout].
//
// A malformed reply ([ErrProtocol]) and other errors (permissions, a path that
// is not a socket) are not retried. When ctx ends, Dial returns the class of
// the last complete attempt with ctx.Err() wrapped as well; if ctx ends
// during the first attempt the class is [ErrTimeout] for a deadline and
// there is none for a cancellation. All errors are *net.OpError (Op "dial", Net
// "vsock", Addr the remote vsock address) whose Err is an [*Error] whenever
// the failure has a class.
//
// The returned connection's LocalAddr is (cfg.LocalCID, n) where n is the
// number from the reply, and its RemoteAddr is (cfg.RemoteCID, port).
func Dial(ctx context.Context, udsPath string, port uint32, cfg *DialConfig) (*Conn, error) {
	c := cfg.orDefault()
	remote := &vsock.Addr{ContextID: c.RemoteCID, Port: port}
	fail := func(err error) error {
		return &net.OpError{Op: "dial", Net: "vsock", Addr: remote, Err: err}
	}
	delay := c.RetryDelay
	var last error
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			if last == nil {
				return nil, fail(Classify(ctx, err, port))
			}
			return nil, fail(giveUp(last, err, attempt-1))
		}
		uc, n, err := dialOnce(ctx, udsPath, port, c.HandshakeTimeout)
		if err == nil {
			return NewConn(uc, &vsock.Addr{ContextID: c.LocalCID, Port: n}, remote), nil
		}
		var he *Error
		if !errors.As(err, &he) || he.Class == ErrProtocol {
			return nil, fail(err)
		}
		if ctxErr := ctx.Err(); ctxErr != nil && he.Class == ErrTimeout && last != nil {
			// The context ended during this attempt: the previous, complete
			// attempt says more about the peer.
			return nil, fail(giveUp(last, ctxErr, attempt))
		}
		if ctxErr := ctx.Err(); ctxErr != nil && he.Class == ErrTimeout && !errors.Is(ctxErr, context.DeadlineExceeded) {
			// Cancelled during the first attempt: not a timeout.
			return nil, fail(ctxErr)
		}
		last = err
		if c.MaxAttempts > 0 && attempt >= c.MaxAttempts {
			return nil, fail(err)
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fail(giveUp(last, ctx.Err(), attempt))
		case <-t.C:
		}
		delay = min(2*delay, c.RetryMaxDelay)
	}
}

// giveUp combines the last attempt's classified error with the context error
// that ended the retries.
func giveUp(last, ctxErr error, attempts int) error {
	var he *Error
	if !errors.As(last, &he) {
		return last
	}
	return &Error{Class: he.Class, Port: he.Port,
		Err: fmt.Errorf("%w after %d attempt(s); last: %w", ctxErr, attempts, he.Err)}
}

// dialOnce performs one connect + handshake attempt. Its errors are *Error
// (classified) or, for non-retryable local failures, the raw error.
func dialOnce(ctx context.Context, udsPath string, port uint32, timeout time.Duration) (*net.UnixConn, uint32, error) {
	actx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(actx, "unix", udsPath)
	if err != nil {
		if errors.Is(err, syscall.EAGAIN) {
			// The server's accept backlog is full: busy, try again.
			return nil, 0, &Error{Class: ErrTimeout, Port: port, Err: err}
		}
		if ce := Classify(actx, err, port); ce != err {
			return nil, 0, ce
		}
		return nil, 0, err
	}
	uc := nc.(*net.UnixConn)
	dl, _ := actx.Deadline()
	if err := uc.SetDeadline(dl); err != nil {
		uc.Close()
		return nil, 0, err
	}
	// Cancellation (without a deadline) must interrupt the blocking I/O too.
	stop := context.AfterFunc(actx, func() { uc.SetDeadline(time.Unix(1, 0)) })
	n, err := handshake(actx, uc, port)
	if !stop() && err == nil {
		// The context ended while the handshake finished: the deadline may be
		// set under our feet, so do not hand out the connection.
		err = &Error{Class: ErrTimeout, Port: port, Err: context.Cause(actx)}
	}
	if err == nil {
		err = uc.SetDeadline(time.Time{})
	}
	if err != nil {
		uc.Close()
		return nil, 0, err
	}
	return uc, n, nil
}

func handshake(ctx context.Context, uc *net.UnixConn, port uint32) (uint32, error) {
	req := AppendConnect(make([]byte, 0, MaxLineLen), port)
	if _, err := uc.Write(req); err != nil {
		if errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) {
			return 0, &Error{Class: ErrReset, Port: port, Err: err}
		}
		return 0, Classify(ctx, err, port)
	}
	line, err := ReadLine(uc)
	switch {
	case err == io.EOF:
		return 0, &Error{Class: ErrNoListener, Port: port, Err: errors.New("connection closed without a reply")}
	case errors.Is(err, ErrProtocol):
		return 0, &Error{Class: ErrProtocol, Port: port, Err: err}
	case err != nil:
		return 0, Classify(ctx, err, port)
	}
	n, err := ParseOK(line)
	if err != nil {
		return 0, &Error{Class: ErrProtocol, Port: port, Err: fmt.Errorf("reply %q: %w", line, err)}
	}
	return n, nil
}
