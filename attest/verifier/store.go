package verifier

import (
	"context"
	"errors"
	"fmt"
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

// Errors of the session store.
var (
	// ErrUnknownSession: no such session (never created, deleted or expired).
	ErrUnknownSession = errors.New("verifier: no such session (never created, deleted or expired)")
	// ErrSessionUsed: the session already took evidence; it takes it once.
	ErrSessionUsed = errors.New("verifier: session already took evidence")
)

// backend holds the challenges and sessions: in this process
// ([memBackend]), or in PostgreSQL ([PostgresStore]) shared by replicas.
// Times come from the server's clock.
type backend interface {
	// issueChallenge records nonce for client, expiring at expires. It
	// reports false when the nonce exists (the caller draws again), and
	// fails with ErrStoreFull or, when the backend counts per-client
	// holdings itself, a *LimitError.
	issueChallenge(ctx context.Context, nonce []byte, client string, now, expires time.Time) (bool, error)
	// consumeChallenge marks nonce used, exactly once: it fails with
	// ErrUnknownChallenge, ErrChallengeUsed or ErrChallengeExpired.
	consumeChallenge(ctx context.Context, nonce []byte, now time.Time) error
	// addSession records sess under id (status "waiting"), like issueChallenge.
	addSession(ctx context.Context, id string, sess *session, now, expires time.Time) (bool, error)
	// getSession returns a copy of an unexpired session and its expiry, or ErrUnknownSession.
	getSession(ctx context.Context, id string, now time.Time) (*session, time.Time, error)
	// deleteSession deletes a session and returns it (for its client and
	// expiry), or ErrUnknownSession.
	deleteSession(ctx context.Context, id string, now time.Time) (*session, time.Time, error)
	// claimSession moves a waiting session to processing, atomically, and
	// returns a copy; ErrUnknownSession, or ErrSessionUsed wrapped with its status.
	claimSession(ctx context.Context, id string, now time.Time) (*session, time.Time, error)
	// unclaimSession moves a processing session back to waiting (the
	// evidence was refused before appraisal; the client may retry).
	unclaimSession(ctx context.Context, id string) error
	// completeSession records the evidence and the result of a processing session.
	completeSession(ctx context.Context, id string, ev *SessionEvidence, result string) error
	// counts returns the challenges and sessions held (for the metrics).
	counts(ctx context.Context) (challenges, sessions int, err error)
}

// memBackend is the in-process backend.
type memBackend struct {
	ch *challengeStore
	se *sessionStore
}

func newMemBackend(maxChallenges int, challengeTTL time.Duration, maxSessions int, sessionTTL time.Duration) *memBackend {
	return &memBackend{ch: newChallengeStore(maxChallenges, challengeTTL), se: newSessionStore(maxSessions, sessionTTL)}
}

func (m *memBackend) issueChallenge(_ context.Context, nonce []byte, _ string, now, _ time.Time) (bool, error) {
	_, ok, err := m.ch.issue(nonce, now)
	return ok, err
}

func (m *memBackend) consumeChallenge(_ context.Context, nonce []byte, now time.Time) error {
	return m.ch.consume(nonce, now)
}

func (m *memBackend) addSession(_ context.Context, id string, sess *session, now, _ time.Time) (bool, error) {
	c := *sess
	_, ok, err := m.se.s.add(id, &c, now)
	return ok, err
}

func (m *memBackend) getSession(_ context.Context, id string, now time.Time) (*session, time.Time, error) {
	var out *session
	var exp time.Time
	m.se.s.update(id, now, func(p **session, e time.Time, expired bool) bool {
		if p != nil && !expired {
			c := **p
			out, exp = &c, e
		}
		return p != nil && expired
	})
	if out == nil {
		return nil, time.Time{}, ErrUnknownSession
	}
	return out, exp, nil
}

func (m *memBackend) deleteSession(_ context.Context, id string, now time.Time) (*session, time.Time, error) {
	var out *session
	var exp time.Time
	m.se.s.update(id, now, func(p **session, e time.Time, expired bool) bool {
		if p != nil && !expired {
			out, exp = *p, e
		}
		return p != nil
	})
	if out == nil {
		return nil, time.Time{}, ErrUnknownSession
	}
	return out, exp, nil
}

func (m *memBackend) claimSession(_ context.Context, id string, now time.Time) (*session, time.Time, error) {
	var out *session
	var exp time.Time
	err := ErrUnknownSession
	m.se.s.update(id, now, func(p **session, e time.Time, expired bool) bool {
		switch {
		case p == nil:
		case expired:
			return true
		case (*p).status != "waiting":
			err = fmt.Errorf("%w: it is %s", ErrSessionUsed, (*p).status)
		default:
			(*p).status = "processing"
			c := **p
			out, exp, err = &c, e, nil
		}
		return false
	})
	if err != nil {
		return nil, time.Time{}, err
	}
	return out, exp, nil
}

func (m *memBackend) unclaimSession(_ context.Context, id string) error {
	m.se.s.mu.Lock()
	defer m.se.s.mu.Unlock()
	if e, ok := m.se.s.m[id]; ok && e.val.status == "processing" {
		e.val.status = "waiting"
	}
	return nil
}

func (m *memBackend) completeSession(_ context.Context, id string, ev *SessionEvidence, result string) error {
	m.se.s.mu.Lock()
	defer m.se.s.mu.Unlock()
	e, ok := m.se.s.m[id]
	if !ok || e.val.status != "processing" {
		return ErrUnknownSession
	}
	e.val.status, e.val.evidence, e.val.result = "complete", ev, &result
	return nil
}

func (m *memBackend) counts(context.Context) (int, int, error) {
	return m.ch.s.len(), m.se.s.len(), nil
}
