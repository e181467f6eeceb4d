package store

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
)

// Sentinel errors.
var (
	// ErrNotFound: no such key, alias or material version.
	ErrNotFound = errors.New("store: not found")
	// ErrExists: the key id or alias name is already taken.
	ErrExists = errors.New("store: already exists")
	// ErrRootKey: the root key is malformed, or is not the one the store's
	// material was sealed with (or the sealed data is corrupt).
	ErrRootKey = errors.New("store: wrong or malformed root key")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("store: closed")
)

// KeyState is a key's lifecycle state (AWS KeyState values).
type KeyState string

// Key states used by the key service.
const (
	Enabled         KeyState = "Enabled"
	Disabled        KeyState = "Disabled"
	PendingDeletion KeyState = "PendingDeletion"
)

// Key is a key's metadata. Key material is stored separately, sealed.
type Key struct {
	ID          string    `json:"id"`
	ARN         string    `json:"arn"`
	Account     string    `json:"account"`
	Description string    `json:"description"`
	KeyUsage    string    `json:"key_usage"`
	KeySpec     string    `json:"key_spec"`
	State       KeyState  `json:"state"`
	CreatedAt   time.Time `json:"created_at"`
	// DeletionDate is when a PendingDeletion key is purged.
	DeletionDate time.Time `json:"deletion_date,omitzero"`
	// PendingWindowDays is the deletion waiting period asked for.
	PendingWindowDays int `json:"pending_window_days,omitempty"`
	// Policy is the key policy document, as stored by PutKeyPolicy.
	Policy string `json:"policy"`
	// RotationEnabled and RotationPeriodDays control automatic rotation;
	// NextRotation is when it is next due.
	RotationEnabled    bool      `json:"rotation_enabled"`
	RotationPeriodDays int       `json:"rotation_period_days,omitempty"`
	NextRotation       time.Time `json:"next_rotation,omitzero"`
	// CurrentVersion is the material version used for new encryptions
	// (versions start at 1 and only grow).
	CurrentVersion uint32 `json:"current_version"`
	// Rotations lists when each version after the first was created.
	Rotations []Rotation `json:"rotations,omitempty"`
	// Tags are the key's tags (TagResource), by tag key.
	Tags map[string]string `json:"tags,omitempty"`
	// Grants are the key's grants (CreateGrant), oldest first.
	Grants []Grant `json:"grants,omitempty"`
}

// Grant is one grant on a key: GranteePrincipal may call Operations on
// the key, under the encryption-context constraints.
type Grant struct {
	ID                string    `json:"id"`
	Name              string    `json:"name,omitempty"`
	GranteePrincipal  string    `json:"grantee"`
	RetiringPrincipal string    `json:"retiring,omitempty"`
	IssuingAccount    string    `json:"issuing_account"`
	Operations        []string  `json:"operations"`
	CreatedAt         time.Time `json:"created_at"`
	// ContextSubset and ContextEquals are the EncryptionContextSubset and
	// EncryptionContextEquals constraints (nil: none).
	ContextSubset map[string]string `json:"context_subset,omitempty"`
	ContextEquals map[string]string `json:"context_equals,omitempty"`
}

// Rotation records one rotation.
type Rotation struct {
	Version   uint32    `json:"version"`
	CreatedAt time.Time `json:"created_at"`
	OnDemand  bool      `json:"on_demand"`
}

// Denial is why one request was denied: what `cloister kms explain
// --request-id` shows.
type Denial struct {
	RequestID string    `json:"request_id"`
	At        time.Time `json:"at"`
	Account   string    `json:"account"`
	Principal string    `json:"principal"`
	Action    string    `json:"action"`
	// KeyID is the key's id and KeyARN its ARN ("" when the request was
	// denied before a key was resolved).
	KeyID  string `json:"key_id,omitempty"`
	KeyARN string `json:"key_arn,omitempty"`
	// Reason is the one-line reason; Explanation, when the key policy
	// decided, is the statement-by-statement reasoning (JSON).
	Reason      string `json:"reason"`
	Explanation []byte `json:"explanation,omitempty"`
}

