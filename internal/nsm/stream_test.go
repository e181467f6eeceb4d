package nsm_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloister/cloister/internal/nsm"
	"github.com/cloister/cloister/parent/nsmemu"
)

func unixListener(t *testing.T) (net.Listener, func(ctx context.Context) (net.Conn, error), *atomic.Int32) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "vsock_5133133")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	var dials atomic.Int32
	dial := func(ctx context.Context) (net.Conn, error) {
		dials.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}
	return l, dial, &dials
}

// fakeServer answers frames on l with handle; handle returns nil to close
// the connection without answering. With oneShot it closes every
// connection after its first answer, like a peer that restarts.
func fakeServer(t *testing.T, l net.Listener, oneShot bool, handle func(n int, req []byte) []byte) {
	t.Helper()
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	var count atomic.Int32
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				for {
					req, err := nsm.ReadFrame(c, nsm.MaxRequestSize)
					if err != nil {
						return
					}
					resp := handle(int(count.Add(1)), req)
					if resp == nil {
						return
					}
					if err := nsm.WriteFrame(c, resp); err != nil || oneShot {
						return
					}
				}
			})
		}
	})
}

func TestStreamWithEmulator(t *testing.T) {
	ctx := context.Background()
	l, dial, dials := unixListener(t)
	e, _ := newTestEmulator(t, nsmemu.Config{})
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- e.Serve(sctx, l) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()

	s := nsm.NewStream(dial)
	defer s.Close()
	c := nsm.NewClient(s)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for range 25 {
				p, err := c.DescribePCR(ctx, g)
				if err != nil || !p.Locked || len(p.Value) != 48 {
					t.Errorf("DescribePCR(%d) = %+v, %v", g, p, err)
					return
				}
				if _, err := c.ExtendPCR(ctx, 16+g, []byte{byte(g)}); err != nil {
					t.Errorf("ExtendPCR: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	if n := dials.Load(); n != 1 {
		t.Fatalf("%d dials for 400 sequential requests on one Stream, want 1", n)
	}
}

func TestStreamReconnects(t *testing.T) {
	ctx := context.Background()
	l, dial, dials := unixListener(t)
	lock, _ := nsm.EncodeResponse(nsm.LockPCRResponse{})
	rnd, _ := nsm.EncodeResponse(nsm.GetRandomResponse{Random: []byte{1}})
	// The server closes the connection instead of answering requests 2
	// and 4 (a peer that fails in the middle of an exchange).
	fakeServer(t, l, false, func(n int, req []byte) []byte {
		if n == 2 || n == 4 {
			return nil
		}
		if bytes.Equal(req, mustEncode(t, nsm.GetRandomRequest{})) {
			return rnd
		}
		return lock
	})
	s := nsm.NewStream(dial)
	defer s.Close()
	c := nsm.NewClient(s)
	for i := range 2 {
		if _, err := c.GetRandom(ctx); err != nil {
			t.Fatalf("GetRandom %d: %v", i, err)
		}
	}
	if n := dials.Load(); n != 2 {
		t.Fatalf("%d dials, want 2 (the idempotent request retried on a fresh connection)", n)
	}
	// LockPCR is not idempotent: the failure reaches the caller, the next
	// request reconnects.
	if err := c.LockPCR(ctx, 16); err == nil {
		t.Fatal("LockPCR on a connection the peer closed mid-exchange succeeded")
	}
	if err := c.LockPCR(ctx, 16); err != nil {
		t.Fatalf("LockPCR after reconnect: %v", err)
	}
	if n := dials.Load(); n != 3 {
		t.Fatalf("%d dials, want 3", n)
	}
}

// TestStreamRedialsAfterIdleClose: a connection the peer closed while it
// was idle (the emulated module's idle timeout) is noticed before use, so
// even a non-idempotent request goes out on a fresh connection.
func TestStreamRedialsAfterIdleClose(t *testing.T) {
	ctx := context.Background()
	l, dial, dials := unixListener(t)
	lock, _ := nsm.EncodeResponse(nsm.LockPCRResponse{})
	closed := make(chan struct{}, 4)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			if _, err := nsm.ReadFrame(c, nsm.MaxRequestSize); err == nil {
				_ = nsm.WriteFrame(c, lock)
			}
			c.Close()
			closed <- struct{}{}
		}
	}()
	s := nsm.NewStream(dial)
	defer s.Close()
	c := nsm.NewClient(s)
	for i := range 3 {
		if err := c.LockPCR(ctx, 16+i); err != nil {
			t.Fatalf("LockPCR %d: %v", i, err)
		}
		<-closed
	}
	if n := dials.Load(); n != 3 {
		t.Fatalf("%d dials, want 3", n)
	}
}

