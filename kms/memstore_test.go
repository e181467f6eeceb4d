package kms

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/cloister/cloister/kms/store"
)

// memStore is an in-memory store.Store for fuzzing (no sealing, no disk).
type memStore struct {
	mu       sync.Mutex
	keys     map[string]store.Key
	material map[string][]byte
	aliases  map[string]store.Alias
}

func newMemStore() *memStore {
	return &memStore{keys: map[string]store.Key{}, material: map[string][]byte{}, aliases: map[string]store.Alias{}}
}

func mkey(id string, v uint32) string { return fmt.Sprintf("%s/%d", id, v) }

func (m *memStore) CreateKey(_ context.Context, k store.Key, secret []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.keys[k.ID]; ok {
		return store.ErrExists
	}
	k.CurrentVersion = 1
	m.keys[k.ID] = k
	m.material[mkey(k.ID, 1)] = secret
	return nil
}

func (m *memStore) GetKey(_ context.Context, id string) (store.Key, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k, ok := m.keys[id]
	if !ok {
		return store.Key{}, store.ErrNotFound
	}
	return k, nil
}

func (m *memStore) ListKeys(context.Context) ([]store.Key, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []store.Key
	for _, k := range m.keys {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

func (m *memStore) UpdateKey(_ context.Context, id string, fn func(*store.Key) error) (store.Key, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k, ok := m.keys[id]
	if !ok {
		return store.Key{}, store.ErrNotFound
	}
	v := k.CurrentVersion
	if err := fn(&k); err != nil {
		return store.Key{}, err
	}
	k.ID, k.CurrentVersion = id, v
	m.keys[id] = k
	return k, nil
}

func (m *memStore) Rotate(_ context.Context, id string, secret []byte, fn func(*store.Key) error) (store.Key, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k, ok := m.keys[id]
	if !ok {
		return store.Key{}, store.ErrNotFound
	}
	next := k.CurrentVersion + 1
	if fn != nil {
		if err := fn(&k); err != nil {
			return store.Key{}, err
		}
	}
	k.ID, k.CurrentVersion = id, next
	m.keys[id] = k
	m.material[mkey(id, next)] = secret
	return k, nil
}

func (m *memStore) Material(_ context.Context, id string, v uint32) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.material[mkey(id, v)]
	if !ok {
		return nil, store.ErrNotFound
	}
	return s, nil
}

func (m *memStore) DeleteKey(_ context.Context, id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.keys[id]; !ok {
		return store.ErrNotFound
	}
	delete(m.keys, id)
	for n, a := range m.aliases {
		if a.KeyID == id {
			delete(m.aliases, n)
		}
	}
	return nil
}

func (m *memStore) CreateAlias(_ context.Context, a store.Alias) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.keys[a.KeyID]; !ok {
		return store.ErrNotFound
	}
	if _, ok := m.aliases[a.Name]; ok {
		return store.ErrExists
	}
	m.aliases[a.Name] = a
	return nil
}

func (m *memStore) DeleteAlias(_ context.Context, name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.aliases[name]; !ok {
		return store.ErrNotFound
	}
	delete(m.aliases, name)
	return nil
}

func (m *memStore) GetAlias(_ context.Context, name string) (store.Alias, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	a, ok := m.aliases[name]
	if !ok {
		return store.Alias{}, store.ErrNotFound
	}
	return a, nil
}

func (m *memStore) ListAliases(context.Context) ([]store.Alias, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []store.Alias
	for _, a := range m.aliases {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (m *memStore) UpdateAlias(_ context.Context, name, keyID string, at time.Time, check func(string) error) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	a, ok := m.aliases[name]
	if !ok {
		return store.ErrNotFound
	}
	if _, ok := m.keys[keyID]; !ok {
		return store.ErrNotFound
	}
	if check != nil {
		if err := check(a.KeyID); err != nil {
			return err
		}
	}
	a.KeyID, a.UpdatedAt = keyID, at
	m.aliases[name] = a
	return nil
}

func (m *memStore) Ping(context.Context) error { return nil }

func (m *memStore) PutDenial(context.Context, store.Denial) error { return nil }

func (m *memStore) GetDenial(context.Context, string) (store.Denial, error) {
	return store.Denial{}, store.ErrNotFound
}

func (m *memStore) PurgeDenials(context.Context, time.Time) (int, error) { return 0, nil }

func (m *memStore) Close() error { return nil }

// reset empties the store when it has grown past n keys.
func (m *memStore) reset(n int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.keys) > n {
		m.keys, m.material, m.aliases = map[string]store.Key{}, map[string][]byte{}, map[string]store.Alias{}
	}
}
