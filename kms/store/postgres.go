package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// migrations are applied in order, each in its own transaction, and
// recorded in cloister_kms_schema. Never edit an applied migration; append.
var migrations = []string{
	`CREATE TABLE cloister_kms_meta (
		name  text PRIMARY KEY,
		value bytea NOT NULL
	);
	CREATE TABLE cloister_kms_keys (
		id   text PRIMARY KEY,
		data jsonb NOT NULL
	);
	CREATE TABLE cloister_kms_material (
		key_id  text NOT NULL REFERENCES cloister_kms_keys(id) ON DELETE CASCADE,
		version bigint NOT NULL,
		sealed  bytea NOT NULL,
		PRIMARY KEY (key_id, version)
	);
	CREATE TABLE cloister_kms_aliases (
		name   text PRIMARY KEY,
		key_id text NOT NULL REFERENCES cloister_kms_keys(id) ON DELETE CASCADE,
		data   jsonb NOT NULL
	);`,
	`CREATE TABLE cloister_kms_denials (
		request_id text PRIMARY KEY,
		at         timestamptz NOT NULL,
		data       jsonb NOT NULL
	);
	CREATE INDEX cloister_kms_denials_at ON cloister_kms_denials (at);`,
}

// Postgres is the PostgreSQL-backed Store (pgx/v5 pool). Every method runs
// in a transaction; durability is PostgreSQL's commit.
type Postgres struct {
	pool *pgxpool.Pool
	seal *sealer
}

var _ Store = (*Postgres)(nil)

// OpenPostgres connects to the database at url (a postgres:// URL or DSN),
// applies pending schema migrations under an advisory lock (so concurrent
// servers migrate once), and checks or records the root-key check value
// (ErrRootKey if the database was initialised with another root key).
func OpenPostgres(ctx context.Context, url string, rootKey []byte) (*Postgres, error) {
	s, err := newSealer(rootKey)
	if err != nil {
		return nil, err
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("store: connecting to PostgreSQL: %w", err)
	}
	p := &Postgres{pool: pool, seal: s}
	if err := p.migrate(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return p, nil
}

func (p *Postgres) migrate(ctx context.Context) error {
	conn, err := p.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("store: connecting to PostgreSQL: %w", err)
	}
	defer conn.Release()
	const lockID = 0x636c6f6b6d73 // "clokms"
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, lockID); err != nil {
		return fmt.Errorf("store: migration lock: %w", err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, lockID)
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS cloister_kms_schema (version int NOT NULL)`); err != nil {
		return fmt.Errorf("store: migrations: %w", err)
	}
	var have int
	if err := conn.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM cloister_kms_schema`).Scan(&have); err != nil {
		return fmt.Errorf("store: migrations: %w", err)
	}
	if have > len(migrations) {
		return fmt.Errorf("store: database schema version %d is newer than this program's %d", have, len(migrations))
	}
	for v := have + 1; v <= len(migrations); v++ {
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, migrations[v-1]); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `INSERT INTO cloister_kms_schema (version) VALUES ($1)`, v)
			return err
		})
		if err != nil {
			return fmt.Errorf("store: migration %d: %w", v, err)
		}
	}
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		var c []byte
		err := tx.QueryRow(ctx, `SELECT value FROM cloister_kms_meta WHERE name = 'root-key-check'`).Scan(&c)
		if err == nil {
			return p.seal.verifyCheck(c)
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		c, err = p.seal.seal(checkID, 0, []byte(checkID))
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO cloister_kms_meta (name, value) VALUES ('root-key-check', $1)`, c)
		return err
	})
}

func isUniqueViolation(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}

func isFKViolation(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23503"
}

// CreateKey implements Store.
func (p *Postgres) CreateKey(ctx context.Context, k Key, secret []byte) error {
	k.CurrentVersion = 1
	sealed, err := p.seal.seal(k.ID, 1, secret)
	if err != nil {
		return err
	}
	data, err := json.Marshal(k)
	if err != nil {
		return err
	}
	err = pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO cloister_kms_keys (id, data) VALUES ($1, $2)`, k.ID, data); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO cloister_kms_material (key_id, version, sealed) VALUES ($1, 1, $2)`, k.ID, sealed)
		return err
	})
	if isUniqueViolation(err) {
		return fmt.Errorf("%w: key %s", ErrExists, k.ID)
	}
	if err != nil {
		return fmt.Errorf("store: creating key: %w", err)
	}
	return nil
}

func scanKey(row pgx.Row, id string) (Key, error) {
	var data []byte
	if err := row.Scan(&data); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return Key{}, fmt.Errorf("%w: key %s", ErrNotFound, id)
		}
		return Key{}, fmt.Errorf("store: reading key: %w", err)
	}
	var k Key
	if err := json.Unmarshal(data, &k); err != nil {
		return Key{}, fmt.Errorf("store: decoding key %s: %w", id, err)
	}
	return k, nil
}

// GetKey implements Store.
func (p *Postgres) GetKey(ctx context.Context, id string) (Key, error) {
	return scanKey(p.pool.QueryRow(ctx, `SELECT data FROM cloister_kms_keys WHERE id = $1`, id), id)
}

// ListKeys implements Store.
func (p *Postgres) ListKeys(ctx context.Context) ([]Key, error) {
	return listRows[Key](ctx, p, `SELECT data FROM cloister_kms_keys ORDER BY id`, "keys")
}

// UpdateKey implements Store (SELECT ... FOR UPDATE, then UPDATE).
func (p *Postgres) UpdateKey(ctx context.Context, id string, fn func(*Key) error) (Key, error) {
	var k Key
	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		var err error
		if k, err = scanKey(tx.QueryRow(ctx, `SELECT data FROM cloister_kms_keys WHERE id = $1 FOR UPDATE`, id), id); err != nil {
			return err
		}
		ver := k.CurrentVersion
		if err := fn(&k); err != nil {
			return err
		}
		k.ID, k.CurrentVersion = id, ver
		data, err := json.Marshal(k)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE cloister_kms_keys SET data = $2 WHERE id = $1`, id, data)
		return err
	})
	if err != nil {
		return Key{}, err
	}
	return k, nil
}

