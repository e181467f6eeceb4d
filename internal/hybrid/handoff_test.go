package hybrid_test

import (
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/cloister/cloister/internal/hybrid"
	"github.com/mdlayher/vsock"
)

// localPath is the Unix path the socket under a hybrid.Conn is bound to.
func localPath(t *testing.T, c net.Conn) string {
	t.Helper()
	hc, ok := c.(*hybrid.Conn)
	if !ok {
		t.Fatalf("accepted %T, want *hybrid.Conn", c)
	}
	return hc.UnixConn().LocalAddr().(*net.UnixAddr).Name
}

// TestHandoffPath: with UnixConnector the enclave gets the client's own
// socket (the server's end of D/vsock.sock); with the Handoff method hidden
// it gets the relay connection to its listener. Data flows both ways and the
// client's pipelined bytes arrive in both cases.
func TestHandoffPath(t *testing.T) {
	for _, tc := range []struct {
		name      string
		configure func(*hybrid.Server)
		wantLocal func(w *testWorld) string
	}{
		{"handoff", nil, func(w *testWorld) string { return w.sock }},
		{"relay", func(s *hybrid.Server) { s.Connector = relayOnly(s.Connector) },
			func(w *testWorld) string { return filepath.Join(w.dir, "guest", "vsock_77") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, tc.configure)
			l := w.guestListen(t, 77)
			accepted := acceptOne(l)
			c, err := net.Dial("unix", w.sock)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write([]byte("CONNECT 77\nhello")); err != nil {
				t.Fatal(err)
			}
			line, err := hybrid.ReadLine(c)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := hybrid.ParseOK(line); err != nil {
				t.Fatalf("reply %q: %v", line, err)
			}
			gc, ok := <-accepted
			if !ok {
				t.Fatal("accept failed")
			}
			defer gc.Close()
			if got, want := localPath(t, gc), tc.wantLocal(w); got != want {
				t.Errorf("enclave socket bound to %q, want %q", got, want)
			}
			b := make([]byte, 5)
			if _, err := io.ReadFull(gc, b); err != nil || string(b) != "hello" {
				t.Fatalf("enclave read %q, %v", b, err)
			}
			if _, err := gc.Write([]byte("world")); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(c, b); err != nil || string(b) != "world" {
				t.Fatalf("client read %q, %v", b, err)
			}
			if err := gc.(*hybrid.Conn).CloseWrite(); err != nil {
				t.Fatal(err)
			}
			if n, err := c.Read(b); err != io.EOF {
				t.Errorf("client read after enclave's CloseWrite = %d, %v; want EOF", n, err)
			}
		})
	}
}

// TestHandoffNoListener: a handoff to a port nobody listens on fails with
// ErrNoListener before anything is written to the client.
func TestHandoffNoListener(t *testing.T) {
	dir := shortDir(t)
	a, b := unixPair(t)
	err := hybrid.UnixConnector{Dir: dir}.Handoff(ctxFor(t, 5*time.Second), 5, a, []byte("OK 1\n"))
	if !errors.Is(err, hybrid.ErrNoListener) {
		t.Fatalf("Handoff = %v, want ErrNoListener", err)
	}
	a.Close()
	if n, err := b.Read(make([]byte, 8)); err != io.EOF {
		t.Errorf("client read %d, %v; want EOF without a byte", n, err)
	}
}

// TestGuestListenerMarkers: Accept closes connections that send a wrong
// marker, a handoff marker without a descriptor, a relay marker with one, or
// nothing before the marker timeout, and still returns the next good one.
func TestGuestListenerMarkers(t *testing.T) {
	dir := shortDir(t)
	path := filepath.Join(dir, "vsock_9")
	l, err := hybrid.ListenGuest(path, &vsock.Addr{ContextID: enclaveCID, Port: 9}, hybrid.ParentCID)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	l.MarkerTimeout = 200 * time.Millisecond
	accepted := acceptOne(l)

	dial := func() *net.UnixConn {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.UnixConn)
	}
	expectClosed := func(name string, c net.Conn) {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(make([]byte, 1)); err == nil {
			t.Errorf("%s: read %d bytes, want the listener to close the connection", name, n)
		}
	}
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rights := syscall.UnixRights(int(f.Fd()))

	silent := dial() // times out
	expectClosed("silent", silent)
	bad := dial()
	bad.Write([]byte("X"))
	expectClosed("bad marker", bad)
	noFD := dial()
	noFD.Write([]byte{hybrid.MarkerHandoff})
	expectClosed("handoff without fd", noFD)
	relayFD := dial()
	if _, _, err := relayFD.WriteMsgUnix([]byte{hybrid.MarkerRelay}, rights, nil); err != nil {
		t.Fatal(err)
	}
	expectClosed("relay with fd", relayFD)
	notSocket := dial()
	if _, _, err := notSocket.WriteMsgUnix([]byte{hybrid.MarkerHandoff}, rights, nil); err != nil {
		t.Fatal(err)
	}
	expectClosed("handoff of a non-socket", notSocket)

	good := dial()
	if err := hybrid.SendRelay(good); err != nil {
		t.Fatal(err)
	}
	select {
	case gc, ok := <-accepted:
		if !ok {
			t.Fatal("accept failed")
		}
		defer gc.Close()
		good.Write([]byte("z"))
		b := make([]byte, 1)
		if _, err := io.ReadFull(gc, b); err != nil || b[0] != 'z' {
			t.Errorf("read %q, %v", b, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("good connection not accepted")
	}
}

// unixPair returns a connected pair of Unix stream sockets.
func unixPair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conv := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "pair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.UnixConn)
	}
	return conv(fds[0]), conv(fds[1])
}