func mustEncode(t *testing.T, r nsm.Request) []byte {
	t.Helper()
	b, err := nsm.EncodeRequest(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestStreamDeadlineAndCancel(t *testing.T) {
	l, dial, dials := unixListener(t)
	release := make(chan struct{})
	lock, _ := nsm.EncodeResponse(nsm.LockPCRResponse{})
	fakeServer(t, l, false, func(n int, req []byte) []byte {
		if n == 1 || n == 2 {
			<-release // never answers in time
		}
		return lock
	})
	defer close(release)
	s := nsm.NewStream(dial)
	defer s.Close()
	c := nsm.NewClient(s)

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	err := c.LockPCR(ctx, 16)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("LockPCR past the deadline = %v, want context.DeadlineExceeded", err)
	}
	ctx, cancel = context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)
	err = c.LockPCR(ctx, 16)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled LockPCR = %v, want context.Canceled", err)
	}
	if err := c.LockPCR(context.Background(), 16); err != nil {
		t.Fatalf("LockPCR on a fresh connection: %v", err)
	}
	if n := dials.Load(); n != 3 {
		t.Fatalf("%d dials, want 3 (each failed exchange drops its connection)", n)
	}
}

func TestStreamBadFramesAndClose(t *testing.T) {
	ctx := context.Background()
	l, dial, _ := unixListener(t)
	// A server that answers with a frame length over the response limit.
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if _, err := nsm.ReadFrame(c, nsm.MaxRequestSize); err != nil {
			return
		}
		c.Write([]byte{0, 0, 0x30, 0x01}) // 12289
		io.Copy(io.Discard, c)
	})
	s := nsm.NewStream(dial)
	_, err := s.RoundTrip(ctx, mustEncode(t, nsm.LockPCRRequest{Index: 16}))
	var fe *nsm.FrameSizeError
	if !errors.As(err, &fe) || fe.Size != 12289 {
		t.Fatalf("oversized response frame → %v, want FrameSizeError", err)
	}
	if _, err := s.RoundTrip(ctx, nil); !errors.Is(err, nsm.ErrInvalidArgument) {
		t.Fatalf("empty request → %v", err)
	}
	if _, err := s.RoundTrip(ctx, make([]byte, nsm.MaxRequestSize+1)); !errors.Is(err, nsm.ErrInputTooLarge) {
		t.Fatalf("oversized request → %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RoundTrip(ctx, []byte{0x60}); !errors.Is(err, nsm.ErrClosed) {
		t.Fatalf("RoundTrip after Close → %v", err)
	}
	l.Close()

	// Close interrupts an exchange in progress.
	l2, dial2, _ := unixListener(t)
	block, got := make(chan struct{}), make(chan struct{})
	fakeServer(t, l2, false, func(int, []byte) []byte { close(got); <-block; return nil })
	defer close(block)
	s2 := nsm.NewStream(dial2)
	errc := make(chan error, 1)
	go func() { _, err := s2.RoundTrip(ctx, []byte{0x60}); errc <- err }()
	<-got // the request is on the server: the exchange is in progress
	s2.Close()
	if err := <-errc; !errors.Is(err, nsm.ErrClosed) {
		t.Fatalf("RoundTrip interrupted by Close → %v, want ErrClosed", err)
	}
}

func TestStreamDialError(t *testing.T) {
	dialErr := errors.New("no route")
	s := nsm.NewStream(func(context.Context) (net.Conn, error) { return nil, dialErr })
	if _, err := s.RoundTrip(context.Background(), []byte{0x60}); !errors.Is(err, dialErr) {
		t.Fatalf("RoundTrip = %v, want the dial error", err)
	}
}
