package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

var (
	bucketMeta     = []byte("meta")
	bucketKeys     = []byte("keys")
	bucketMaterial = []byte("material")
	bucketAliases  = []byte("aliases")
	bucketDenials  = []byte("denials")
	metaCheck      = []byte("root-key-check")
	metaSchema     = []byte("schema")
)

const boltSchema = 1

// Bolt is the bbolt-backed Store: one file, every write a transaction that
// bbolt fsyncs on commit.
type Bolt struct {
	db   *bolt.DB
	seal *sealer
}

var _ Store = (*Bolt)(nil)

// OpenBolt opens (creating if needed, with mode 0600 and parent directory
// 0700) the bbolt store at path, sealing material under rootKey (32 bytes).
// A store created with another root key is refused with ErrRootKey. The
// file lock waits at most 10 seconds for another process to release it.
func OpenBolt(path string, rootKey []byte) (*Bolt, error) {
	s, err := newSealer(rootKey)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 10 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("store: opening %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketMeta, bucketKeys, bucketMaterial, bucketAliases, bucketDenials} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		if v := meta.Get(metaSchema); v != nil && (len(v) != 4 || binary.BigEndian.Uint32(v) > boltSchema) {
			return fmt.Errorf("store: %s has an unknown schema version", path)
		}
		if err := meta.Put(metaSchema, binary.BigEndian.AppendUint32(nil, boltSchema)); err != nil {
			return err
		}
		if c := meta.Get(metaCheck); c != nil {
			return s.verifyCheck(c)
		}
		c, err := s.seal(checkID, 0, []byte(checkID))
		if err != nil {
			return err
		}
		return meta.Put(metaCheck, c)
	})
	if err != nil {
		db.Close()
		return nil, err
	}
	return &Bolt{db: db, seal: s}, nil
}

func materialKey(id string, version uint32) []byte {
	return binary.BigEndian.AppendUint32([]byte(id+"\x00"), version)
}

func getKey(tx *bolt.Tx, id string) (Key, error) {
	v := tx.Bucket(bucketKeys).Get([]byte(id))
	if v == nil {
		return Key{}, fmt.Errorf("%w: key %s", ErrNotFound, id)
	}
	var k Key
	if err := json.Unmarshal(v, &k); err != nil {
		return Key{}, fmt.Errorf("store: decoding key %s: %w", id, err)
	}
	return k, nil
}

func putKey(tx *bolt.Tx, k Key) error {
	b, err := json.Marshal(k)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketKeys).Put([]byte(k.ID), b)
}

// CreateKey implements Store.
func (b *Bolt) CreateKey(ctx context.Context, k Key, secret []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	k.CurrentVersion = 1
	sealed, err := b.seal.seal(k.ID, 1, secret)
	if err != nil {
		return err
	}
	return b.db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketKeys).Get([]byte(k.ID)) != nil {
			return fmt.Errorf("%w: key %s", ErrExists, k.ID)
		}
		if err := putKey(tx, k); err != nil {
			return err
		}
		return tx.Bucket(bucketMaterial).Put(materialKey(k.ID, 1), sealed)
	})
}

// GetKey implements Store.
func (b *Bolt) GetKey(ctx context.Context, id string) (Key, error) {
	if err := ctx.Err(); err != nil {
		return Key{}, err
	}
	var k Key
	err := b.db.View(func(tx *bolt.Tx) error {
		var err error
		k, err = getKey(tx, id)
		return err
	})
	if err != nil {
		return Key{}, err
	}
	return k, nil
}

// ListKeys implements Store.
func (b *Bolt) ListKeys(ctx context.Context) ([]Key, error) {
	return listBucket[Key](ctx, b, bucketKeys, "keys")
}

// UpdateKey implements Store.
func (b *Bolt) UpdateKey(ctx context.Context, id string, fn func(*Key) error) (Key, error) {
	if err := ctx.Err(); err != nil {
		return Key{}, err
	}
	var k Key
	err := b.db.Update(func(tx *bolt.Tx) error {
		var err error
		if k, err = getKey(tx, id); err != nil {
			return err
		}
		ver := k.CurrentVersion
		if err := fn(&k); err != nil {
			return err
		}
		k.ID, k.CurrentVersion = id, ver
		return putKey(tx, k)
	})
	if err != nil {
		return Key{}, err
	}
	return k, nil
}

// Rotate implements Store.
func (b *Bolt) Rotate(ctx context.Context, id string, secret []byte, fn func(*Key) error) (Key, error) {
	if err := ctx.Err(); err != nil {
		return Key{}, err
	}
	var k Key
	err := b.db.Update(func(tx *bolt.Tx) error {
		var err error
		if k, err = getKey(tx, id); err != nil {
			return err
		}
		next := k.CurrentVersion + 1
		if fn != nil {
			if err := fn(&k); err != nil {
				return err
			}
		}
		sealed, err := b.seal.seal(id, next, secret)
		if err != nil {
			return err
		}
		if err := tx.Bucket(bucketMaterial).Put(materialKey(id, next), sealed); err != nil {
			return err
		}
		k.ID, k.CurrentVersion = id, next
		return putKey(tx, k)
	})
	if err != nil {
		return Key{}, err
	}
	return k, nil
}

// Material implements Store.
func (b *Bolt) Material(ctx context.Context, id string, version uint32) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var sealed []byte
	err := b.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketMaterial).Get(materialKey(id, version))
		if v == nil {
			return fmt.Errorf("%w: material %s version %d", ErrNotFound, id, version)
		}
		sealed = bytes.Clone(v)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return b.seal.open(id, version, sealed)
}

