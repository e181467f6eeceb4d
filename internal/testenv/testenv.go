// Package testenv decides what a test does when a prerequisite (root, QEMU,
// a kernel image, PostgreSQL, Chromium, …) is missing.
//
// Outside CI a missing prerequisite skips the test with a message that says
// how to install it. With CI=true it fails the test: CI installs every
// prerequisite through scripts/test.sh, so a missing one is a bug in that
// script, never a reason to pass silently.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether the tests run under CI (CI=true).
func InCI() bool { return os.Getenv("CI") == "true" }

// Require stops the test when ok is false: t.Fatalf under CI, t.Skipf
// otherwise. what names the prerequisite and fix says how to get it.
func Require(t testing.TB, ok bool, what, fix string) {
	t.Helper()
	if ok {
		return
	}
	if InCI() {
		t.Fatalf("prerequisite missing in CI: %s (fix: %s)", what, fix)
	}
	t.Skipf("prerequisite missing: %s (fix: %s)", what, fix)
}

// RequireRoot requires an effective uid of 0.
func RequireRoot(t testing.TB) {
	t.Helper()
	Require(t, os.Geteuid() == 0, "root privileges", "run the tests as root, e.g. sudo bash scripts/test.sh")
}

// LookPath returns the path of the named program, requiring it to exist.
func LookPath(t testing.TB, name, fix string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	Require(t, err == nil, "program "+name+" on PATH", fix)
	return p
}

// RequireFile requires path to exist.
func RequireFile(t testing.TB, path, fix string) {
	t.Helper()
	_, err := os.Stat(path)
	Require(t, err == nil, "file "+path, fix)
}
