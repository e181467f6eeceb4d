// Package existingapp is the existing-app example's integration test: it
// follows the README with the real binaries on the sandbox and QEMU
// microVM backends — an unmodified Nitro program (github.com/hf/nsm,
// github.com/mdlayher/vsock) built into an image, run, asked for an
// attestation with cloister connect, and the document checked with
// cloister verify under the daemon's development root.
package existingapp

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
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

func TestExistingApp(t *testing.T) {
	for _, backend := range exampletest.Backends {
		t.Run(backend, func(t *testing.T) {
			env := exampletest.Start(t, backend, "")
			dir := parenttest.ShortTemp(t)
			app := parenttest.BuildProgram(t, dir, "attest-server", "./examples/existing-app/enclave")
			eif := env.Image(t, dir, "existing-app", map[string]string{"bin/attest-server": app}, "/bin/attest-server")
			res := env.Run(t, eif, "attest-server: listening on vsock port 5000")
			pcr0 := exampletest.PCR0(t, eif)
			console := env.Daemon.ConsoleUntil(res.EnclaveID, "PCR0 "+pcr0, time.Minute)
			if !strings.Contains(console, "PCR0 "+pcr0) {
				t.Errorf("console lacks the image's PCR0 %s:\n%s", pcr0, console)
			}

			cli := parenttest.Cloister(t)
			sock := "--socket=" + env.Daemon.Socket
			nonce := make([]byte, 16)
			rand.Read(nonce)
			connect := exec.Command(cli, "connect", sock, "--enclave-name", res.EnclaveName, "--port", "5000")
			connect.Stdin = strings.NewReader(hex.EncodeToString(nonce) + "\n")
			doc, err := connect.Output()
			if err != nil {
				t.Fatalf("cloister connect: %v", err)
			}
			docFile := filepath.Join(dir, "doc.b64")
			if err := os.WriteFile(docFile, doc, 0o644); err != nil {
				t.Fatal(err)
			}
			root, err := exec.Command(cli, "dev-root", sock).Output()
			if err != nil {
				t.Fatalf("cloister dev-root: %v", err)
			}
			rootFile := filepath.Join(dir, "dev-root.pem")
			if err := os.WriteFile(rootFile, root, 0o644); err != nil {
				t.Fatal(err)
			}
			verify := exec.Command(cli, "verify", "--root", rootFile, "--nonce", hex.EncodeToString(nonce), "--pcr", "0="+pcr0, "--json", docFile)
			out, err := verify.CombinedOutput()
			if err != nil {
				t.Fatalf("cloister verify: %v\n%s", err, out)
			}
			if want := `"user_data": "` + hex.EncodeToString([]byte("existing-app")) + `"`; !strings.Contains(string(out), want) {
				t.Errorf("verified document lacks %s:\n%s", want, out)
			}
		})
	}
}
