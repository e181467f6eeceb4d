package verifier

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// pgSchema creates the verifier's tables; it runs under an advisory lock
// so that replicas starting together do not race.
const pgSchema = `
CREATE TABLE IF NOT EXISTS cloister_verifier_challenges (
	nonce   bytea PRIMARY KEY,
	client  text NOT NULL,
	expires timestamptz NOT NULL,
	used    boolean NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS cloister_verifier_challenges_client ON cloister_verifier_challenges (client, expires);
CREATE INDEX IF NOT EXISTS cloister_verifier_challenges_expires ON cloister_verifier_challenges (expires);
CREATE TABLE IF NOT EXISTS cloister_verifier_sessions (
	id            text PRIMARY KEY,
	client        text NOT NULL,
	nonce         bytea NOT NULL,
	policy        text NOT NULL,
	status        text NOT NULL,
	evidence_type text,
	evidence      text,
	result        text,
	expires       timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS cloister_verifier_sessions_client ON cloister_verifier_sessions (client, expires);
CREATE INDEX IF NOT EXISTS cloister_verifier_sessions_expires ON cloister_verifier_sessions (expires);
`

// pgSchemaLock is the advisory lock key of the schema migration ("clvf").
const pgSchemaLock = 0x636c7666

// PostgresStore keeps the verifier's challenges and Veraison sessions in
// PostgreSQL, so that several replicas behind a load balancer act as one:
// a challenge issued by one is consumed by any, exactly once (an UPDATE
// … WHERE NOT used, which PostgreSQL's row locks serialise), and a session
// created on one is read, completed or deleted through any. Open it with
// [OpenPostgresStore] and pass it as [Config.Store]; every replica must
// have the same signing key and policies. Times are the replicas' clocks,
// which must agree to well within the challenge TTL.
//
// Bounds are kept in the store: MaxChallenges and MaxSessions bound the
// rows, and the per-client quotas count each client's rows across
// replicas (checked when the row is inserted, so concurrent inserts of
// one client may overshoot by their number). Rows expired for longer than
// their TTL are deleted by whichever replica next issues one after a TTL
// has passed, or finds the table full.
type PostgresStore struct {
	pool *pgxpool.Pool

	mu        sync.Mutex
	lastSweep [numHoldKinds]time.Time
}

// OpenPostgresStore connects to url (a postgres:// URL or DSN, as pgx
// takes it) and creates the verifier's tables if they are missing.
func OpenPostgresStore(ctx context.Context, url string) (*PostgresStore, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("verifier: store URL: %w (want postgres://user@host:port/db)", err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("verifier: store: %w", err)
	}
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(pgSchemaLock)); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, pgSchema)
		return err
	})
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("verifier: store: create tables: %w (is PostgreSQL reachable and the user allowed to create tables?)", err)
	}
	return &PostgresStore{pool: pool}, nil
}

// Close closes the connections.
func (p *PostgresStore) Close() { p.pool.Close() }

// pgBackend is a PostgresStore bound to one server's limits and policies.
type pgBackend struct {
	p      *PostgresStore
	max    [numHoldKinds]int
	ttl    [numHoldKinds]time.Duration
	quota  [numHoldKinds]int
	lookup func(string) (*policy, bool)
}

func (p *PostgresStore) attach(cfg Config, quota [numHoldKinds]int, lookup func(string) (*policy, bool)) *pgBackend {
	return &pgBackend{
		p:      p,
		max:    [numHoldKinds]int{holdChallenge: cfg.MaxChallenges, holdSession: cfg.MaxSessions},
		ttl:    [numHoldKinds]time.Duration{holdChallenge: cfg.ChallengeTTL, holdSession: cfg.SessionTTL},
		quota:  quota,
		lookup: lookup,
	}
}

var pgTables = [numHoldKinds]string{holdChallenge: "cloister_verifier_challenges", holdSession: "cloister_verifier_sessions"}

// sweep deletes rows of kind k expired for longer than grace, at most once
// per TTL unless force.
func (b *pgBackend) sweep(ctx context.Context, k holdKind, now time.Time, grace time.Duration, force bool) error {
	b.p.mu.Lock()
	due := force || now.Sub(b.p.lastSweep[k]) >= b.ttl[k] || now.Before(b.p.lastSweep[k])
	if due {
		b.p.lastSweep[k] = now
	}
	b.p.mu.Unlock()
	if !due {
		return nil
	}
	_, err := b.p.pool.Exec(ctx, `DELETE FROM `+pgTables[k]+` WHERE expires <= $1`, now.Add(-grace))
	return err
}

