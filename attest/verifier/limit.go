package verifier

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"
)

// Defaults of the per-client limits of [Config].
const (
	DefaultMaxChallengesPerClient = 1000  // challenges one client holds at once (1% of DefaultMaxChallenges)
	DefaultMaxSessionsPerClient   = 100   // Veraison sessions one client holds at once (1% of DefaultMaxSessions)
	DefaultClientRate             = 10.0  // challenges and sessions a client may create per second, sustained
	DefaultClientBurst            = 50    // ... and at once after being idle
	DefaultClientIPv4Prefix       = 32    // an IPv4 client is one address
	DefaultClientIPv6Prefix       = 64    // an IPv6 client is a /64, the smallest block a site is given
	DefaultMaxClients             = 10000 // clients tracked at once
)

// ErrClientLimit: this client holds its share of the challenges or
// sessions, or creates them too fast; other clients are not affected.
// The error is a [*LimitError] saying which limit and when to retry.
var ErrClientLimit = errors.New("verifier: per-client limit reached")

// LimitError is the detail of an [ErrClientLimit] refusal.
type LimitError struct {
	Client     string        // the client's address block, e.g. "192.0.2.7/32"
	Reason     string        // "challenges" or "sessions" (the client holds its share), "rate", or "clients" (too many clients)
	Limit      float64       // the limit that was reached (a count, or per second for "rate")
	RetryAfter time.Duration // when a retry can succeed
}

func (e *LimitError) Error() string {
	switch e.Reason {
	case "rate":
		return fmt.Sprintf("verifier: client %s creates challenges and sessions faster than %g per second; retry in %s", e.Client, e.Limit, e.RetryAfter)
	case "clients":
		return fmt.Sprintf("verifier: %g clients already hold challenges or sessions; retry in %s", e.Limit, e.RetryAfter)
	}
	return fmt.Sprintf("verifier: client %s holds %g %s, the most one client may hold; retry in %s when the oldest expires, or delete unused sessions", e.Client, e.Limit, e.Reason, e.RetryAfter)
}

// Unwrap returns ErrClientLimit.
func (e *LimitError) Unwrap() error { return ErrClientLimit }

// holdKind is what a client holds: a challenge or a session.
type holdKind int

const (
	holdChallenge holdKind = iota
	holdSession
	numHoldKinds
)

func (k holdKind) String() string {
	if k == holdSession {
		return "sessions"
	}
	return "challenges"
}

// clientLimiter decides whether a client may create one more challenge or
// session. memLimiter keeps its counts in this process; with a store
// shared by replicas (PostgresStore) the store counts what each client
// holds across replicas and memLimiter keeps only the rates.
type clientLimiter interface {
	// admit reserves, for client, one k that expires at expires, or
	// refuses with a *LimitError.
	admit(client string, k holdKind, now, expires time.Time) error
	// release returns a reservation before it expires: the store did not
	// take the entry, or it was deleted.
	release(client string, k holdKind, expires time.Time)
	// clients returns the number of clients tracked.
	clients() int
}

// limits are the per-client limits; a quota or rate ≤ 0 means none.
type limits struct {
	quota      [numHoldKinds]int
	rate       float64 // tokens per second
	burst      float64
	maxClients int
}

// memLimiter is the in-process clientLimiter: per client, the expiry of
// each challenge and session it holds and a token bucket. Its size is
// bounded: a client that holds nothing and whose bucket is full is idle
// and forgotten by the next sweep (when the map is full, and at least
// every idleSweep); the reservations of all clients together are bounded
// by the stores they are made for.
type memLimiter struct {
	lim       limits
	mu        sync.Mutex
	m         map[string]*clientState
	lastSweep time.Time
}

// clientState is one client's reservations and token bucket.
type clientState struct {
	held   [numHoldKinds][]time.Time // expiries, in issue order
	tokens float64
	last   time.Time // of the last token update
}

const (
	idleSweep = time.Minute // a sweep at least this often
	fullSweep = time.Second // a sweep of a full map at most this often
)

func newMemLimiter(l limits) *memLimiter {
	return &memLimiter{lim: l, m: make(map[string]*clientState)}
}

// prune drops the expired reservations, and shrinks a slice that holds
// far fewer than it once did.
func (c *clientState) prune(now time.Time) {
	for k, h := range c.held {
		n := 0
		for _, e := range h {
			if now.Before(e) {
				h[n] = e
				n++
			}
		}
		clear(h[n:])
		h = h[:n]
		if cap(h) > 16 && n < cap(h)/4 {
			h = append(make([]time.Time, 0, 2*n), h...)
		}
		c.held[k] = h
	}
}

