//go:build linux

package hybrid_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"

	"github.com/cloister/cloister/internal/hybrid"
)

// TestUnixConnectorRefusesLinks is the attack of a sandbox enclave on the
// root monitor: it names its listener "vsock_<port>" with a symbolic link
// to a host socket (or makes it a FIFO, a directory, a file). The connector
// must refuse every one of them as "nobody listening", without touching the
// host socket and without blocking on the FIFO, whether it reaches the
// directory by path or by descriptor.
func TestUnixConnectorRefusesLinks(t *testing.T) {
	dir := shortDir(t)
	guest := filepath.Join(dir, "guest")
	if err := os.Mkdir(guest, 0o755); err != nil {
		t.Fatal(err)
	}
	victimPath := filepath.Join(dir, "victim.sock")
	victim, err := net.ListenUnix("unix", &net.UnixAddr{Name: victimPath, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer victim.Close()
	// A real listener of the enclave, on port 1.
	real, err := hybrid.ListenGuest(filepath.Join(guest, "vsock_1"), &vsock.Addr{ContextID: enclaveCID, Port: 1}, hybrid.ParentCID)
	if err != nil {
		t.Fatal(err)
	}
	defer real.Close()
	mustDo(t, os.Symlink(victimPath, filepath.Join(guest, "vsock_2")))
	mustDo(t, os.Symlink("../victim.sock", filepath.Join(guest, "vsock_3")))
	mustDo(t, syscall.Mkfifo(filepath.Join(guest, "vsock_4"), 0o666))
	mustDo(t, os.Mkdir(filepath.Join(guest, "vsock_5"), 0o755))
	mustDo(t, os.WriteFile(filepath.Join(guest, "vsock_6"), nil, 0o666))
	// A link to a link to the real listener: still a link.
	mustDo(t, os.Symlink("vsock_1", filepath.Join(guest, "vsock_7")))

	rootFD, err := os.OpenFile(guest, unix.O_PATH|syscall.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rootFD.Close()
	// The directory itself may be reached through a link: it is the daemon's.
	linkedDir := filepath.Join(dir, "guest-link")
	mustDo(t, os.Symlink(guest, linkedDir))

	for _, conn := range []struct {
		name string
		c    hybrid.UnixConnector
	}{
		{"dir", hybrid.UnixConnector{Dir: guest}},
		{"linked dir", hybrid.UnixConnector{Dir: linkedDir}},
		{"root descriptor", hybrid.UnixConnector{Root: rootFD}},
	} {
		t.Run(conn.name, func(t *testing.T) {
			accepted := make(chan struct{}, 1)
			go func() {
				if c, err := real.Accept(); err == nil {
					c.Close()
					accepted <- struct{}{}
				}
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := conn.c.ConnectGuest(ctx, 1)
			if err != nil {
				t.Fatalf("the enclave's real listener: %v", err)
			}
			c.Close()
			<-accepted
			for _, port := range []uint32{2, 3, 4, 5, 6, 7, 8} {
				c, err := conn.c.ConnectGuest(ctx, port)
				if err == nil {
					c.Close()
					t.Errorf("port %d: connected", port)
					continue
				}
				if !errors.Is(err, hybrid.ErrNoListener) {
					t.Errorf("port %d: %v, want class ErrNoListener", port, err)
				}
				a, b := socketPair(t)
				err = conn.c.Handoff(ctx, port, a, []byte("OK 1\n"))
				a.Close()
				b.Close()
				if !errors.Is(err, hybrid.ErrNoListener) {
					t.Errorf("port %d: handoff: %v, want class ErrNoListener", port, err)
				}
			}
			if err := victim.SetDeadline(time.Now().Add(10 * time.Millisecond)); err != nil {
				t.Fatal(err)
			}
			if c, err := victim.Accept(); err == nil {
				c.Close()
				t.Fatal("the host socket named by the enclave's link received a connection")
			}
		})
	}
}

func mustDo(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// socketPair returns two connected Unix stream sockets.
func socketPair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "pair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}
