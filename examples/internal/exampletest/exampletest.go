// Package exampletest runs the examples' scenarios against a real Cloister
// daemon on every backend CI has: the process sandbox and the QEMU microVM
// (TCG here). It wraps parent/parenttest with what differs per backend:
// the daemon configuration, the build-enclave flags a microVM image needs
// (a kernel and the vsock modules) and the enclave memory size.
package exampletest

import (
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/cloister/cloister/enclave/eif"
	"github.com/cloister/cloister/internal/testenv"
	"github.com/cloister/cloister/parent"
	"github.com/cloister/cloister/parent/parenttest"
)

// Backends are the backends every example's integration test runs on.
var Backends = []string{"sandbox", "qemu"}

// Env is one backend's set-up for an example test.
type Env struct {
	// Backend is "sandbox" or "qemu".
	Backend string
	// Daemon is the running daemon.
	Daemon *parenttest.Daemon
	// BuildFlags are the build-enclave flags images need on this backend.
	BuildFlags []string
	// MemoryMiB is the memory each enclave gets.
	MemoryMiB int
}

// Start checks the backend's prerequisites (root; for qemu also
// qemu-system-x86_64, $CLOISTER_TEST_KERNEL and $CLOISTER_TEST_MODULES) and
// starts a daemon for it. extraConfig is appended to the daemon's YAML
// configuration (e.g. an egress section).
func Start(t *testing.T, backend, extraConfig string) *Env {
	t.Helper()
	testenv.RequireRoot(t)
	e := &Env{Backend: backend, MemoryMiB: 128}
	config := "---\nmemory_mib: 1024\nheartbeat_timeout: 60s\n"
	if backend == "qemu" {
		testenv.LookPath(t, "qemu-system-x86_64", "apt-get install qemu-system-x86")
		kernel := os.Getenv("CLOISTER_TEST_KERNEL")
		testenv.Require(t, kernel != "", "CLOISTER_TEST_KERNEL (a Debian cloud kernel bzImage)",
			"apt-get install linux-image-cloud-amd64 and run scripts/test.sh (it exports CLOISTER_TEST_KERNEL and CLOISTER_TEST_MODULES)")
		modules := os.Getenv("CLOISTER_TEST_MODULES")
		testenv.Require(t, modules != "", "CLOISTER_TEST_MODULES (the kernel's /lib/modules/<version>)",
			"run scripts/test.sh, or export CLOISTER_TEST_MODULES=/lib/modules/<version of CLOISTER_TEST_KERNEL>")
		e.BuildFlags = []string{"--kernel", kernel, "--kernel-modules-dir", modules}
		e.MemoryMiB = 256
		config = "---\nmemory_mib: 1024\nheartbeat_timeout: 120s\n"
	}
	e.Daemon = parenttest.StartDaemon(t, backend, config+extraConfig)
	return e
}

// Image builds an enclave image for this backend: the files are copied into
// the root file system and cmd is the command line.
func (e *Env) Image(t *testing.T, dir, name string, files map[string]string, cmd ...string) string {
	t.Helper()
	return parenttest.BuildImage(t, dir, parenttest.Image{Name: name, Files: files, Cmd: cmd, Extra: e.BuildFlags})
}

// Run launches the image (non-debug) and waits until its console shows
// ready.
func (e *Env) Run(t *testing.T, eif, ready string) parent.RunResult {
	t.Helper()
	res := e.Daemon.Run(eif, e.MemoryMiB, false)
	e.Daemon.ConsoleUntil(res.EnclaveID, ready, 2*time.Minute)
	return res
}

// PCR0 returns the image's PCR0 in lower-case hex, as build-enclave and
// describe-eif print it.
func PCR0(t *testing.T, eifPath string) string {
	t.Helper()
	img, err := eif.Open(eifPath, eif.ReadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := eif.Measure(img)
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(m.PCR0[:])
}
