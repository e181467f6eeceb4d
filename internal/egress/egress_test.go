package egress

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

type fakeResolver map[string][]netip.Addr

func (f fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if ips, ok := f[host]; ok {
		return ips, nil
	}
	return nil, errors.New("no such host")
}

func TestParseAllowlist(t *testing.T) {
	al, err := ParseAllowlist([]byte("allowlist:\n- {address: kms.us-east-1.amazonaws.com, port: 443}\n- address: 127.0.0.1\n  port: 8443\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []Entry{{"kms.us-east-1.amazonaws.com", 443}, {"127.0.0.1", 8443}}
	if diff := cmp.Diff(want, al.Entries); diff != "" {
		t.Errorf("entries (-want +got):\n%s", diff)
	}
	if al, err := ParseAllowlist(nil); err != nil || len(al.Entries) != 0 {
		t.Errorf("empty document: %v, %v", al, err)
	}
	for _, bad := range []string{
		"allowlist:\n- {address: a, port: 0}\n",
		"allowlist:\n- {address: a, port: 70000}\n",
		"allowlist:\n- {address: '', port: 1}\n",
		"allowlist:\n- {adress: a, port: 1}\n",
		"allowlist: 3\n",
		"allowlist:\n- {address: a, port: x}\n",
	} {
		if _, err := ParseAllowlist([]byte(bad)); !errors.Is(err, ErrConfig) {
			t.Errorf("ParseAllowlist(%q) = %v, want ErrConfig", bad, err)
		}
	}
}

func TestLoadAllowlistMissing(t *testing.T) {
	if _, err := LoadAllowlist(filepath.Join(t.TempDir(), "nope.yaml")); err == nil {
		t.Fatal("LoadAllowlist of a missing file succeeded")
	}
}

func TestCheck(t *testing.T) {
	al := &Allowlist{
		Entries: []Entry{{"kms.example", 443}, {"10.1.2.3", 80}},
		Resolver: fakeResolver{
			"kms.example":   {netip.MustParseAddr("192.0.2.7")},
			"alias.example": {netip.MustParseAddr("192.0.2.7")},
			"other.example": {netip.MustParseAddr("192.0.2.8")},
		},
	}
	ctx := context.Background()
	tests := []struct {
		host string
		port int
		ok   bool
	}{
		{"kms.example", 443, true},
		{"KMS.example", 443, true},
		{"kms.example", 444, false},
		{"192.0.2.7", 443, true},     // resolved name matches the literal
		{"alias.example", 443, true}, // both resolve to the same address
		{"other.example", 443, false},
		{"10.1.2.3", 80, true},
		{"10.1.2.4", 80, false},
		{"unresolvable.example", 443, false},
	}
	for _, tt := range tests {
		err := al.Check(ctx, tt.host, tt.port)
		if tt.ok && err != nil {
			t.Errorf("Check(%s:%d) = %v, want allowed", tt.host, tt.port, err)
		}
		if !tt.ok && !errors.Is(err, ErrNotAllowed) {
			t.Errorf("Check(%s:%d) = %v, want ErrNotAllowed", tt.host, tt.port, err)
		}
	}
	var nilList *Allowlist
	if err := nilList.Check(ctx, "a", 1); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("nil allowlist: %v", err)
	}
}

// echoServer serves on loopback, echoing with a prefix, and returns its port.
func echoServer(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				b, _ := io.ReadAll(c)
				_, _ = c.Write(append([]byte("echo:"), b...))
			}()
		}
	}()
	return l.Addr().(*net.TCPAddr).Port
}

func startProxy(t *testing.T, p *Proxy) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "proxy.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return sock
}

func TestFixedProxy(t *testing.T) {
	port := echoServer(t)
	target := "127.0.0.1:" + strconv.Itoa(port)
	al := &Allowlist{Entries: []Entry{{"127.0.0.1", port}}}
	sock := startProxy(t, &Proxy{Allowlist: al, Target: target})
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	_ = c.(*net.UnixConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "echo:ping" {
		t.Fatalf("got %q", got)
	}
}

func TestFixedProxyRejectsTargetNotOnAllowlist(t *testing.T) {
	p := &Proxy{Allowlist: &Allowlist{Entries: []Entry{{"127.0.0.1", 1}}}, Target: "127.0.0.1:2"}
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "p.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := p.Serve(context.Background(), l); !errors.Is(err, ErrNotAllowed) {
		t.Fatalf("Serve = %v, want ErrNotAllowed", err)
	}
}

