// Package store persists the key service's state: keys (metadata, policy,
// rotation and deletion schedule), aliases and versioned key material.
//
// Two implementations share the [Store] interface: [Bolt] (a single bbolt
// file, fsync on every commit) and [Postgres] (pgx/v5, schema migrations in
// code, one transaction per call). Both seal key material with AES-256-GCM
// under a 32-byte root key ([LoadRootKey]: a file or $CLOISTER_KMS_ROOT_KEY)
// with the key id and version as additional data, and record a sealed check
// value so opening a store with the wrong root key fails at once.
package store
