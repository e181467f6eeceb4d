package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/internal/testenv"
)

func rootKey(t testing.TB) []byte {
	t.Helper()
	k := make([]byte, 32)
	rand.Read(k)
	return k
}

func backends(t *testing.T) map[string]func(t *testing.T) (open func(root []byte) (Store, error)) {
	return map[string]func(t *testing.T) (open func(root []byte) (Store, error)){
		"bbolt": func(t *testing.T) func([]byte) (Store, error) {
			path := filepath.Join(t.TempDir(), "sub", "kms.db")
			return func(root []byte) (Store, error) { return Open(context.Background(), "bbolt:"+path, root) }
		},
		"postgres": func(t *testing.T) func([]byte) (Store, error) {
			dsn := testenv.Postgres(t, "store")
			return func(root []byte) (Store, error) { return Open(context.Background(), dsn, root) }
		},
	}
}

func TestStore(t *testing.T) {
	for name, mk := range backends(t) {
		t.Run(name, func(t *testing.T) {
			open := mk(t)
			root := rootKey(t)
			s, err := open(root)
			if err != nil {
				t.Fatal(err)
			}
			conformance(t, s)
			s.Close()

			// Reopen with the same root key: data is still there.
			s, err = open(root)
			if err != nil {
				t.Fatal(err)
			}
			m, err := s.Material(context.Background(), "k2", 2)
			if err != nil || !bytes.Equal(m, bytes.Repeat([]byte{2}, 32)) {
				t.Fatalf("after reopen: %x, %v", m, err)
			}
			s.Close()

			// A different root key is refused.
			if s, err := open(rootKey(t)); !errors.Is(err, ErrRootKey) {
				if s != nil {
					s.Close()
				}
				t.Fatalf("wrong root key: %v", err)
			}
		})
	}
}

