package hybrid_test

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/cloister/cloister/internal/hybrid"
	"github.com/google/go-cmp/cmp"
	"github.com/mdlayher/vsock"
)

func TestListenPathAndCleanup(t *testing.T) {
	dir := shortDir(t)
	base := filepath.Join(dir, "vsock")
	l, err := hybrid.Listen(base, 9000)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := l.Path(), base+"_9000"; got != want {
		t.Errorf("Path() = %q, want %q", got, want)
	}
	if diff := cmp.Diff(vsock.Addr{ContextID: hybrid.ParentCID, Port: 9000}, addrOf(l.Addr())); diff != "" {
		t.Errorf("Addr (-want +got):\n%s", diff)
	}
	fi, err := os.Stat(base + "_9000")
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o666 {
		t.Errorf("socket mode %v, want a socket with 0666", fi.Mode())
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(base + "_9000"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket file left after Close: %v", err)
	}
}

func TestListenStaleSocket(t *testing.T) {
	dir := shortDir(t)
	path := hybrid.HostPath(filepath.Join(dir, "vsock"), 9000)
	// Leave a socket file behind without a listener.
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ul.SetUnlinkOnClose(false)
	ul.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("stale socket not present: %v", err)
	}
	l, err := hybrid.Listen(filepath.Join(dir, "vsock"), 9000)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	defer l.Close()

	t.Run("live socket is not stolen", func(t *testing.T) {
		_, err := hybrid.Listen(filepath.Join(dir, "vsock"), 9000)
		if !errors.Is(err, syscall.EADDRINUSE) {
			t.Fatalf("second Listen: %v, want EADDRINUSE", err)
		}
	})
}

func TestListenRefusesNonSocket(t *testing.T) {
	dir := shortDir(t)
	path := filepath.Join(dir, "vsock_1")
	if err := os.WriteFile(path, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := hybrid.Listen(filepath.Join(dir, "vsock"), 1)
	if !errors.Is(err, fs.ErrExist) {
		t.Fatalf("Listen over a regular file: %v, want fs.ErrExist", err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "precious" {
		t.Errorf("regular file damaged: %q, %v", b, err)
	}
}

func TestListenPathTooLong(t *testing.T) {
	_, err := hybrid.Listen("/tmp/"+strings.Repeat("x", 120), 1)
	if !errors.Is(err, syscall.ENAMETOOLONG) {
		t.Fatalf("Listen with a long path: %v, want ENAMETOOLONG", err)
	}
}

func TestRegistry(t *testing.T) {
	dir := shortDir(t)
	reg := &hybrid.Registry{Base: filepath.Join(dir, "vsock"), PeerCID: enclaveCID}
	for _, p := range []uint32{9000, 5133133, 8000} {
		if _, err := reg.Open(p); err != nil {
			t.Fatalf("Open(%d): %v", p, err)
		}
	}
	if _, err := reg.Open(8000); !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("Open of an open port: %v, want EADDRINUSE", err)
	}
	if diff := cmp.Diff([]uint32{8000, 9000, 5133133}, reg.Ports()); diff != "" {
		t.Errorf("Ports (-want +got):\n%s", diff)
	}
	if reg.Listener(9000) == nil || reg.Listener(1) != nil {
		t.Error("Listener lookup wrong")
	}

	// Accepted connections report the enclave's CID.
	l := reg.Listener(9000)
	accepted := acceptOne(l)
	c, err := net.Dial("unix", l.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	hc := <-accepted
	defer hc.Close()
	if diff := cmp.Diff(vsock.Addr{ContextID: enclaveCID, Port: 9000}, addrOf(hc.RemoteAddr())); diff != "" {
		t.Errorf("RemoteAddr (-want +got):\n%s", diff)
	}

	if err := reg.Close(8000); err != nil {
		t.Fatal(err)
	}
	if err := reg.Close(8000); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Close of a closed port: %v, want fs.ErrNotExist", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "vsock_8000")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket of closed port remains: %v", err)
	}
	if err := reg.CloseAll(); err != nil {
		t.Fatal(err)
	}
	if len(reg.Ports()) != 0 {
		t.Errorf("ports after CloseAll: %v", reg.Ports())
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		t.Errorf("files left after CloseAll: %v", ents)
	}
	// The registry is reusable.
	if _, err := reg.Open(9000); err != nil {
		t.Fatal(err)
	}
	reg.CloseAll()
}

func TestListenerAcceptAfterClose(t *testing.T) {
	dir := shortDir(t)
	l, err := hybrid.Listen(filepath.Join(dir, "vsock"), 3)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	_, err = l.Accept()
	var oe *net.OpError
	if !errors.Is(err, net.ErrClosed) || !errors.As(err, &oe) || oe.Net != "vsock" {
		t.Fatalf("Accept after Close: %v, want a vsock OpError wrapping net.ErrClosed", err)
	}
}