// Alias maps an alias name ("alias/...") to a key id.
type Alias struct {
	Name      string    `json:"name"`
	KeyID     string    `json:"key_id"`
	CreatedAt time.Time `json:"created_at"`
	// UpdatedAt is when UpdateAlias last changed the target (zero: never).
	UpdatedAt time.Time `json:"updated_at,omitzero"`
}

// Store persists keys, aliases and versioned key material. Implementations
// seal material with AES-256-GCM under a root key before it reaches disk,
// make every method atomic and durable on return, and are safe for
// concurrent use.
type Store interface {
	// CreateKey stores a new key with material version 1 (secret).
	// k.CurrentVersion is set to 1. ErrExists if the id is taken.
	CreateKey(ctx context.Context, k Key, secret []byte) error
	// GetKey returns a key's metadata, ErrNotFound if absent.
	GetKey(ctx context.Context, id string) (Key, error)
	// ListKeys returns every key, sorted by id.
	ListKeys(ctx context.Context) ([]Key, error)
	// UpdateKey applies fn to the key inside one transaction and stores the
	// result; fn's error aborts the update and is returned as is. The id
	// and CurrentVersion cannot be changed through it.
	UpdateKey(ctx context.Context, id string, fn func(*Key) error) (Key, error)
	// Rotate adds material version CurrentVersion+1 (secret), makes it
	// current and applies fn (may be nil) to the key, atomically. fn sees
	// the key as stored (locked); its error aborts the rotation and is
	// returned as is (so a caller can re-check, under the lock, that a
	// rotation is still due).
	Rotate(ctx context.Context, id string, secret []byte, fn func(*Key) error) (Key, error)
	// Material returns the secret of one material version.
	Material(ctx context.Context, id string, version uint32) ([]byte, error)
	// DeleteKey removes a key, all its material and its aliases.
	DeleteKey(ctx context.Context, id string) error
	// CreateAlias adds an alias for an existing key; ErrExists if the name
	// is taken, ErrNotFound if the key is absent.
	CreateAlias(ctx context.Context, a Alias) error
	// DeleteAlias removes an alias; ErrNotFound if absent.
	DeleteAlias(ctx context.Context, name string) error
	// GetAlias returns an alias; ErrNotFound if absent.
	GetAlias(ctx context.Context, name string) (Alias, error)
	// UpdateAlias points an existing alias at another existing key, after
	// check (may be nil) accepted the alias's current key id, atomically;
	// ErrNotFound if the alias or the key is absent; check's error is
	// returned as is.
	UpdateAlias(ctx context.Context, name, keyID string, at time.Time, check func(oldKeyID string) error) error
	// ListAliases returns the aliases sorted by name.
	ListAliases(ctx context.Context) ([]Alias, error)
	// Ping checks that the store can serve requests.
	Ping(ctx context.Context) error
	// PutDenial records why a request was denied, under its request id
	// (ErrExists if the id is taken).
	PutDenial(ctx context.Context, d Denial) error
	// GetDenial returns a recorded denial; ErrNotFound if absent.
	GetDenial(ctx context.Context, requestID string) (Denial, error)
	// PurgeDenials deletes denials recorded before t and returns how many.
	PurgeDenials(ctx context.Context, t time.Time) (int, error)
	// Close releases the store.
	Close() error
}

// RootKeyEnv is the environment variable that may hold the root key.
const RootKeyEnv = "CLOISTER_KMS_ROOT_KEY"

// ParseRootKey decodes a 32-byte root key given raw, as 64 hex digits or
// as standard base64 (surrounding white space ignored).
func ParseRootKey(b []byte) ([]byte, error) {
	if len(b) == 32 {
		return append([]byte(nil), b...), nil
	}
	s := strings.TrimSpace(string(b))
	if k, err := hex.DecodeString(s); err == nil && len(k) == 32 {
		return k, nil
	}
	if k, err := base64.StdEncoding.DecodeString(s); err == nil && len(k) == 32 {
		return k, nil
	}
	return nil, fmt.Errorf("%w: need 32 bytes raw, as 64 hex digits or as base64", ErrRootKey)
}