func conformance(t *testing.T, s Store) {
	ctx := context.Background()
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	k1 := Key{ID: "k1", ARN: "arn:aws:kms:us-east-1:111122223333:key/k1", Account: "111122223333", KeyUsage: "ENCRYPT_DECRYPT",
		KeySpec: "SYMMETRIC_DEFAULT", State: Enabled, CreatedAt: now, Policy: `{"x":1}`}
	if err := s.CreateKey(ctx, k1, bytes.Repeat([]byte{1}, 32)); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateKey(ctx, k1, bytes.Repeat([]byte{1}, 32)); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate key: %v", err)
	}
	k2 := k1
	k2.ID, k2.ARN = "k2", "arn:aws:kms:us-east-1:111122223333:key/k2"
	if err := s.CreateKey(ctx, k2, bytes.Repeat([]byte{9}, 32)); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetKey(ctx, "k1")
	want := k1
	want.CurrentVersion = 1
	if err != nil || !cmp.Equal(got, want) {
		t.Fatalf("GetKey: %v\n%s", err, cmp.Diff(want, got))
	}
	if _, err := s.GetKey(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetKey(nope): %v", err)
	}
	// Update, including an aborted one.
	up, err := s.UpdateKey(ctx, "k1", func(k *Key) error { k.State = Disabled; k.CurrentVersion = 99; return nil })
	if err != nil || up.State != Disabled || up.CurrentVersion != 1 {
		t.Fatalf("UpdateKey: %+v %v", up, err)
	}
	boom := errors.New("boom")
	if _, err := s.UpdateKey(ctx, "k1", func(k *Key) error { k.State = Enabled; return boom }); !errors.Is(err, boom) {
		t.Fatalf("aborted update: %v", err)
	}
	if g, _ := s.GetKey(ctx, "k1"); g.State != Disabled {
		t.Fatalf("aborted update was applied")
	}
	// Rotation.
	rk, err := s.Rotate(ctx, "k2", bytes.Repeat([]byte{2}, 32), func(k *Key) error {
		k.Rotations = append(k.Rotations, Rotation{Version: k.CurrentVersion + 1, CreatedAt: now, OnDemand: true})
		return nil
	})
	if err != nil || rk.CurrentVersion != 2 || len(rk.Rotations) != 1 {
		t.Fatalf("Rotate: %+v %v", rk, err)
	}
	for v, b := range map[uint32]byte{1: 9, 2: 2} {
		m, err := s.Material(ctx, "k2", v)
		if err != nil || !bytes.Equal(m, bytes.Repeat([]byte{b}, 32)) {
			t.Fatalf("Material(k2, %d) = %x, %v", v, m, err)
		}
	}
	if _, err := s.Material(ctx, "k2", 3); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Material v3: %v", err)
	}
	// Aliases.
	if err := s.CreateAlias(ctx, Alias{Name: "alias/b", KeyID: "k1", CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateAlias(ctx, Alias{Name: "alias/a", KeyID: "k2", CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateAlias(ctx, Alias{Name: "alias/a", KeyID: "k1"}); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate alias: %v", err)
	}
	if err := s.CreateAlias(ctx, Alias{Name: "alias/c", KeyID: "nope"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("alias to missing key: %v", err)
	}
	as, err := s.ListAliases(ctx)
	if err != nil || len(as) != 2 || as[0].Name != "alias/a" || as[1].KeyID != "k1" {
		t.Fatalf("ListAliases: %+v %v", as, err)
	}
	if a, err := s.GetAlias(ctx, "alias/a"); err != nil || a.KeyID != "k2" || !a.CreatedAt.Equal(now) {
		t.Fatalf("GetAlias: %+v %v", a, err)
	}
	// UpdateAlias: the check sees the old target and can abort.
	later := now.Add(time.Hour)
	if err := s.UpdateAlias(ctx, "alias/a", "k1", later, func(old string) error {
		if old != "k2" {
			return fmt.Errorf("old target %q", old)
		}
		return boom
	}); !errors.Is(err, boom) {
		t.Fatalf("aborted UpdateAlias: %v", err)
	}
	if err := s.UpdateAlias(ctx, "alias/a", "k1", later, nil); err != nil {
		t.Fatal(err)
	}
	if a, err := s.GetAlias(ctx, "alias/a"); err != nil || a.KeyID != "k1" || !a.UpdatedAt.Equal(later) || !a.CreatedAt.Equal(now) {
		t.Fatalf("after UpdateAlias: %+v %v", a, err)
	}
	if err := s.UpdateAlias(ctx, "alias/a", "nope", later, nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("UpdateAlias to a missing key: %v", err)
	}
	if err := s.UpdateAlias(ctx, "alias/zz", "k1", later, nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("UpdateAlias of a missing alias: %v", err)
	}
	// Tags and grants round-trip.
	tagged, err := s.UpdateKey(ctx, "k2", func(k *Key) error {
		k.Tags = map[string]string{"team": "a", "empty": ""}
		k.Grants = []Grant{{ID: "g1", GranteePrincipal: "arn:aws:iam::111122223333:role/x", IssuingAccount: "111122223333",
			Operations: []string{"Decrypt"}, CreatedAt: now, ContextSubset: map[string]string{"a": "b"}}}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if g, err := s.GetKey(ctx, "k2"); err != nil || !cmp.Equal(g, tagged) {
		t.Fatalf("tags and grants: %v\n%s", err, cmp.Diff(tagged, g))
	}
	// An aborted rotation adds no version.
	if _, err := s.Rotate(ctx, "k2", bytes.Repeat([]byte{3}, 32), func(*Key) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("aborted Rotate: %v", err)
	}
	if _, err := s.Material(ctx, "k2", 3); !errors.Is(err, ErrNotFound) {
		t.Fatalf("aborted Rotate stored material: %v", err)
	}
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	// Denials.
	d := Denial{RequestID: "r1", At: now, Account: "111122223333", Principal: "p", Action: "kms:Decrypt", KeyID: "k2", Reason: "no", Explanation: []byte(`{"decision":"ImplicitDeny"}`)}
	if err := s.PutDenial(ctx, d); err != nil {
		t.Fatal(err)
	}
	if err := s.PutDenial(ctx, d); !errors.Is(err, ErrExists) {
		t.Fatalf("PutDenial twice: %v", err)
	}
	if err := s.PutDenial(ctx, Denial{RequestID: "r2", At: later}); err != nil {
		t.Fatal(err)
	}
	if g, err := s.GetDenial(ctx, "r1"); err != nil || !cmp.Equal(g, d) {
		t.Fatalf("GetDenial: %v\n%s", err, cmp.Diff(d, g))
	}
	if n, err := s.PurgeDenials(ctx, now.Add(time.Minute)); err != nil || n != 1 {
		t.Fatalf("PurgeDenials: %d %v", n, err)
	}
	if _, err := s.GetDenial(ctx, "r1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetDenial after purge: %v", err)
	}
	if _, err := s.GetDenial(ctx, "r2"); err != nil {
		t.Fatalf("a later denial was purged: %v", err)
	}
	if err := s.DeleteAlias(ctx, "alias/a"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteAlias(ctx, "alias/a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("DeleteAlias twice: %v", err)
	}
	ks, err := s.ListKeys(ctx)
	if err != nil || len(ks) != 2 || ks[0].ID != "k1" || ks[1].ID != "k2" {
		t.Fatalf("ListKeys: %+v %v", ks, err)
	}
	// Deleting a key drops its material and aliases.
	if err := s.DeleteKey(ctx, "k1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Material(ctx, "k1", 1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("material after delete: %v", err)
	}
	if _, err := s.GetAlias(ctx, "alias/b"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("alias after delete: %v", err)
	}
	if err := s.DeleteKey(ctx, "k1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("DeleteKey twice: %v", err)
	}
	// Concurrent rotations serialise: versions are unique and dense.
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.Rotate(ctx, "k2", bytes.Repeat([]byte{2}, 32), nil); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if k, _ := s.GetKey(ctx, "k2"); k.CurrentVersion != 10 {
		t.Fatalf("after concurrent rotations: version %d, want 10", k.CurrentVersion)
	}
}

func TestRootKeyLoading(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "root.key")
	if err := CreateRootKeyFile(p); err != nil {
		t.Fatal(err)
	}
	if err := CreateRootKeyFile(p); err == nil {
		t.Fatal("CreateRootKeyFile overwrote an existing file")
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode())
	}
	k, err := LoadRootKey(p)
	if err != nil || len(k) != 32 {
		t.Fatalf("LoadRootKey: %v", err)
	}
	t.Setenv(RootKeyEnv, "")
	if _, err := LoadRootKey(""); !errors.Is(err, ErrRootKey) {
		t.Fatalf("no key: %v", err)
	}
	t.Setenv(RootKeyEnv, strings.Repeat("ab", 32))
	if k, err := LoadRootKey(""); err != nil || k[0] != 0xab {
		t.Fatalf("env key: %x %v", k, err)
	}
	t.Setenv(RootKeyEnv, "c2hvcnQ=")
	if _, err := LoadRootKey(""); !errors.Is(err, ErrRootKey) {
		t.Fatalf("short env key: %v", err)
	}
}

func TestMaterialSealedAtRest(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kms.db")
	s, err := OpenBolt(path, rootKey(t))
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("THIS-IS-SECRET-KEY-MATERIAL-1234")
	if err := s.CreateKey(context.Background(), Key{ID: "k"}, secret); err != nil {
		t.Fatal(err)
	}
	s.Close()
	raw, _ := os.ReadFile(path)
	if bytes.Contains(raw, secret) {
		t.Fatal("key material is stored in clear")
	}
}

func BenchmarkBoltMaterial(b *testing.B) {
	s, err := OpenBolt(filepath.Join(b.TempDir(), "kms.db"), rootKey(b))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	s.CreateKey(ctx, Key{ID: "k"}, make([]byte, 32))
	for b.Loop() {
		if _, err := s.Material(ctx, "k", 1); err != nil {
			b.Fatal(err)
		}
	}
}
