// Package hello is the hello example's integration test: it builds the
// enclave and parent programs, builds an image with build-enclave, runs it
// on a real daemon (sandbox and QEMU microVM backends) and checks the
// parent program's output.
package hello

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cloister/cloister/examples/internal/exampletest"
	"github.com/cloister/cloister/parent/parenttest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	parenttest.Cleanup()
	os.Exit(code)
}

func TestHello(t *testing.T) {
	for _, backend := range exampletest.Backends {
		t.Run(backend, func(t *testing.T) {
			env := exampletest.Start(t, backend, "")
			dir := parenttest.ShortTemp(t)
			app := parenttest.BuildProgram(t, dir, "hello-enclave", "./examples/hello/enclave")
			client := parenttest.BuildProgram(t, dir, "hello-parent", "./examples/hello/parent")
			eif := env.Image(t, dir, "hello", map[string]string{"bin/hello-enclave": app}, "/bin/hello-enclave")
			res := env.Run(t, eif, "listening on vsock port 5000")

			pcr0 := exampletest.PCR0(t, eif)
			for _, msg := range []string{"parent", "second caller"} {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				cmd := exec.CommandContext(ctx, client, "-enclave", res.EnclaveName, msg)
				cmd.Env = append(os.Environ(), "CLOISTER_SOCKET="+env.Daemon.Socket)
				out, err := cmd.CombinedOutput()
				cancel()
				if err != nil {
					t.Fatalf("parent program: %v\n%s", err, out)
				}
				world := map[string]string{"sandbox": "sandbox", "qemu": "microvm"}[backend]
				want := "Hello, " + msg + "! This is an enclave in the " + world + " world; my PCR0 is " + pcr0 + ".\n"
				if string(out) != want {
					t.Errorf("parent printed %q, want %q", out, want)
				}
			}
			console := env.Daemon.ConsoleUntil(res.EnclaveID, `said "second caller"`, time.Minute)
			if !strings.Contains(console, `said "parent"`) {
				t.Errorf("enclave console lacks the first greeting:\n%s", console)
			}
		})
	}
}