// LoadRootKey returns the root key from the file at path when path is not
// empty, else from $CLOISTER_KMS_ROOT_KEY, else ErrRootKey.
func LoadRootKey(path string) ([]byte, error) {
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("store: reading root key: %w", err)
		}
		k, err := ParseRootKey(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return k, nil
	}
	if v := os.Getenv(RootKeyEnv); v != "" {
		k, err := ParseRootKey([]byte(v))
		if err != nil {
			return nil, fmt.Errorf("$%s: %w", RootKeyEnv, err)
		}
		return k, nil
	}
	return nil, fmt.Errorf("%w: no root key file given and $%s is not set", ErrRootKey, RootKeyEnv)
}

// CreateRootKeyFile writes a fresh random root key (hex) to path with mode
// 0600, failing if the file exists.
func CreateRootKeyFile(path string) error {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("store: creating root key file: %w", err)
	}
	if _, err := f.WriteString(hex.EncodeToString(k) + "\n"); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// sealer encrypts key material with AES-256-GCM under the root key; the
// additional data binds each blob to its key id and version.
type sealer struct{ aead cipher.AEAD }

func newSealer(root []byte) (*sealer, error) {
	if len(root) != 32 {
		return nil, fmt.Errorf("%w: root key must be 32 bytes, got %d", ErrRootKey, len(root))
	}
	b, err := aes.NewCipher(root)
	if err != nil {
		return nil, err
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		return nil, err
	}
	return &sealer{g}, nil
}

func aad(id string, version uint32) []byte {
	a := binary.BigEndian.AppendUint32([]byte("cloister-kms-material\x00"+id+"\x00"), version)
	return a
}

func (s *sealer) seal(id string, version uint32, secret []byte) ([]byte, error) {
	nonce := make([]byte, s.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return s.aead.Seal(nonce, nonce, secret, aad(id, version)), nil
}

func (s *sealer) open(id string, version uint32, blob []byte) ([]byte, error) {
	n := s.aead.NonceSize()
	if len(blob) < n+s.aead.Overhead() {
		return nil, fmt.Errorf("%w: sealed material too short", ErrRootKey)
	}
	pt, err := s.aead.Open(nil, blob[:n], blob[n:], aad(id, version))
	if err != nil {
		return nil, fmt.Errorf("%w: cannot unseal material of %s version %d", ErrRootKey, id, version)
	}
	return pt, nil
}

// checkValue is sealed under the root key at store creation so a later open
// with a different root key fails immediately.
const checkID = "root-key-check"

func (s *sealer) verifyCheck(blob []byte) error {
	pt, err := s.open(checkID, 0, blob)
	if err != nil {
		return fmt.Errorf("%w: the store was created with a different root key", ErrRootKey)
	}
	if string(pt) != checkID {
		return fmt.Errorf("%w: root key check value corrupt", ErrRootKey)
	}
	return nil
}

// Open opens the store named by spec: "bbolt:PATH" (or a bare path) for
// the bbolt store, "postgres://..." or "postgresql://..." for PostgreSQL.
func Open(ctx context.Context, spec string, rootKey []byte) (Store, error) {
	switch {
	case strings.HasPrefix(spec, "postgres://"), strings.HasPrefix(spec, "postgresql://"):
		return OpenPostgres(ctx, spec, rootKey)
	case strings.HasPrefix(spec, "bbolt:"):
		return OpenBolt(strings.TrimPrefix(spec, "bbolt:"), rootKey)
	case spec != "" && !strings.Contains(spec, "://"):
		return OpenBolt(spec, rootKey)
	}
	return nil, fmt.Errorf("store: unknown store %q (want bbolt:PATH or postgres://...)", spec)
}
