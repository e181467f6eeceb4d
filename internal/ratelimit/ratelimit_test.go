package ratelimit

import (
	"context"
	"errors"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// fakeClock is a clock that moves only when told to (or when a Sleep
// through it is asked to wait).
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newBucket(t *testing.T, rate float64, burst int, clk *fakeClock) *Bucket {
	t.Helper()
	b, err := New(Config{Rate: rate, Burst: burst, Now: clk.Now,
		Sleep: func(ctx context.Context, d time.Duration) error { clk.Advance(d); return ctx.Err() }})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestBucketServesBurstThenRate: with the clock stopped, a loop of 100
// requests gets exactly Burst immediate tokens; each second then adds Rate
// tokens, never more than Burst.
func TestBucketServesBurstThenRate(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	b := newBucket(t, 4, 10, clk)
	immediate := func(n int) int {
		got := 0
		for range n {
			if b.Reserve() == 0 {
				got++
			} else {
				b.Cancel()
			}
		}
		return got
	}
	var got []int
	got = append(got, immediate(100))
	clk.Advance(time.Second)
	got = append(got, immediate(100))
	clk.Advance(500 * time.Millisecond)
	got = append(got, immediate(100))
	clk.Advance(time.Hour) // refills to Burst, not beyond
	got = append(got, immediate(100))
	if diff := cmp.Diff([]int{10, 4, 2, 10}, got); diff != "" {
		t.Errorf("immediate tokens per round (-want +got):\n%s", diff)
	}
}

// TestBucketWaitQueues: waiters reserve tokens in order, each one 1/Rate
// later than the previous, and Wait reports the delay.
func TestBucketWaitQueues(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	b, err := New(Config{Rate: 2, Burst: 1, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	var delays []time.Duration
	for range 4 {
		delays = append(delays, b.Reserve())
	}
	want := []time.Duration{0, 500 * time.Millisecond, time.Second, 1500 * time.Millisecond}
	if diff := cmp.Diff(want, delays); diff != "" {
		t.Errorf("delays (-want +got):\n%s", diff)
	}

	clk2 := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	b2 := newBucket(t, 10, 2, clk2)
	var waited []time.Duration
	for range 4 {
		d, err := b2.Wait(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		waited = append(waited, d)
	}
	if diff := cmp.Diff([]time.Duration{0, 0, 100 * time.Millisecond, 100 * time.Millisecond}, waited); diff != "" {
		t.Errorf("waits (-want +got):\n%s", diff)
	}
}

// TestBucketWaitCancelled: a cancelled waiter gives its token back.
func TestBucketWaitCancelled(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	b, err := New(Config{Rate: 1, Burst: 1, Now: clk.Now,
		Sleep: func(ctx context.Context, d time.Duration) error { return context.Canceled }})
	if err != nil {
		t.Fatal(err)
	}
	if d, err := b.Wait(context.Background()); d != 0 || err != nil {
		t.Fatalf("first Wait = %v, %v", d, err)
	}
	if _, err := b.Wait(context.Background()); !errors.Is(err, context.Canceled) {
		t.Fatalf("second Wait = %v, want context.Canceled", err)
	}
	clk.Advance(time.Second)
	if d := b.Reserve(); d != 0 {
		t.Errorf("after a cancelled wait and 1 s, Reserve = %v, want a token at once", d)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := b.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Wait with a done context = %v", err)
	}
}

func TestNewRejects(t *testing.T) {
	for _, c := range []Config{{Rate: 0, Burst: 1}, {Rate: -1, Burst: 1}, {Rate: math.NaN(), Burst: 1}, {Rate: math.Inf(1), Burst: 1}, {Rate: 1, Burst: 0}} {
		if _, err := New(c); !errors.Is(err, ErrConfig) {
			t.Errorf("New(%+v) = %v, want ErrConfig", c, err)
		}
	}
}

// BenchmarkBucketReserve measures one token taken from a bucket that
// always has one (the cost added to every attestation).
func BenchmarkBucketReserve(b *testing.B) {
	bk, err := New(Config{Rate: 1e12, Burst: 1 << 30})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if bk.Reserve() != 0 {
			b.Fatal("waited")
		}
	}
}
