package connlimit_test

import (
	"io"
	"net"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/internal/connlimit"
)

func listen(t testing.TB) (net.Listener, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, path
}

// TestListenerBound: with a bound of 3, of 10 clients that stay connected
// the first 3 are served and the other 7 read end of stream; once one of
// the served closes, the next client is served again.
func TestListenerBound(t *testing.T) {
	inner, path := listen(t)
	l := connlimit.New(inner, 3)
	served := make(chan net.Conn, 10)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				close(served)
				return
			}
			// Serve: say hello and keep the connection open.
			_, _ = io.WriteString(c, "hi")
			served <- c
		}
	}()
	var clients []net.Conn
	greeted := 0
	for range 10 {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
		b := make([]byte, 2)
		if _, err := io.ReadFull(c, b); err == nil {
			greeted++
		}
	}
	if greeted != 3 {
		t.Errorf("%d of 10 clients served, want 3", greeted)
	}
	want := connlimit.Stats{Max: 3, Active: 3, Accepted: 3, Refused: 7}
	if diff := cmp.Diff(want, l.Stats()); diff != "" {
		t.Errorf("stats (-want +got):\n%s", diff)
	}
	// Closing a served connection twice frees one place, once.
	first := <-served
	first.Close()
	first.Close()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b := make([]byte, 2)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("a client after a place was freed: %v", err)
	}
	want = connlimit.Stats{Max: 3, Active: 3, Accepted: 4, Refused: 7}
	if diff := cmp.Diff(want, l.Stats()); diff != "" {
		t.Errorf("stats after one close (-want +got):\n%s", diff)
	}
	for _, c := range clients {
		c.Close()
	}
}

// TestConnExposesUnixSocket: the wrapped connection still offers the Unix
// socket and half-close a relay needs.
func TestConnExposesUnixSocket(t *testing.T) {
	inner, path := listen(t)
	l := connlimit.New(inner, 1)
	done := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			done <- nil
			return
		}
		done <- c
	}()
	cl, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	c := <-done
	if c == nil {
		t.Fatal("accept failed")
	}
	defer c.Close()
	lc := c.(*connlimit.Conn)
	if lc.UnixConn() == nil {
		t.Error("UnixConn() = nil for a Unix connection")
	}
	if err := lc.CloseWrite(); err != nil {
		t.Fatalf("CloseWrite: %v", err)
	}
	if b, err := io.ReadAll(cl); err != nil || len(b) != 0 {
		t.Errorf("after CloseWrite the peer read %q, %v; want end of stream", b, err)
	}
}

// BenchmarkListenerAccept measures accepting, counting and closing one
// connection through the bound.
func BenchmarkListenerAccept(b *testing.B) {
	inner, path := listen(b)
	l := connlimit.New(inner, 64)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	b.ReportAllocs()
	for b.Loop() {
		c, err := net.Dial("unix", path)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = c.Read(make([]byte, 1))
		c.Close()
	}
}
