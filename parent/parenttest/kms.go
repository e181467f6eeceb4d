package parenttest

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// KMS is a `cloister kms serve` running as a child process.
type KMS struct {
	// Endpoint is the URL the service printed, http://127.0.0.1:PORT.
	Endpoint string
	// RootKey is the root key file the service was given.
	RootKey string
	log     *tailBuffer
	cmd     *exec.Cmd
	done    chan struct{}
}

// Kill ends the service with SIGKILL (no graceful shutdown) and waits for
// it to exit.
func (k *KMS) Kill() {
	_ = k.cmd.Process.Kill()
	<-k.done
}

// Log returns the end of what the key service has logged (one JSON line
// per decision; the last kmsLogTail bytes).
func (k *KMS) Log() string { return k.log.String() }

// KMSOptions configures StartKMS.
type KMSOptions struct {
	// Credentials is the path of the shared-credentials file of accepted
	// access keys (required).
	Credentials string
	// Roots are the --root values (PEM files or "aws"); none: the
	// service's default (the AWS Nitro root).
	Roots []string
	// Store is the --store value; default a bbolt file in dir.
	Store string
	// RootKey is the --root-key file; default a fresh key in dir. Servers
	// sharing one store must share it.
	RootKey string
	// Args are more arguments for `cloister kms serve`.
	Args []string
}

// kmsLogTail bounds the key service log a test keeps: load tests make
// hundreds of thousands of audit lines.
const kmsLogTail = 16 << 10

// StartKMS builds cloister and runs `cloister kms serve` on a free loopback
// port with a fresh root key in dir; it stops the service (SIGTERM) when
// the test ends and logs its output if the test failed.
func StartKMS(t testing.TB, dir string, o KMSOptions) *KMS {
	t.Helper()
	buildBinaries(t)
	rootKey := o.RootKey
	if rootKey == "" {
		key := make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			t.Fatal(err)
		}
		rootKey = filepath.Join(dir, "kms-root.key")
		if err := os.WriteFile(rootKey, []byte(hex.EncodeToString(key)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	store := o.Store
	if store == "" {
		store = "bbolt:" + filepath.Join(dir, "kms.db")
	}
	args := []string{"kms", "serve", "--addr", "127.0.0.1:0", "--store", store, "--root-key", rootKey, "--credentials", o.Credentials}
	for _, r := range o.Roots {
		args = append(args, "--root", r)
	}
	args = append(args, o.Args...)
	cmd := exec.Command(bins.cloister, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	k := &KMS{RootKey: rootKey, log: &tailBuffer{max: kmsLogTail}, cmd: cmd, done: done}
	cmd.Stderr = k.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("key service log (end):\n%s", k.Log())
		}
	})
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		for sc.Scan() {
		}
		_ = cmd.Wait()
		close(done)
	}()
	select {
	case l, ok := <-lines:
		if !ok || !strings.HasPrefix(l, "http://127.0.0.1:") {
			t.Fatalf("cloister kms serve did not print its endpoint (%q):\n%s", l, k.Log())
		}
		k.Endpoint = l
	case <-time.After(time.Minute):
		t.Fatalf("cloister kms serve did not start:\n%s", k.Log())
	}
	return k
}

// tailBuffer keeps (at least) the last max bytes written to it; safe for
// concurrent use.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (s *tailBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b = append(s.b, p...)
	if len(s.b) > 2*s.max { // trim rarely: amortised O(1) per byte
		s.b = append(s.b[:0], s.b[len(s.b)-s.max:]...)
	}
	return len(p), nil
}

func (s *tailBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return string(s.b[max(0, len(s.b)-s.max):])
}
