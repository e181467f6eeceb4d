package verifier

import (
	"errors"
	"sync"
	"time"
)

// Errors of the challenge and session stores.
var (
	// ErrStoreFull: too many outstanding challenges or sessions; retry later.
	ErrStoreFull = errors.New("verifier: too many outstanding challenges or sessions")
	// ErrUnknownChallenge: the nonce was never issued by this server (or was
	// swept after expiring).
	ErrUnknownChallenge = errors.New("verifier: nonce was not issued by this verifier")
	// ErrChallengeUsed: the nonce was already consumed by a verified document.
	ErrChallengeUsed = errors.New("verifier: nonce was already used")
	// ErrChallengeExpired: the nonce's time to live has passed.
	ErrChallengeExpired = errors.New("verifier: nonce expired")
)

// ttlStore is a bounded map whose entries expire. Expired entries are swept
// when the store is full and at least once per ttl; no goroutine is needed.
type ttlStore[V any] struct {
	mu        sync.Mutex
	m         map[string]*ttlEntry[V]
	max       int
	ttl       time.Duration
	lastSweep time.Time
}

type ttlEntry[V any] struct {
	expires time.Time
	val     V
}

func newTTLStore[V any](max int, ttl time.Duration) *ttlStore[V] {
	return &ttlStore[V]{m: make(map[string]*ttlEntry[V]), max: max, ttl: ttl}
}

// sweep deletes entries expired for longer than grace; mu held.
func (s *ttlStore[V]) sweep(now time.Time, grace time.Duration) {
	for k, e := range s.m {
		if now.Sub(e.expires) >= grace {
			delete(s.m, k)
		}
	}
	s.lastSweep = now
}

// maybeSweep sweeps once per ttl, keeping recently expired entries for a
// ttl so that their use is reported as "expired" rather than "unknown";
// a full store drops every expired entry.
func (s *ttlStore[V]) maybeSweep(now time.Time) {
	switch {
	case len(s.m) >= s.max:
		s.sweep(now, 0)
	case now.Sub(s.lastSweep) >= s.ttl:
		s.sweep(now, s.ttl)
	}
}

// add inserts v under key with expiry now+ttl. It fails with ErrStoreFull
// when the store holds max unexpired entries, and reports false when the
// key exists.
func (s *ttlStore[V]) add(key string, v V, now time.Time) (time.Time, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.maybeSweep(now)
	if len(s.m) >= s.max {
		return time.Time{}, false, ErrStoreFull
	}
	if _, ok := s.m[key]; ok {
		return time.Time{}, false, nil
	}
	exp := now.Add(s.ttl)
	s.m[key] = &ttlEntry[V]{expires: exp, val: v}
	return exp, true, nil
}

// update calls f with the entry under key (nil when absent or expired) and
// its expiry, under the store's lock; f may modify the value. f returning
// remove deletes the entry.
func (s *ttlStore[V]) update(key string, now time.Time, f func(v *V, expires time.Time, expired bool) (remove bool)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.maybeSweep(now)
	e, ok := s.m[key]
	if !ok {
		f(nil, time.Time{}, false)
		return
	}
	if f(&e.val, e.expires, !now.Before(e.expires)) {
		delete(s.m, key)
	}
}

// len returns the number of entries (expired ones not yet swept included).
func (s *ttlStore[V]) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

// challengeStore issues single-use nonces.
type challengeStore struct {
	s *ttlStore[bool] // value: used
}

func newChallengeStore(max int, ttl time.Duration) *challengeStore {
	return &challengeStore{s: newTTLStore[bool](max, ttl)}
}

// issue registers nonce; it reports false if the nonce already exists
// (a random collision: the caller draws again).
func (c *challengeStore) issue(nonce []byte, now time.Time) (time.Time, bool, error) {
	return c.s.add(string(nonce), false, now)
}

// consume marks nonce used. It fails with ErrUnknownChallenge,
// ErrChallengeUsed or ErrChallengeExpired. A used nonce stays recorded
// until its expiry so that a replay is reported as such.
func (c *challengeStore) consume(nonce []byte, now time.Time) error {
	var err error
	c.s.update(string(nonce), now, func(used *bool, _ time.Time, expired bool) bool {
		switch {
		case used == nil:
			err = ErrUnknownChallenge
		case expired:
			err = ErrChallengeExpired
			return true
		case *used:
			err = ErrChallengeUsed
		default:
			*used = true
		}
		return false
	})
	return err
}
