package e2e

import (
	"context"
	"strings"
	"testing"

	"github.com/cloister/cloister/parent/parenttest"
)

// TestDevRootAndVersion: `cloister dev-root` prints the daemon's
// development root (no curl --unix-socket needed), and `cloister
// --version` names the build.
func TestDevRootAndVersion(t *testing.T) {
	d := parenttest.StartDaemon(t, "sandbox", sandboxConfig)
	want, err := d.Client.DevRootPEM(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out, err := parenttest.CLI(t, "dev-root", "--socket", d.Socket)
	if err != nil {
		t.Fatalf("dev-root: %v\n%s", err, out)
	}
	if out != string(want) || !strings.Contains(out, "BEGIN CERTIFICATE") {
		t.Errorf("dev-root printed %q, the daemon's root is %q", out, want)
	}
	out, err = parenttest.CLI(t, "--version")
	if err != nil || !strings.HasPrefix(out, "cloister version ") {
		t.Errorf("--version: %v %q", err, out)
	}
	if _, err := parenttest.CLI(t, "dev-root", "--socket", d.Socket+".missing"); err == nil {
		t.Error("dev-root without a daemon succeeded")
	}
}
