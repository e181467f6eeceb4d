package hybrid_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/cloister/cloister/internal/hybrid"
	"github.com/cloister/cloister/internal/transport"
)

// enclaveCID is the CID the test enclave pretends to have.
const enclaveCID = 16

// shortDir returns a fresh directory with a short path (Unix socket paths are
// limited to 107 bytes, t.TempDir paths can be longer).
func shortDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "hv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// testWorld is one enclave directory D with a running hybrid Server on
// D/vsock.sock whose Connector reaches D/guest (the sandbox layout).
type testWorld struct {
	dir  string
	sock string
	srv  *hybrid.Server
	tcfg *transport.Config // the enclave side, sandbox world
}

func newWorld(t testing.TB, configure func(*hybrid.Server)) *testWorld {
	t.Helper()
	dir := shortDir(t)
	for _, sub := range []string{"host", "guest"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	w := &testWorld{
		dir:  dir,
		sock: filepath.Join(dir, "vsock.sock"),
		srv: &hybrid.Server{
			Connector: hybrid.UnixConnector{Dir: filepath.Join(dir, "guest")},
			Logger:    slog.New(slog.DiscardHandler),
		},
		tcfg: &transport.Config{World: transport.WorldSandbox, Dir: dir, CID: enclaveCID},
	}
	if configure != nil {
		configure(w.srv)
	}
	w.serve(t)
	return w
}

// serve starts w.srv on w.sock until the test ends.
func (w *testWorld) serve(t testing.TB) {
	t.Helper()
	l, err := net.Listen("unix", w.sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.srv.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
}

// guestListen listens in the enclave (sandbox transport) on port.
func (w *testWorld) guestListen(t testing.TB, port uint32) net.Listener {
	t.Helper()
	l, err := transport.Listen(port, w.tcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// hostBase is the Firecracker uds_path for host listeners.
func (w *testWorld) hostBase() string { return filepath.Join(w.dir, "host", "vsock") }

// dialCfg is the DialConfig host clients use in tests: one enclave CID.
func dialCfg() *hybrid.DialConfig { return &hybrid.DialConfig{RemoteCID: enclaveCID} }

// acceptOne accepts one connection in the background.
func acceptOne(l net.Listener) <-chan net.Conn {
	ch := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			close(ch)
			return
		}
		ch <- c
	}()
	return ch
}

// echo serves l: every connection gets back what it sends, then a
// half-close.
func echo(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			if _, err := io.Copy(c, c); err != nil {
				return
			}
			c.(interface{ CloseWrite() error }).CloseWrite()
		}()
	}
}

func wantClass(t testing.TB, err, class error) {
	t.Helper()
	if !errors.Is(err, class) {
		t.Fatalf("error %v (%T) is not %v", err, err, class)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Net != "vsock" {
		t.Errorf("error %v is not a *net.OpError on network vsock", err)
	}
}

// relayConnector hides the Handoff method of a Connector, so the Server
// relays.
type relayConnector struct{ c hybrid.Connector }

func (r relayConnector) ConnectGuest(ctx context.Context, port uint32) (net.Conn, error) {
	return r.c.ConnectGuest(ctx, port)
}

// relayOnly returns c without its Handoff method.
func relayOnly(c hybrid.Connector) hybrid.Connector { return relayConnector{c} }
