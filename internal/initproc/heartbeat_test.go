package initproc

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeParent listens on a Unix socket and handles each connection with fn.
func fakeParent(t *testing.T, fn func(net.Conn)) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "hb")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "vsock_9000")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fn(c)
			}()
		}
	}()
	return sock
}

// unixDialer dials sock with DialUnix, the sandbox's dialer.
func unixDialer(sock string) Dialer {
	return func(ctx context.Context) (Conn, error) { return DialUnix(ctx, sock) }
}

// echoOnce reads one byte and answers with reply.
func echoOnce(reply func(b byte) []byte) func(net.Conn) {
	return func(c net.Conn) {
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return
		}
		_, _ = c.Write(reply(b[0]))
	}
}

var fastRetry = HeartbeatConfig{Attempts: 3, Backoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond, Timeout: 10 * time.Second}

func TestHeartbeat(t *testing.T) {
	var got atomic.Int32
	tests := []struct {
		name    string
		parent  func(net.Conn)
		cfg     HeartbeatConfig
		wantErr bool
	}{
		{"echo", echoOnce(func(b byte) []byte { got.Store(int32(b)); return []byte{b} }), fastRetry, false},
		{"wrong byte", echoOnce(func(byte) []byte { return []byte{0x00} }), fastRetry, true},
		{"EOF without answer", echoOnce(func(byte) []byte { return nil }), fastRetry, true},
		{"closes at once", func(net.Conn) {}, fastRetry, true},
		{"never answers", func(c net.Conn) { _, _ = io.Copy(io.Discard, c) },
			HeartbeatConfig{Attempts: 1, Timeout: 200 * time.Millisecond}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sock := fakeParent(t, tc.parent)
			err := Heartbeat(context.Background(), unixDialer(sock), tc.cfg)
			if tc.wantErr {
				if !errors.Is(err, ErrHeartbeat) {
					t.Fatalf("Heartbeat = %v, want ErrHeartbeat", err)
				}
				t.Logf("error as reported: %v", err)
				return
			}
			if err != nil {
				t.Fatalf("Heartbeat: %v", err)
			}
		})
	}
	if got.Load() != HeartbeatByte {
		t.Errorf("parent received 0x%02X, want 0x%02X", got.Load(), HeartbeatByte)
	}
}

func TestHeartbeatTimeoutIsDeadline(t *testing.T) {
	sock := fakeParent(t, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
	err := Heartbeat(context.Background(), unixDialer(sock), HeartbeatConfig{Attempts: 1, Timeout: 100 * time.Millisecond})
	if !errors.Is(err, ErrHeartbeat) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Heartbeat = %v; want ErrHeartbeat wrapping context.DeadlineExceeded", err)
	}
}

func TestHeartbeatCancel(t *testing.T) {
	sock := fakeParent(t, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(50 * time.Millisecond); cancel() }()
	err := Heartbeat(ctx, unixDialer(sock), HeartbeatConfig{Attempts: 1, Timeout: time.Hour})
	if !errors.Is(err, ErrHeartbeat) || !errors.Is(err, context.Canceled) {
		t.Fatalf("Heartbeat = %v; want ErrHeartbeat wrapping context.Canceled", err)
	}
}

func TestHeartbeatRetriesConnect(t *testing.T) {
	sock := fakeParent(t, echoOnce(func(b byte) []byte { return []byte{b} }))
	var calls atomic.Int32
	dial := func(ctx context.Context) (Conn, error) {
		if calls.Add(1) < 3 { // the vsock device is not there yet
			return nil, errors.New("connect: no such device")
		}
		return unixDialer(sock)(ctx)
	}
	if err := Heartbeat(context.Background(), dial, fastRetry); err != nil {
		t.Fatalf("Heartbeat: %v", err)
	}
	if calls.Load() != 3 {
		t.Errorf("dial called %d times, want 3", calls.Load())
	}

	calls.Store(-100) // never succeeds within the attempts
	err := Heartbeat(context.Background(), dial, fastRetry)
	if !errors.Is(err, ErrHeartbeat) {
		t.Fatalf("Heartbeat with a parent that never listens = %v, want ErrHeartbeat", err)
	}
	if n := calls.Load() + 100; n != int32(fastRetry.Attempts) {
		t.Errorf("dial called %d times, want %d", n, fastRetry.Attempts)
	}
}

func TestHeartbeatNobodyListening(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "absent")
	err := Heartbeat(context.Background(), unixDialer(sock), fastRetry)
	if !errors.Is(err, ErrHeartbeat) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Heartbeat = %v; want ErrHeartbeat wrapping the connect error", err)
	}
}

func BenchmarkHeartbeat(b *testing.B) {
	dir := b.TempDir()
	sock := filepath.Join(dir, "hb")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			var buf [1]byte
			if _, err := io.ReadFull(c, buf[:]); err == nil {
				_, _ = c.Write(buf[:])
			}
			c.Close()
		}
	}()
	for b.Loop() {
		if err := Heartbeat(context.Background(), unixDialer(sock), HeartbeatConfig{}); err != nil {
			b.Fatal(err)
		}
	}
}

func TestDialUnix(t *testing.T) {
	sock := fakeParent(t, func(c net.Conn) { _, _ = c.Write([]byte("hi")) })
	c, err := DialUnix(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "hi" {
		t.Fatalf("read %q, %v; want \"hi\" then EOF", b, err)
	}

	if c, err := DialUnix(context.Background(), filepath.Join(t.TempDir(), "absent")); err == nil || !errors.Is(err, unix.ENOENT) {
		t.Errorf("DialUnix(absent) = %v, %v; want ENOENT", c, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	// A Unix connect completes at once, so a cancelled context does not
	// matter; the connection works.
	if c, err := DialUnix(ctx, sock); err != nil {
		t.Errorf("DialUnix with a cancelled context: %v", err)
	} else {
		c.Close()
	}
}

func TestDialVsockNoDevice(t *testing.T) {
	// Only the failure path can be tested here: AF_VSOCK connections from
	// tests are forbidden (/dev/vsock may reach the real host). An
	// unsupported address family fails at socket(); nothing is connected.
	if _, err := dialSocket(context.Background(), unix.AF_MAX+1, &unix.SockaddrVM{CID: 1, Port: 1}, "test"); err == nil {
		t.Fatal("dialSocket with an invalid address family succeeded")
	}
}