func connectThrough(t *testing.T, sock, target, payload string) (int, string) {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	// Pipeline the payload right behind the request head.
	if _, err := io.WriteString(c, "CONNECT "+target+" HTTP/1.1\r\nHost: "+target+"\r\n\r\n"+payload); err != nil {
		t.Fatal(err)
	}
	_ = c.(*net.UnixConn).CloseWrite()
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	rest, _ := io.ReadAll(br)
	return resp.StatusCode, string(rest)
}

func TestConnectProxy(t *testing.T) {
	port := echoServer(t)
	otherPort := echoServer(t)
	al := &Allowlist{Entries: []Entry{{"127.0.0.1", port}}}
	sock := startProxy(t, &Proxy{Allowlist: al})

	code, body := connectThrough(t, sock, "127.0.0.1:"+strconv.Itoa(port), "hello")
	if code != http.StatusOK || body != "echo:hello" {
		t.Fatalf("allowed destination: %d %q", code, body)
	}
	code, body = connectThrough(t, sock, "127.0.0.1:"+strconv.Itoa(otherPort), "hello")
	if code != http.StatusForbidden || !strings.Contains(body, "not on the allowlist") {
		t.Fatalf("other port: %d %q, want 403", code, body)
	}
	code, _ = connectThrough(t, sock, "127.0.0.2:"+strconv.Itoa(port), "x")
	if code != http.StatusForbidden {
		t.Fatalf("other address: %d, want 403", code)
	}
}

func TestConnectProxyRejectsOtherMethods(t *testing.T) {
	sock := startProxy(t, &Proxy{Allowlist: &Allowlist{}})
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = io.WriteString(c, "GET http://127.0.0.1/ HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("status %d, want 405", resp.StatusCode)
	}
}

func TestConnectProxyMalformed(t *testing.T) {
	sock := startProxy(t, &Proxy{Allowlist: &Allowlist{}})
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = io.WriteString(c, "\x00\x01garbage\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("status %d, want 400", resp.StatusCode)
	}
}

func FuzzParseAllowlist(f *testing.F) {
	f.Add([]byte("allowlist:\n- {address: kms.us-east-1.amazonaws.com, port: 443}\n"))
	f.Add([]byte("allowlist: []\n"))
	f.Add([]byte("{"))
	f.Fuzz(func(t *testing.T, b []byte) {
		al, err := ParseAllowlist(b)
		if err != nil {
			return
		}
		for _, e := range al.Entries {
			if e.Port < 1 || e.Port > 65535 || strings.TrimSpace(e.Address) == "" {
				t.Fatalf("invalid entry accepted: %+v", e)
			}
		}
	})
}

func BenchmarkConnectProxyThroughput(b *testing.B) {
	// A sink server that discards what it receives.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	port := l.Addr().(*net.TCPAddr).Port
	sock := filepath.Join(b.TempDir(), "p.sock")
	pl, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go (&Proxy{Allowlist: &Allowlist{Entries: []Entry{{"127.0.0.1", port}}}}).Serve(ctx, pl)
	c, err := net.Dial("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	target := "127.0.0.1:" + strconv.Itoa(port)
	_, _ = io.WriteString(c, "CONNECT "+target+" HTTP/1.1\r\nHost: "+target+"\r\n\r\n")
	if _, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
}

func TestServeEndsOpenTunnels(t *testing.T) {
	port := echoServer(t)
	al := &Allowlist{Entries: []Entry{{"127.0.0.1", port}}}
	sock := filepath.Join(t.TempDir(), "p.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- (&Proxy{Allowlist: al}).Serve(ctx, l) }()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	target := "127.0.0.1:" + strconv.Itoa(port)
	_, _ = io.WriteString(c, "CONNECT "+target+" HTTP/1.1\r\nHost: "+target+"\r\n\r\n")
	if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	// The tunnel is open and idle; ending the proxy must close it.
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Serve did not return while a tunnel was open")
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("the tunnel was not closed: %v", err)
	}
}
