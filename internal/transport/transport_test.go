package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cloister/cloister/internal/hybrid"
	"github.com/google/go-cmp/cmp"
	"github.com/mdlayher/vsock"
	"golang.org/x/net/nettest"
)

// sandbox returns a sandbox-world Config over a fresh vsock directory with
// host/ and guest/ folders. No test in this package may use another world:
// that would open AF_VSOCK, which reaches the real host here.
func sandbox(t *testing.T) *Config {
	t.Helper()
	dir, err := os.MkdirTemp("", "tv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	for _, sub := range []string{"host", "guest"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return &Config{World: WorldSandbox, Dir: dir, CID: 21}
}

func addr(a net.Addr) vsock.Addr {
	v, ok := a.(*vsock.Addr)
	if !ok {
		return vsock.Addr{ContextID: 0xDEAD, Port: 0xDEAD}
	}
	return *v
}

func ctx10s(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestSandboxListen: the enclave's listener is guest/vsock_<port>, reports
// (own CID, port), and accepted connections report Remote = (3, port).
func TestSandboxListen(t *testing.T) {
	cfg := sandbox(t)
	l, err := Listen(5000, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if diff := cmp.Diff(vsock.Addr{ContextID: 21, Port: 5000}, addr(l.Addr())); diff != "" {
		t.Errorf("Addr (-want +got):\n%s", diff)
	}
	path := GuestPath(cfg.Dir, 5000)
	if path != filepath.Join(cfg.Dir, "guest", "vsock_5000") {
		t.Errorf("GuestPath = %q", path)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := hybrid.SendRelay(c); err != nil {
		t.Fatal(err)
	}
	ac, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer ac.Close()
	got := [2]vsock.Addr{addr(ac.LocalAddr()), addr(ac.RemoteAddr())}
	want := [2]vsock.Addr{{ContextID: 21, Port: 5000}, {ContextID: ParentCID, Port: 5000}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("accepted conn addresses (-want +got):\n%s", diff)
	}
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := io.ReadFull(ac, b); err != nil || b[0] != 'x' {
		t.Fatalf("read %q, %v", b, err)
	}
	l.Close()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("listener socket remains after Close: %v", err)
	}
}

// TestSandboxDial: (3, port) and its alias (2, port) reach host/vsock_<port>.
func TestSandboxDial(t *testing.T) {
	cfg := sandbox(t)
	hl, err := hybrid.Listen(filepath.Join(cfg.Dir, "host", "vsock"), 8000)
	if err != nil {
		t.Fatal(err)
	}
	defer hl.Close()
	if HostPath(cfg.Dir, 8000) != hl.Path() {
		t.Errorf("HostPath = %q, host listener at %q", HostPath(cfg.Dir, 8000), hl.Path())
	}
	for _, cid := range []uint32{3, 2} {
		t.Run(fmt.Sprint("cid ", cid), func(t *testing.T) {
			c, err := Dial(ctx10s(t), cid, 8000, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			hc, err := hl.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer hc.Close()
			got := [2]vsock.Addr{addr(c.LocalAddr()), addr(c.RemoteAddr())}
			want := [2]vsock.Addr{{ContextID: 21, Port: 8000}, {ContextID: ParentCID, Port: 8000}}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("addresses (-want +got):\n%s", diff)
			}
			if _, err := hc.Write([]byte("y")); err != nil {
				t.Fatal(err)
			}
			b := make([]byte, 1)
			if _, err := io.ReadFull(c, b); err != nil || b[0] != 'y' {
				t.Fatalf("read %q, %v", b, err)
			}
		})
	}
}

func TestSandboxDialErrors(t *testing.T) {
	cfg := sandbox(t)
	t.Run("other CID unreachable", func(t *testing.T) {
		for _, cid := range []uint32{0, 1, 4, 21, 0xFFFFFFFF} {
			_, err := Dial(ctx10s(t), cid, 80, cfg)
			if !errors.Is(err, ErrUnreachable) {
				t.Errorf("Dial(cid %d) = %v, want ErrUnreachable", cid, err)
			}
		}
	})
	t.Run("nobody listening", func(t *testing.T) {
		_, err := Dial(ctx10s(t), ParentCID, 80, cfg)
		if !errors.Is(err, ErrNoListener) {
			t.Fatalf("Dial to a missing socket = %v, want ErrNoListener", err)
		}
		var oe *net.OpError
		if !errors.As(err, &oe) || oe.Op != "dial" || oe.Net != "vsock" || addr(oe.Addr) != (vsock.Addr{ContextID: 3, Port: 80}) {
			t.Errorf("error %#v is not a dial OpError for vsock 3:80", err)
		}
	})
	t.Run("stale socket refuses", func(t *testing.T) {
		ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: HostPath(cfg.Dir, 81), Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		ul.SetUnlinkOnClose(false)
		ul.Close()
		_, err = Dial(ctx10s(t), ParentCID, 81, cfg)
		if !errors.Is(err, ErrNoListener) || !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("Dial to a stale socket = %v, want ErrNoListener wrapping ECONNREFUSED", err)
		}
	})
	t.Run("expired context", func(t *testing.T) {
		hl, err := hybrid.Listen(filepath.Join(cfg.Dir, "host", "vsock"), 82)
		if err != nil {
			t.Fatal(err)
		}
		defer hl.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 0)
		defer cancel()
		<-ctx.Done()
		_, err = Dial(ctx, ParentCID, 82, cfg)
		if !errors.Is(err, ErrTimeout) {
			t.Fatalf("Dial with an expired context = %v, want ErrTimeout", err)
		}
	})
}

func TestSandboxCID(t *testing.T) {
	cfg := sandbox(t)
	t.Setenv(EnvWorld, "sandbox")
	t.Setenv(EnvCID, "17")
	if cid, err := LocalCID(); err != nil || cid != 17 {
		t.Errorf("LocalCID = %d, %v; want 17", cid, err)
	}
	if cid, err := localCID(cfg); err != nil || cid != 21 {
		t.Errorf("localCID(cfg with CID 21) = %d, %v", cid, err)
	}
	for _, bad := range []string{"", "x", "-1", "4294967296"} {
		t.Setenv(EnvCID, bad)
		if cid, err := LocalCID(); err == nil {
			t.Errorf("LocalCID with %s=%q = %d, want an error", EnvCID, bad, cid)
		}
	}
	// Without a CID the addresses say "any".
	t.Setenv(EnvCID, "")
	l, err := Listen(7, &Config{World: WorldSandbox, Dir: cfg.Dir})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if got := addr(l.Addr()); got != (vsock.Addr{ContextID: hybrid.AnyCID, Port: 7}) {
		t.Errorf("Addr without CID = %v", got)
	}
}

// TestEnvironmentConfig: a nil Config takes world, directory and CID from
// the launcher's environment.
func TestEnvironmentConfig(t *testing.T) {
	cfg := sandbox(t)
	t.Setenv(EnvWorld, "")
	t.Setenv(EnvVsockDir, cfg.Dir)
	t.Setenv(EnvCID, "33")
	l, err := Listen(9, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := os.Lstat(GuestPath(cfg.Dir, 9)); err != nil {
		t.Errorf("listener not created under $%s: %v", EnvVsockDir, err)
	}
	if got := addr(l.Addr()); got != (vsock.Addr{ContextID: 33, Port: 9}) {
		t.Errorf("Addr = %v", got)
	}
	hl, err := hybrid.Listen(filepath.Join(cfg.Dir, "host", "vsock"), 10)
	if err != nil {
		t.Fatal(err)
	}
	defer hl.Close()
	c, err := Dial(ctx10s(t), ParentCID, 10, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

// TestSandboxConn runs nettest's conformance suite on the sandbox
// transport's connections: one accepted from Listen (its peer is the daemon's
// plain Unix connection) and one returned by Dial (its peer is a host
// listener's connection).
func TestSandboxConn(t *testing.T) {
	cfg := sandbox(t)
	var port atomic.Uint32
	port.Store(100)
	t.Run("accepted", func(t *testing.T) {
		nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
			p := port.Add(1)
			l, err := Listen(p, cfg)
			if err != nil {
				return nil, nil, nil, err
			}
			defer l.Close()
			c2, err = net.Dial("unix", GuestPath(cfg.Dir, p))
			if err != nil {
				return nil, nil, nil, err
			}
			if err := hybrid.SendRelay(c2); err != nil {
				c2.Close()
				return nil, nil, nil, err
			}
			c1, err = l.Accept()
			if err != nil {
				c2.Close()
				return nil, nil, nil, err
			}
			return c1, c2, func() { c1.Close(); c2.Close() }, nil
		})
	})
	t.Run("dialed", func(t *testing.T) {
		nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
			p := port.Add(1)
			hl, err := hybrid.Listen(filepath.Join(cfg.Dir, "host", "vsock"), p)
			if err != nil {
				return nil, nil, nil, err
			}
			defer hl.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c1, err = Dial(ctx, ParentCID, p, cfg)
			if err != nil {
				return nil, nil, nil, err
			}
			c2, err = hl.Accept()
			if err != nil {
				c1.Close()
				return nil, nil, nil, err
			}
			return c1, c2, func() { c1.Close(); c2.Close() }, nil
		})
	})
}