// Rotate implements Store.
func (p *Postgres) Rotate(ctx context.Context, id string, secret []byte, fn func(*Key) error) (Key, error) {
	var k Key
	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		var err error
		if k, err = scanKey(tx.QueryRow(ctx, `SELECT data FROM cloister_kms_keys WHERE id = $1 FOR UPDATE`, id), id); err != nil {
			return err
		}
		next := k.CurrentVersion + 1
		if fn != nil {
			if err := fn(&k); err != nil {
				return err
			}
		}
		sealed, err := p.seal.seal(id, next, secret)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO cloister_kms_material (key_id, version, sealed) VALUES ($1, $2, $3)`, id, int64(next), sealed); err != nil {
			return err
		}
		k.ID, k.CurrentVersion = id, next
		data, err := json.Marshal(k)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE cloister_kms_keys SET data = $2 WHERE id = $1`, id, data)
		return err
	})
	if err != nil {
		return Key{}, err
	}
	return k, nil
}

// Material implements Store.
func (p *Postgres) Material(ctx context.Context, id string, version uint32) ([]byte, error) {
	var sealed []byte
	err := p.pool.QueryRow(ctx, `SELECT sealed FROM cloister_kms_material WHERE key_id = $1 AND version = $2`, id, int64(version)).Scan(&sealed)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%w: material %s version %d", ErrNotFound, id, version)
	}
	if err != nil {
		return nil, fmt.Errorf("store: reading material: %w", err)
	}
	return p.seal.open(id, version, sealed)
}

// DeleteKey implements Store (material and aliases cascade).
func (p *Postgres) DeleteKey(ctx context.Context, id string) error {
	tag, err := p.pool.Exec(ctx, `DELETE FROM cloister_kms_keys WHERE id = $1`, id)
	if err != nil {
		return fmt.Errorf("store: deleting key: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%w: key %s", ErrNotFound, id)
	}
	return nil
}

// CreateAlias implements Store.
func (p *Postgres) CreateAlias(ctx context.Context, a Alias) error {
	data, err := json.Marshal(a)
	if err != nil {
		return err
	}
	_, err = p.pool.Exec(ctx, `INSERT INTO cloister_kms_aliases (name, key_id, data) VALUES ($1, $2, $3)`, a.Name, a.KeyID, data)
	switch {
	case isUniqueViolation(err):
		return fmt.Errorf("%w: alias %s", ErrExists, a.Name)
	case isFKViolation(err):
		return fmt.Errorf("%w: key %s", ErrNotFound, a.KeyID)
	case err != nil:
		return fmt.Errorf("store: creating alias: %w", err)
	}
	return nil
}

// DeleteAlias implements Store.
func (p *Postgres) DeleteAlias(ctx context.Context, name string) error {
	tag, err := p.pool.Exec(ctx, `DELETE FROM cloister_kms_aliases WHERE name = $1`, name)
	if err != nil {
		return fmt.Errorf("store: deleting alias: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%w: alias %s", ErrNotFound, name)
	}
	return nil
}

