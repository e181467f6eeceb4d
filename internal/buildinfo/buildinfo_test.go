package buildinfo

import (
	"strings"
	"testing"
)

func TestStringNamesVersionAndCommit(t *testing.T) {
	s := String()
	if !strings.HasPrefix(s, Version()+" (commit ") || !strings.HasSuffix(s, ")") {
		t.Fatalf("String() = %q, want %q (commit …)", s, Version())
	}
	if Version() == "" || Commit() == "" {
		t.Fatalf("empty version %q or commit %q", Version(), Commit())
	}
}
