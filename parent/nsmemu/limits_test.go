package nsmemu_test

import (
	"context"
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/internal/nsm"
	"github.com/cloister/cloister/internal/ratelimit"
	"github.com/cloister/cloister/parent/nsmemu"
)

// fakeClock moves only when a wait through it is asked for.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) error {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
	return ctx.Err()
}

// TestAttestationFloodThrottled: a count-bounded flood of 50 attestation
// requests against a bucket of 5 refilling at 10 per second gets its first
// 5 documents at once and every later one 1/10 s after the previous: the
// (fake) clock ends 4.5 s later, and the counters say 45 waited.
func TestAttestationFloodThrottled(t *testing.T) {
	start := time.Unix(1_700_000_000, 0)
	clk := &fakeClock{t: start}
	bucket, err := ratelimit.New(ratelimit.Config{Rate: 10, Burst: 5, Now: clk.Now, Sleep: clk.Sleep})
	if err != nil {
		t.Fatal(err)
	}
	e := newEmulator(t, nsmemu.Config{Attestations: bucket, Clock: clk.Now})
	req, err := nsm.EncodeRequest(nsm.AttestationRequest{Nonce: []byte("n")})
	if err != nil {
		t.Fatal(err)
	}
	issued := 0
	for range 50 {
		r, err := nsm.DecodeResponse(e.Handle(context.Background(), req))
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := r.(nsm.AttestationResponse); ok {
			issued++
		}
	}
	if issued != 50 {
		t.Errorf("issued %d of 50 documents", issued)
	}
	if got, want := clk.Now().Sub(start), 4500*time.Millisecond; got != want {
		t.Errorf("the flood took %v of fake time, want %v (45 documents at 10/s after a burst of 5)", got, want)
	}
	if diff := cmp.Diff(nsmemu.Stats{Attestations: 50, Throttled: 45}, e.Stats()); diff != "" {
		t.Errorf("stats (-want +got):\n%s", diff)
	}
}

// blockedLimiter lets nothing through until ctx ends.
type blockedLimiter struct{ entered chan struct{} }

func (b blockedLimiter) Wait(ctx context.Context) (time.Duration, error) {
	b.entered <- struct{}{}
	<-ctx.Done()
	return 0, ctx.Err()
}

// TestAttestationWaitAbandoned: an attestation waiting for the limiter is
// counted as waiting, and ends with InternalError (no document) when its
// context ends; other requests are not paced.
func TestAttestationWaitAbandoned(t *testing.T) {
	lim := blockedLimiter{entered: make(chan struct{})}
	e := newEmulator(t, nsmemu.Config{Attestations: lim})
	req, _ := nsm.EncodeRequest(nsm.AttestationRequest{})
	ctx, cancel := context.WithCancel(context.Background())
	resp := make(chan []byte, 1)
	go func() { resp <- e.Handle(ctx, req) }()
	<-lim.entered
	if got := e.Stats().Waiting; got != 1 {
		t.Errorf("waiting = %d, want 1", got)
	}
	desc, _ := nsm.EncodeRequest(nsm.DescribeNSMRequest{})
	if r, err := nsm.DecodeResponse(e.Handle(context.Background(), desc)); err != nil || r.Name() != "DescribeNSM" {
		t.Errorf("DescribeNSM while an attestation waits: %#v, %v", r, err)
	}
	cancel()
	r, err := nsm.DecodeResponse(<-resp)
	if err != nil || r != (nsm.ErrorResponse{Code: nsm.InternalError}) {
		t.Errorf("abandoned attestation: %#v, %v; want InternalError", r, err)
	}
	if diff := cmp.Diff(nsmemu.Stats{Throttled: 1}, e.Stats()); diff != "" {
		t.Errorf("stats (-want +got):\n%s", diff)
	}
}

// TestServeIdleTimeout: a connection that sends no request within
// IdleTimeout is closed and counted; a Stream client reconnects on its
// next request, even one that must not be retried (ExtendPCR).
func TestServeIdleTimeout(t *testing.T) {
	e := newEmulator(t, nsmemu.Config{IdleTimeout: 20 * time.Millisecond})
	path := filepath.Join(t.TempDir(), "nsm.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Serve(ctx, l) }()
	defer func() {
		cancel()
		<-done
	}()

	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
		t.Fatalf("idle connection: read %q, %v; want end of stream", b, err)
	}

	var dials int
	s := nsm.NewStream(func(ctx context.Context) (net.Conn, error) {
		dials++
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	})
	defer s.Close()
	client := nsm.NewClient(s)
	if _, err := client.ExtendPCR(context.Background(), 16, []byte("a")); err != nil {
		t.Fatal(err)
	}
	// Wait (a bound, not an assertion) until the server has closed the
	// client's idle connection.
	for deadline := time.Now().Add(time.Minute); e.Stats().IdleClosed < 2 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if got := e.Stats().IdleClosed; got != 2 {
		t.Fatalf("idle connections closed: %d, want 2", got)
	}
	if _, err := client.ExtendPCR(context.Background(), 16, []byte("b")); err != nil {
		t.Fatalf("ExtendPCR after the server closed the idle connection: %v", err)
	}
	if dials != 2 {
		t.Errorf("%d dials, want 2", dials)
	}
}
