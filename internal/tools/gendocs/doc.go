// Command gendocs writes the CLI reference in docs/cli/ from the cobra command
// definitions of cmd/cloister, or checks that it is up to date.
//
//	go run ./internal/tools/gendocs           # rewrite docs/cli/
//	go run ./internal/tools/gendocs -check    # exit 1 when docs/cli/ is stale
//
// The command tree is built by cmd/cloister's own (unexported) constructors,
// which no other package can import. gendocs therefore builds cmd/cloister
// with one extra file added through "go build -overlay" — nothing in the
// source tree is touched — that registers a hidden "__gendocs DIR" subcommand
// rendering the tree with package clidoc; it then runs that binary.
//
// TestCLIReferenceUpToDate fails when docs/cli/ differs from what the current
// command definitions render, so CI catches a changed help text whose
// reference was not regenerated.
package main