// TestClassifyVsockDial covers the AF_VSOCK error mapping without opening
// AF_VSOCK.
func TestClassifyVsockDial(t *testing.T) {
	mk := func(e error) error {
		return &net.OpError{Op: "dial", Net: "vsock", Addr: &vsock.Addr{ContextID: 3, Port: 9}, Err: os.NewSyscallError("connect", e)}
	}
	tests := []struct {
		in    error
		class error
	}{
		{mk(syscall.ECONNREFUSED), ErrNoListener},
		{mk(syscall.ECONNRESET), ErrNoListener}, // a vsock RST during connect: nobody listens
		{mk(syscall.ETIMEDOUT), ErrTimeout},
		{mk(syscall.EHOSTUNREACH), ErrUnreachable},
		{mk(syscall.ENETUNREACH), ErrUnreachable},
		{syscall.ETIMEDOUT, ErrTimeout}, // not an OpError
	}
	for _, tt := range tests {
		got := classifyVsockDial(context.Background(), tt.in, 3, 9)
		var oe *net.OpError
		if !errors.Is(got, tt.class) || !errors.As(got, &oe) || oe.Net != "vsock" {
			t.Errorf("classify(%v) = %v, want a vsock OpError of class %v", tt.in, got, tt.class)
		}
		if !errors.Is(got, errors.Unwrap(errors.Unwrap(tt.in))) && !errors.Is(got, tt.in) {
			t.Errorf("classify(%v) = %v lost the cause", tt.in, got)
		}
	}
	in := mk(syscall.ECONNREFUSED)
	classifyVsockDial(context.Background(), in, 3, 9)
	if _, ok := in.(*net.OpError).Err.(*os.SyscallError); !ok {
		t.Error("classifyVsockDial modified its argument")
	}
}
