package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cloister/cloister/internal/tools/gendocs/clidoc"
)

// TestCLIReferenceUpToDate fails when docs/cli/ differs from what the current
// command definitions render, so CI catches a help text changed without
// regenerating the reference.
func TestCLIReferenceUpToDate(t *testing.T) {
	var log bytes.Buffer
	err := run(true, "", &log)
	if errors.Is(err, clidoc.ErrOutOfDate) {
		t.Fatalf("%v\nregenerate it with: go run ./internal/tools/gendocs", err)
	}
	if err != nil {
		t.Fatalf("gendocs -check: %v\n%s", err, log.String())
	}
}

// TestCheckDetectsDrift generates the reference into a temporary directory,
// checks it, then changes one page and expects the check to fail.
func TestCheckDetectsDrift(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cli")
	var log bytes.Buffer
	if err := run(false, dir, &log); err != nil {
		t.Fatalf("gendocs -out: %v\n%s", err, log.String())
	}
	root := filepath.Join(dir, "cloister.md")
	page, err := os.ReadFile(root)
	if err != nil {
		t.Fatalf("generated reference has no root page: %v", err)
	}
	if err := run(true, dir, &log); err != nil {
		t.Fatalf("check of a freshly generated reference: %v\n%s", err, log.String())
	}
	if err := os.WriteFile(root, append(page, "edited by hand\n"...), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := run(true, dir, &log); !errors.Is(err, clidoc.ErrOutOfDate) {
		t.Fatalf("check after editing cloister.md = %v, want ErrOutOfDate", err)
	}
}
