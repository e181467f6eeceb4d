package main

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cloister/cloister/internal/sdnotify"
	"github.com/cloister/cloister/internal/sdnotify/sdnotifytest"
)

// TestServicesNotifyServiceManager runs kms serve and attest serve as
// systemd runs a Type=notify service: READY=1 must come once the service
// answers, STOPPING=1 when it is told to stop.
func TestServicesNotifyServiceManager(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("XDG_STATE_HOME", filepath.Join(dir, "state"))
	t.Setenv("CLOISTER_KMS_ROOT_KEY", "")
	creds := filepath.Join(dir, "creds")
	if err := os.WriteFile(creds, []byte("[admin]\naws_access_key_id = AKIDADMIN\naws_secret_access_key = s1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		args   func(addr string) []string
		health string
	}{
		{"kms serve", func(addr string) []string {
			return []string{"kms", "serve", "--addr", addr, "--credentials", creds}
		}, "/healthz"},
		{"attest serve", func(addr string) []string {
			return []string{"attest", "serve", "--addr", addr}
		}, "/readyz"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock, next := sdnotifytest.Listen(t, t.TempDir())
			t.Setenv(sdnotify.SocketEnv, sock)
			addr := freeAddr(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan string, 1)
			go func() {
				_, stderr, _ := runKMSCLI(t, ctx, nil, tc.args(addr)...)
				done <- stderr
			}()
			if s := next("READY"); s != sdnotify.Ready {
				t.Fatalf("first notification %q, want %s", s, sdnotify.Ready)
			}
			resp, err := http.Get("http://" + addr + tc.health)
			if err != nil {
				t.Fatalf("READY=1 sent but %s does not answer: %v", tc.health, err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("READY=1 sent but %s answers %s", tc.health, resp.Status)
			}
			cancel()
			if s := next("STOPPING"); s != sdnotify.Stopping {
				t.Fatalf("notification when stopping %q, want %s", s, sdnotify.Stopping)
			}
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				t.Fatal("the service did not stop")
			}
		})
	}
}