// refill brings the bucket up to now.
func (c *clientState) refill(now time.Time, l limits) {
	if l.rate <= 0 {
		return
	}
	if c.last.IsZero() {
		c.tokens, c.last = l.burst, now
		return
	}
	if d := now.Sub(c.last); d > 0 {
		c.tokens = min(l.burst, c.tokens+d.Seconds()*l.rate)
		c.last = now
	}
}

// idle reports whether c holds nothing and has a full bucket: forgetting
// it changes nothing. prune and refill first.
func (c *clientState) idle(l limits) bool {
	for _, h := range c.held {
		if len(h) > 0 {
			return false
		}
	}
	return l.rate <= 0 || c.tokens >= l.burst
}

// sweep forgets idle clients; mu held.
func (m *memLimiter) sweep(now time.Time) {
	for k, c := range m.m {
		c.prune(now)
		c.refill(now, m.lim)
		if c.idle(m.lim) {
			delete(m.m, k)
		}
	}
	m.lastSweep = now
}

func (m *memLimiter) admit(client string, k holdKind, now, expires time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if now.Sub(m.lastSweep) >= idleSweep || now.Before(m.lastSweep) {
		m.sweep(now)
	}
	c := m.m[client]
	if c == nil {
		if len(m.m) >= m.lim.maxClients && now.Sub(m.lastSweep) >= fullSweep {
			m.sweep(now)
		}
		if len(m.m) >= m.lim.maxClients {
			return &LimitError{Client: client, Reason: "clients", Limit: float64(m.lim.maxClients), RetryAfter: fullSweep}
		}
		c = &clientState{}
		m.m[client] = c
	}
	c.prune(now)
	c.refill(now, m.lim)
	if q := m.lim.quota[k]; q > 0 && len(c.held[k]) >= q {
		oldest := c.held[k][0]
		for _, e := range c.held[k] {
			oldest = minTime(oldest, e)
		}
		return &LimitError{Client: client, Reason: k.String(), Limit: float64(q), RetryAfter: oldest.Sub(now)}
	}
	if m.lim.rate > 0 {
		if c.tokens < 1 {
			wait := time.Duration(math.Ceil((1 - c.tokens) / m.lim.rate * float64(time.Second)))
			return &LimitError{Client: client, Reason: "rate", Limit: m.lim.rate, RetryAfter: wait}
		}
		c.tokens--
	}
	c.held[k] = append(c.held[k], expires)
	return nil
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func (m *memLimiter) release(client string, k holdKind, expires time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.m[client]
	if c == nil {
		return
	}
	for i, e := range c.held[k] {
		if e.Equal(expires) {
			c.held[k] = slices.Delete(c.held[k], i, i+1)
			return
		}
	}
}

func (m *memLimiter) clients() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.m)
}

// clientIdentity names the client of a request for the limits: its
// address block (Config.ClientIPv4Prefix, ClientIPv6Prefix). The address
// is the TCP peer's; X-Forwarded-For is believed only from a peer in
// Config.TrustedProxies, and then only its right-most address that is not
// itself a trusted proxy (every address left of it is whatever the client
// chose to send).
type clientIdentity struct {
	v4, v6  int
	proxies []netip.Prefix
}

// unknownClient is the client of requests without an IP peer (a Unix
// socket listener): they share one set of limits.
const unknownClient = "unknown"

func (ci clientIdentity) of(r *http.Request) string {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return unknownClient
	}
	addr := ap.Addr().Unmap()
	if ci.trusted(addr) {
		addr = ci.forwarded(r, addr)
	}
	bits := ci.v6
	if addr.Is4() {
		bits = ci.v4
	}
	p, err := addr.WithZone("").Prefix(bits)
	if err != nil {
		return unknownClient
	}
	return p.String()
}

func (ci clientIdentity) trusted(a netip.Addr) bool {
	for _, p := range ci.proxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// forwarded returns the client address that the trusted proxy peer
// reports in X-Forwarded-For: the right-most address that is not a
// trusted proxy; the left-most one when all are; peer when the header is
// absent or that address does not parse.
func (ci clientIdentity) forwarded(r *http.Request, peer netip.Addr) netip.Addr {
	var hops []string
	for _, v := range r.Header.Values("X-Forwarded-For") {
		hops = append(hops, strings.Split(v, ",")...)
	}
	client := peer
	for i := len(hops) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			return peer
		}
		client = a.Unmap()
		if !ci.trusted(client) {
			break
		}
	}
	return client
}
