// Package attestedhttp is the attested-http example's integration test: the
// enclave and parent programs with a real daemon (sandbox and QEMU microVM
// backends).
package attestedhttp

import (
	"context"
	"errors"
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

func TestAttestedHTTP(t *testing.T) {
	for _, backend := range exampletest.Backends {
		t.Run(backend, func(t *testing.T) {
			env := exampletest.Start(t, backend, "")
			dir := parenttest.ShortTemp(t)
			app := parenttest.BuildProgram(t, dir, "attested-http-enclave", "./examples/attested-http/enclave")
			client := parenttest.BuildProgram(t, dir, "attested-http-parent", "./examples/attested-http/parent")
			eif := env.Image(t, dir, "attested-http", map[string]string{"bin/attested-http-enclave": app}, "/bin/attested-http-enclave")
			res := env.Run(t, eif, "serving HTTPS on vsock port 5443")
			pcr0 := exampletest.PCR0(t, eif)

			runParent := func(args ...string) (string, error) {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				defer cancel()
				cmd := exec.CommandContext(ctx, client, append([]string{"-enclave", res.EnclaveName}, args...)...)
				cmd.Env = append(os.Environ(), "CLOISTER_SOCKET="+env.Daemon.Socket)
				out, err := cmd.CombinedOutput()
				return string(out), err
			}

			// The expected image: attested, then served.
			out, err := runParent("-eif", eif)
			if err != nil {
				t.Fatalf("parent: %v\n%s", err, out)
			}
			world := map[string]string{"sandbox": "sandbox", "qemu": "microvm"}[backend]
			for _, want := range []string{
				"attested: module " + res.EnclaveID + ", PCR0 " + pcr0 + ", TLS key bound",
				"GET /hello: 200 OK\nHello over attested TLS from an enclave in the " + world + " world.\n",
			} {
				if !strings.Contains(out, want) {
					t.Errorf("parent output lacks %q:\n%s", want, out)
				}
			}
			env.Daemon.ConsoleUntil(res.EnclaveID, "GET /hello from", time.Minute)

			// Expecting another image: refused before any request.
			other := strings.Repeat("ab", 48)
			out, err = runParent("-pcr0", other)
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 {
				t.Fatalf("parent expecting PCR0 %s: want exit status 1, got %v\n%s", other, err, out)
			}
			if !strings.Contains(out, "rejected by policy") || !strings.Contains(out, "pcr mismatch") || strings.Contains(out, "Hello over") {
				t.Errorf("parent expecting another PCR0 was not refused by policy:\n%s", out)
			}
		})
	}
}