// admit checks the bounds of kind k for client before an insert: the
// table's size and the client's quota. It returns ErrStoreFull or a
// *LimitError.
func (b *pgBackend) admit(ctx context.Context, k holdKind, client string, now time.Time) error {
	if err := b.sweep(ctx, k, now, b.ttl[k], false); err != nil {
		return fmt.Errorf("verifier: store: sweep: %w", err)
	}
	var total int
	if err := b.p.pool.QueryRow(ctx, `SELECT count(*) FROM `+pgTables[k]).Scan(&total); err != nil {
		return fmt.Errorf("verifier: store: count: %w", err)
	}
	if total >= b.max[k] {
		if err := b.sweep(ctx, k, now, 0, true); err != nil {
			return fmt.Errorf("verifier: store: sweep: %w", err)
		}
		if err := b.p.pool.QueryRow(ctx, `SELECT count(*) FROM `+pgTables[k]).Scan(&total); err != nil {
			return fmt.Errorf("verifier: store: count: %w", err)
		}
		if total >= b.max[k] {
			return ErrStoreFull
		}
	}
	if q := b.quota[k]; q > 0 {
		var held int
		var oldest *time.Time
		err := b.p.pool.QueryRow(ctx, `SELECT count(*), min(expires) FROM `+pgTables[k]+` WHERE client = $1 AND expires > $2`, client, now).Scan(&held, &oldest)
		if err != nil {
			return fmt.Errorf("verifier: store: count client: %w", err)
		}
		if held >= q {
			retry := time.Second
			if oldest != nil {
				retry = oldest.Sub(now)
			}
			return &LimitError{Client: client, Reason: k.String(), Limit: float64(q), RetryAfter: retry}
		}
	}
	return nil
}

func (b *pgBackend) issueChallenge(ctx context.Context, nonce []byte, client string, now, expires time.Time) (bool, error) {
	if err := b.admit(ctx, holdChallenge, client, now); err != nil {
		return false, err
	}
	tag, err := b.p.pool.Exec(ctx, `INSERT INTO cloister_verifier_challenges (nonce, client, expires) VALUES ($1, $2, $3) ON CONFLICT (nonce) DO NOTHING`, nonce, client, expires)
	if err != nil {
		return false, fmt.Errorf("verifier: store: issue challenge: %w", err)
	}
	return tag.RowsAffected() == 1, nil
}

// consumeChallenge marks the nonce used with one conditional UPDATE: of
// two replicas consuming the same nonce at once, PostgreSQL lets exactly
// one UPDATE match (the second re-checks "NOT used" after the first
// commits). A refusal is then classified by reading the row.
func (b *pgBackend) consumeChallenge(ctx context.Context, nonce []byte, now time.Time) error {
	tag, err := b.p.pool.Exec(ctx, `UPDATE cloister_verifier_challenges SET used = true WHERE nonce = $1 AND NOT used AND expires > $2`, nonce, now)
	if err != nil {
		return fmt.Errorf("verifier: store: consume challenge: %w", err)
	}
	if tag.RowsAffected() == 1 {
		return nil
	}
	var used bool
	var expires time.Time
	err = b.p.pool.QueryRow(ctx, `SELECT used, expires FROM cloister_verifier_challenges WHERE nonce = $1`, nonce).Scan(&used, &expires)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return ErrUnknownChallenge
	case err != nil:
		return fmt.Errorf("verifier: store: consume challenge: %w", err)
	case !now.Before(expires):
		return ErrChallengeExpired
	default:
		return ErrChallengeUsed
	}
}

func (b *pgBackend) addSession(ctx context.Context, id string, sess *session, now, expires time.Time) (bool, error) {
	if err := b.admit(ctx, holdSession, sess.client, now); err != nil {
		return false, err
	}
	tag, err := b.p.pool.Exec(ctx, `INSERT INTO cloister_verifier_sessions (id, client, nonce, policy, status, expires) VALUES ($1, $2, $3, $4, 'waiting', $5) ON CONFLICT (id) DO NOTHING`,
		id, sess.client, sess.nonce, sess.policy.name, expires)
	if err != nil {
		return false, fmt.Errorf("verifier: store: add session: %w", err)
	}
	return tag.RowsAffected() == 1, nil
}