// GetAlias implements Store.
func (p *Postgres) GetAlias(ctx context.Context, name string) (Alias, error) {
	var data []byte
	err := p.pool.QueryRow(ctx, `SELECT data FROM cloister_kms_aliases WHERE name = $1`, name).Scan(&data)
	if errors.Is(err, pgx.ErrNoRows) {
		return Alias{}, fmt.Errorf("%w: alias %s", ErrNotFound, name)
	}
	if err != nil {
		return Alias{}, fmt.Errorf("store: reading alias: %w", err)
	}
	var a Alias
	if err := json.Unmarshal(data, &a); err != nil {
		return Alias{}, fmt.Errorf("store: decoding alias: %w", err)
	}
	return a, nil
}

// UpdateAlias implements Store (SELECT ... FOR UPDATE, then UPDATE).
func (p *Postgres) UpdateAlias(ctx context.Context, name, keyID string, at time.Time, check func(string) error) error {
	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		var data []byte
		err := tx.QueryRow(ctx, `SELECT data FROM cloister_kms_aliases WHERE name = $1 FOR UPDATE`, name).Scan(&data)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: alias %s", ErrNotFound, name)
		}
		if err != nil {
			return err
		}
		var a Alias
		if err := json.Unmarshal(data, &a); err != nil {
			return fmt.Errorf("store: decoding alias: %w", err)
		}
		if check != nil {
			if err := check(a.KeyID); err != nil {
				return err
			}
		}
		a.KeyID, a.UpdatedAt = keyID, at
		if data, err = json.Marshal(a); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE cloister_kms_aliases SET key_id = $2, data = $3 WHERE name = $1`, name, keyID, data)
		if isFKViolation(err) {
			return fmt.Errorf("%w: key %s", ErrNotFound, keyID)
		}
		return err
	})
	return err
}

// PutDenial implements Store.
func (p *Postgres) PutDenial(ctx context.Context, d Denial) error {
	data, err := json.Marshal(d)
	if err != nil {
		return err
	}
	_, err = p.pool.Exec(ctx, `INSERT INTO cloister_kms_denials (request_id, at, data) VALUES ($1, $2, $3)`, d.RequestID, d.At, data)
	if isUniqueViolation(err) {
		return fmt.Errorf("%w: denial %s", ErrExists, d.RequestID)
	}
	if err != nil {
		return fmt.Errorf("store: recording a denial: %w", err)
	}
	return nil
}

// GetDenial implements Store.
func (p *Postgres) GetDenial(ctx context.Context, requestID string) (Denial, error) {
	var data []byte
	err := p.pool.QueryRow(ctx, `SELECT data FROM cloister_kms_denials WHERE request_id = $1`, requestID).Scan(&data)
	if errors.Is(err, pgx.ErrNoRows) {
		return Denial{}, fmt.Errorf("%w: denial %s", ErrNotFound, requestID)
	}
	if err != nil {
		return Denial{}, fmt.Errorf("store: reading a denial: %w", err)
	}
	var d Denial
	if err := json.Unmarshal(data, &d); err != nil {
		return Denial{}, fmt.Errorf("store: decoding a denial: %w", err)
	}
	return d, nil
}

// PurgeDenials implements Store.
func (p *Postgres) PurgeDenials(ctx context.Context, t time.Time) (int, error) {
	tag, err := p.pool.Exec(ctx, `DELETE FROM cloister_kms_denials WHERE at < $1`, t)
	if err != nil {
		return 0, fmt.Errorf("store: purging denials: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// Ping implements Store.
func (p *Postgres) Ping(ctx context.Context) error {
	if err := p.pool.Ping(ctx); err != nil {
		return fmt.Errorf("store: PostgreSQL: %w", err)
	}
	return nil
}

// ListAliases implements Store.
func (p *Postgres) ListAliases(ctx context.Context) ([]Alias, error) {
	return listRows[Alias](ctx, p, `SELECT data FROM cloister_kms_aliases ORDER BY name`, "aliases")
}

// listRows runs query, whose rows are one JSON data column, and decodes
// every row.
func listRows[T any](ctx context.Context, p *Postgres, query, what string) ([]T, error) {
	rows, err := p.pool.Query(ctx, query)
	if err != nil {
		return nil, fmt.Errorf("store: listing %s: %w", what, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (T, error) {
		var x T
		var data []byte
		if err := r.Scan(&data); err != nil {
			return x, err
		}
		err := json.Unmarshal(data, &x)
		return x, err
	})
	if err != nil {
		return nil, fmt.Errorf("store: listing %s: %w", what, err)
	}
	return out, nil
}

// Close implements Store.
func (p *Postgres) Close() error {
	p.pool.Close()
	return nil
}
