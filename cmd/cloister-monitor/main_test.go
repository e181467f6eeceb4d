package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/cloister/cloister/internal/testenv"
)

// heavy are the packages cloister-monitor must not link: their package
// initialisation (the AWS SDK's schemas, Prometheus, protobuf registries,
// cobra) is what makes the cloister command slow to start, and a sandbox
// launch starts this executable twice (monitor and launcher).
var heavy = []string{
	"github.com/aws/",
	"github.com/prometheus/",
	"google.golang.org/protobuf/",
	"google.golang.org/grpc",
	"github.com/spf13/cobra",
	"github.com/google/go-containerregistry/",
	"github.com/jackc/pgx/",
	"go.etcd.io/bbolt",
	"github.com/cloister/cloister/kms",
	"github.com/cloister/cloister/attest/verifier",
	"github.com/cloister/cloister/enclave/build",
	"github.com/cloister/cloister/parent/daemon/metrics",
}

// TestLeanDependencies lists what cloister-monitor links, built as the
// package is (CGO_ENABLED=0), and fails on any heavy package.
func TestLeanDependencies(t *testing.T) {
	gobin := testenv.LookPath(t, "go", "install Go from https://go.dev/dl/")
	cmd := exec.Command(gobin, "list", "-deps", "-f", "{{.ImportPath}}", ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list found only %d packages: %q", len(deps), deps)
	}
	for _, dep := range deps {
		if dep == "runtime/cgo" {
			t.Errorf("cloister-monitor links runtime/cgo with CGO_ENABLED=0")
		}
		for _, h := range heavy {
			if dep == strings.TrimSuffix(h, "/") || strings.HasPrefix(dep, h) {
				t.Errorf("cloister-monitor links %s (heavy: %s)", dep, h)
			}
		}
	}
}
