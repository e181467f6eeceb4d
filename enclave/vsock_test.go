package enclave_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cloister/cloister/enclave"
	"github.com/cloister/cloister/internal/hybrid"
	"github.com/google/go-cmp/cmp"
)

// vsockSandboxEnv makes this process look like a sandboxed enclave with CID 18
// and returns the enclave directory D (D/host, D/guest). Tests must never run
// the SDK in another world: that would open AF_VSOCK, which reaches the real
// host here.
func vsockSandboxEnv(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ev")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	for _, sub := range []string{"host", "guest"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("CLOISTER_WORLD", "sandbox")
	t.Setenv("CLOISTER_VSOCK_DIR", dir)
	t.Setenv("CLOISTER_CID", "18")
	return dir
}

func vsockCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestListenFromParent: a parent process reaches enclave.Listen through the
// daemon's hybrid-vsock server.
func TestListenFromParent(t *testing.T) {
	dir := vsockSandboxEnv(t)
	ul, err := net.Listen("unix", filepath.Join(dir, "vsock.sock"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &hybrid.Server{Connector: hybrid.UnixConnector{Dir: filepath.Join(dir, "guest")}, Logger: slog.New(slog.DiscardHandler)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ul) }()
	defer func() { cancel(); <-done }()

	l, err := enclave.Listen(5005)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if diff := cmp.Diff(&enclave.Addr{ContextID: 18, Port: 5005}, l.Addr()); diff != "" {
		t.Errorf("Addr (-want +got):\n%s", diff)
	}
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()
	hc, err := hybrid.Dial(vsockCtx(t), filepath.Join(dir, "vsock.sock"), 5005, &hybrid.DialConfig{RemoteCID: 18})
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	hc.Write([]byte("hi"))
	hc.CloseWrite()
	if got, err := io.ReadAll(hc); err != nil || string(got) != "hi" {
		t.Fatalf("echo %q, %v", got, err)
	}
}

// TestDialParent: enclave.DialParent and enclave.Dial(ParentCID) reach a
// host listener.
func TestDialParent(t *testing.T) {
	dir := vsockSandboxEnv(t)
	reg := &hybrid.Registry{Base: filepath.Join(dir, "host", "vsock"), PeerCID: 18}
	defer reg.CloseAll()
	l, err := reg.Open(9000)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	dials := map[string]func() (net.Conn, error){
		"DialParent": func() (net.Conn, error) { return enclave.DialParent(vsockCtx(t), 9000) },
		"Dial":       func() (net.Conn, error) { return enclave.Dial(vsockCtx(t), enclave.ParentCID, 9000) },
	}
	for name, dial := range dials {
		t.Run(name, func(t *testing.T) {
			c, err := dial()
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if diff := cmp.Diff(&enclave.Addr{ContextID: enclave.ParentCID, Port: 9000}, c.RemoteAddr()); diff != "" {
				t.Errorf("RemoteAddr (-want +got):\n%s", diff)
			}
			if _, err := c.Write([]byte{0xB7}); err != nil {
				t.Fatal(err)
			}
			b := make([]byte, 1)
			if _, err := io.ReadFull(c, b); err != nil || b[0] != 0xB7 {
				t.Fatalf("heartbeat echo %x, %v", b, err)
			}
		})
	}
}

func TestDialErrors(t *testing.T) {
	vsockSandboxEnv(t)
	if _, err := enclave.DialParent(vsockCtx(t), 1); !errors.Is(err, enclave.ErrNoListener) {
		t.Errorf("DialParent to a closed port = %v, want ErrNoListener", err)
	}
	if _, err := enclave.Dial(vsockCtx(t), 7, 1); !errors.Is(err, enclave.ErrUnreachable) {
		t.Errorf("Dial to CID 7 = %v, want ErrUnreachable", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := enclave.DialParent(ctx, 1); err == nil {
		t.Error("DialParent with a cancelled context succeeded")
	}
}