// DeleteKey implements Store.
func (b *Bolt) DeleteKey(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return b.db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketKeys).Get([]byte(id)) == nil {
			return fmt.Errorf("%w: key %s", ErrNotFound, id)
		}
		if err := tx.Bucket(bucketKeys).Delete([]byte(id)); err != nil {
			return err
		}
		prefix := []byte(id + "\x00")
		c := tx.Bucket(bucketMaterial).Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Seek(prefix) {
			if err := c.Delete(); err != nil {
				return err
			}
		}
		var drop [][]byte
		err := tx.Bucket(bucketAliases).ForEach(func(k, v []byte) error {
			var a Alias
			if json.Unmarshal(v, &a) == nil && a.KeyID == id {
				drop = append(drop, bytes.Clone(k))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range drop {
			if err := tx.Bucket(bucketAliases).Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
}

// CreateAlias implements Store.
func (b *Bolt) CreateAlias(ctx context.Context, a Alias) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return b.db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketKeys).Get([]byte(a.KeyID)) == nil {
			return fmt.Errorf("%w: key %s", ErrNotFound, a.KeyID)
		}
		if tx.Bucket(bucketAliases).Get([]byte(a.Name)) != nil {
			return fmt.Errorf("%w: alias %s", ErrExists, a.Name)
		}
		v, err := json.Marshal(a)
		if err != nil {
			return err
		}
		return tx.Bucket(bucketAliases).Put([]byte(a.Name), v)
	})
}

// DeleteAlias implements Store.
func (b *Bolt) DeleteAlias(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return b.db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketAliases).Get([]byte(name)) == nil {
			return fmt.Errorf("%w: alias %s", ErrNotFound, name)
		}
		return tx.Bucket(bucketAliases).Delete([]byte(name))
	})
}

// GetAlias implements Store.
func (b *Bolt) GetAlias(ctx context.Context, name string) (Alias, error) {
	if err := ctx.Err(); err != nil {
		return Alias{}, err
	}
	var a Alias
	err := b.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketAliases).Get([]byte(name))
		if v == nil {
			return fmt.Errorf("%w: alias %s", ErrNotFound, name)
		}
		return json.Unmarshal(v, &a)
	})
	if err != nil {
		return Alias{}, err
	}
	return a, nil
}

// UpdateAlias implements Store.
func (b *Bolt) UpdateAlias(ctx context.Context, name, keyID string, at time.Time, check func(string) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return b.db.Update(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketAliases).Get([]byte(name))
		if v == nil {
			return fmt.Errorf("%w: alias %s", ErrNotFound, name)
		}
		if tx.Bucket(bucketKeys).Get([]byte(keyID)) == nil {
			return fmt.Errorf("%w: key %s", ErrNotFound, keyID)
		}
		var a Alias
		if err := json.Unmarshal(v, &a); err != nil {
			return fmt.Errorf("store: decoding alias: %w", err)
		}
		if check != nil {
			if err := check(a.KeyID); err != nil {
				return err
			}
		}
		a.KeyID, a.UpdatedAt = keyID, at
		nv, err := json.Marshal(a)
		if err != nil {
			return err
		}
		return tx.Bucket(bucketAliases).Put([]byte(name), nv)
	})
}

// PutDenial implements Store.
func (b *Bolt) PutDenial(ctx context.Context, d Denial) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	v, err := json.Marshal(d)
	if err != nil {
		return err
	}
	return b.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketDenials)
		if bk.Get([]byte(d.RequestID)) != nil {
			return fmt.Errorf("%w: denial %s", ErrExists, d.RequestID)
		}
		return bk.Put([]byte(d.RequestID), v)
	})
}

// GetDenial implements Store.
func (b *Bolt) GetDenial(ctx context.Context, requestID string) (Denial, error) {
	if err := ctx.Err(); err != nil {
		return Denial{}, err
	}
	var d Denial
	err := b.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketDenials).Get([]byte(requestID))
		if v == nil {
			return fmt.Errorf("%w: denial %s", ErrNotFound, requestID)
		}
		return json.Unmarshal(v, &d)
	})
	if err != nil {
		return Denial{}, err
	}
	return d, nil
}

// PurgeDenials implements Store (a scan: denials are few and short-lived).
func (b *Bolt) PurgeDenials(ctx context.Context, t time.Time) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	n := 0
	err := b.db.Update(func(tx *bolt.Tx) error {
		var drop [][]byte
		err := tx.Bucket(bucketDenials).ForEach(func(k, v []byte) error {
			var d Denial
			if json.Unmarshal(v, &d) != nil || d.At.Before(t) {
				drop = append(drop, bytes.Clone(k))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range drop {
			if err := tx.Bucket(bucketDenials).Delete(k); err != nil {
				return err
			}
		}
		n = len(drop)
		return nil
	})
	return n, err
}

// Ping implements Store: the database is open.
func (b *Bolt) Ping(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return b.db.View(func(*bolt.Tx) error { return nil })
}

// ListAliases implements Store.
func (b *Bolt) ListAliases(ctx context.Context) ([]Alias, error) {
	return listBucket[Alias](ctx, b, bucketAliases, "aliases")
}

// listBucket decodes every JSON value of bucket, in key order.
func listBucket[T any](ctx context.Context, b *Bolt, bucket []byte, what string) ([]T, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out []T
	err := b.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucket).ForEach(func(_, v []byte) error {
			var x T
			if err := json.Unmarshal(v, &x); err != nil {
				return err
			}
			out = append(out, x)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("store: listing %s: %w", what, err)
	}
	return out, nil
}

// Close implements Store.
func (b *Bolt) Close() error {
	return b.db.Close()
}
