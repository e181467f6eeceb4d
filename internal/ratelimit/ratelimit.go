// Package ratelimit is a token bucket with an injectable clock, used to
// pace work the host does on an enclave's behalf (the emulated security
// module's attestation signing).
package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"
)

// ErrConfig reports an unusable [Config].
var ErrConfig = errors.New("ratelimit: invalid configuration")

// Config configures a [Bucket].
type Config struct {
	// Rate is the refill rate in tokens per second; it must be positive
	// and finite.
	Rate float64
	// Burst is the bucket's capacity (≥ 1); the bucket starts full.
	Burst int
	// Now reads the clock; default time.Now.
	Now func() time.Time
	// Sleep waits d or until ctx ends, returning ctx's error then;
	// default a timer.
	Sleep func(ctx context.Context, d time.Duration) error
}

// Bucket is a token bucket: it holds up to Burst tokens, refills at Rate
// tokens per second, and every [Bucket.Wait] takes one, waiting for it when
// the bucket is empty. Waiters are served in arrival order: each one
// reserves the next token as it arrives. It is safe for concurrent use.
type Bucket struct {
	rate  float64
	burst float64
	now   func() time.Time
	sleep func(ctx context.Context, d time.Duration) error

	mu     sync.Mutex
	tokens float64 // may go negative: tokens reserved by waiters
	last   time.Time
	primed bool
}

// New returns a full bucket for cfg, or an error wrapping [ErrConfig].
func New(cfg Config) (*Bucket, error) {
	if !(cfg.Rate > 0) || math.IsInf(cfg.Rate, 0) {
		return nil, fmt.Errorf("%w: rate %v is not a positive number of tokens per second", ErrConfig, cfg.Rate)
	}
	if cfg.Burst < 1 {
		return nil, fmt.Errorf("%w: burst %d is less than 1", ErrConfig, cfg.Burst)
	}
	b := &Bucket{rate: cfg.Rate, burst: float64(cfg.Burst), now: cfg.Now, sleep: cfg.Sleep}
	if b.now == nil {
		b.now = time.Now
	}
	if b.sleep == nil {
		b.sleep = sleep
	}
	return b, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Reserve takes one token and returns how long its holder must wait before
// using it: zero when the bucket had one. Pair it with [Bucket.Cancel] if
// the holder gives up.
func (b *Bucket) Reserve() time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	if !b.primed {
		b.tokens, b.last, b.primed = b.burst, now, true
	}
	if el := now.Sub(b.last); el > 0 {
		b.tokens = math.Min(b.burst, b.tokens+el.Seconds()*b.rate)
		b.last = now
	}
	b.tokens--
	if b.tokens >= 0 {
		return 0
	}
	return time.Duration(math.Ceil(-b.tokens / b.rate * float64(time.Second)))
}

// Cancel gives back a token taken by Reserve and not used.
func (b *Bucket) Cancel() {
	b.mu.Lock()
	b.tokens = math.Min(b.burst, b.tokens+1)
	b.mu.Unlock()
}

// Wait takes one token, waiting until it is due or ctx ends (then the token
// is given back and ctx's error returned). It returns how long it waited.
func (b *Bucket) Wait(ctx context.Context) (time.Duration, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	d := b.Reserve()
	if d == 0 {
		return 0, nil
	}
	if err := b.sleep(ctx, d); err != nil {
		b.Cancel()
		return 0, err
	}
	return d, nil
}
