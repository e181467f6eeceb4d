package main

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/cloister/cloister/internal/testenv"
)

// TestNoCgoDependencies checks that cloister-init depends on no package that
// needs cgo (package net, os/user, runtime/cgo), so that even a plain
// "go build ./cmd/cloister-init" with cgo enabled gives a static binary that
// can run as /init.
func TestNoCgoDependencies(t *testing.T) {
	goTool := testenv.LookPath(t, "go", "install Go and put it on PATH")
	out, err := exec.Command(goTool, "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	for _, pkg := range strings.Fields(string(out)) {
		switch pkg {
		case "net", "os/user", "runtime/cgo", "plugin":
			t.Errorf("cloister-init depends on %s, which links libc when cgo is enabled", pkg)
		}
	}
}