const sessionColumns = `client, nonce, policy, status, evidence_type, evidence, result, expires`

// scanSession reads sessionColumns.
func (b *pgBackend) scanSession(row pgx.Row) (*session, time.Time, error) {
	var (
		sess          session
		pol           string
		evType, evVal *string
		result        *string
		expires       time.Time
	)
	if err := row.Scan(&sess.client, &sess.nonce, &pol, &sess.status, &evType, &evVal, &result, &expires); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, time.Time{}, ErrUnknownSession
		}
		return nil, time.Time{}, fmt.Errorf("verifier: store: read session: %w", err)
	}
	p, ok := b.lookup(pol)
	if !ok {
		return nil, time.Time{}, fmt.Errorf("verifier: store: session policy %q is not defined on this replica; give every replica the same policies", pol)
	}
	sess.policy = p
	if evType != nil && evVal != nil {
		sess.evidence = &SessionEvidence{Type: *evType, Value: *evVal}
	}
	sess.result = result
	return &sess, expires, nil
}

func (b *pgBackend) getSession(ctx context.Context, id string, now time.Time) (*session, time.Time, error) {
	return b.scanSession(b.p.pool.QueryRow(ctx, `SELECT `+sessionColumns+` FROM cloister_verifier_sessions WHERE id = $1 AND expires > $2`, id, now))
}

func (b *pgBackend) deleteSession(ctx context.Context, id string, now time.Time) (*session, time.Time, error) {
	sess, exp, err := b.scanSession(b.p.pool.QueryRow(ctx, `DELETE FROM cloister_verifier_sessions WHERE id = $1 RETURNING `+sessionColumns, id))
	if err != nil {
		return nil, time.Time{}, err
	}
	if !now.Before(exp) {
		return nil, time.Time{}, ErrUnknownSession
	}
	return sess, exp, nil
}

func (b *pgBackend) claimSession(ctx context.Context, id string, now time.Time) (*session, time.Time, error) {
	sess, exp, err := b.scanSession(b.p.pool.QueryRow(ctx, `UPDATE cloister_verifier_sessions SET status = 'processing' WHERE id = $1 AND status = 'waiting' AND expires > $2 RETURNING `+sessionColumns, id, now))
	if !errors.Is(err, ErrUnknownSession) {
		return sess, exp, err
	}
	var status string
	var expires time.Time
	err = b.p.pool.QueryRow(ctx, `SELECT status, expires FROM cloister_verifier_sessions WHERE id = $1`, id).Scan(&status, &expires)
	switch {
	case errors.Is(err, pgx.ErrNoRows), err == nil && !now.Before(expires):
		return nil, time.Time{}, ErrUnknownSession
	case err != nil:
		return nil, time.Time{}, fmt.Errorf("verifier: store: claim session: %w", err)
	}
	return nil, time.Time{}, fmt.Errorf("%w: it is %s", ErrSessionUsed, status)
}

func (b *pgBackend) unclaimSession(ctx context.Context, id string) error {
	if _, err := b.p.pool.Exec(ctx, `UPDATE cloister_verifier_sessions SET status = 'waiting' WHERE id = $1 AND status = 'processing'`, id); err != nil {
		return fmt.Errorf("verifier: store: release session: %w", err)
	}
	return nil
}

func (b *pgBackend) completeSession(ctx context.Context, id string, ev *SessionEvidence, result string) error {
	tag, err := b.p.pool.Exec(ctx, `UPDATE cloister_verifier_sessions SET status = 'complete', evidence_type = $2, evidence = $3, result = $4 WHERE id = $1 AND status = 'processing'`,
		id, ev.Type, ev.Value, result)
	if err != nil {
		return fmt.Errorf("verifier: store: complete session: %w", err)
	}
	if tag.RowsAffected() != 1 {
		return ErrUnknownSession
	}
	return nil
}

func (b *pgBackend) counts(ctx context.Context) (int, int, error) {
	var c, n int
	err := b.p.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM cloister_verifier_challenges), (SELECT count(*) FROM cloister_verifier_sessions)`).Scan(&c, &n)
	if err != nil {
		return 0, 0, fmt.Errorf("verifier: store: count: %w", err)
	}
	return c, n, nil
}
