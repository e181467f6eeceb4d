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

func TestParseAllowlistAddresses(t *testing.T) {
	for _, good := range []string{"10.0.0.0/8", "fd00::/8", "::ffff:10.0.0.0/104", "::1", "::ffff:127.0.0.1", "KMS.example.", "_svc.example", "localhost"} {
		if _, err := ParseAllowlist([]byte("allowlist:\n- {address: '" + good + "', port: 1}\n")); err != nil {
			t.Errorf("address %q: %v", good, err)
		}
	}
	for _, bad := range []string{
		"0.0.0.0", "::", "::ffff:0.0.0.0", "0.1.2.3", // this host
		"127.1", "2130706433", "0177.0.0.1", "0x7f.0.0.1", "127.0.0.01", "127.0.0.1.", // non-canonical IPv4
		"10.0.0.1/8", "10.0.0.0/33", "fe80::1%eth0", "bad host", "ünicode.example", "a..b", "-", "x/y",
	} {
		if _, err := ParseAllowlist([]byte("allowlist:\n- {address: '" + bad + "', port: 1}\n")); !errors.Is(err, ErrConfig) {
			t.Errorf("address %q: %v, want ErrConfig", bad, err)
		}
	}
}

// countingResolver answers from a map (as DNS does: case-insensitive, a
// trailing dot or not) and counts lookups per name as asked.
type countingResolver struct {
	answers map[string][]netip.Addr
	n       map[string]int
}

func (r *countingResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	r.n[host]++
	if ips, ok := r.answers[strings.ToLower(strings.TrimSuffix(host, "."))]; ok {
		return ips, nil
	}
	return nil, errors.New("no such host")
}

func TestResolve(t *testing.T) {
	ip := netip.MustParseAddr
	answers := map[string][]netip.Addr{
		"kms.example":   {ip("192.0.2.7"), ip("2001:db8::7")},
		"alias.example": {ip("192.0.2.7")},
		"other.example": {ip("192.0.2.8")},
		"multi.example": {ip("192.0.2.8"), ip("192.0.2.7")},
		"mixed.example": {ip("192.0.2.8"), ip("10.9.1.1"), ip("::ffff:10.9.2.2"), ip("fd00::1"), ip("10.9.1.1")},
		"zero.example":  {ip("0.0.0.0"), ip("::"), ip("10.9.0.5")},
		"zero2.example": {ip("0.0.0.0")},
	}
	entries := []Entry{
		{"kms.example", 443}, {"10.1.2.3", 80}, {"10.9.0.0/16", 8443}, {"fd00::/8", 8443},
		{"0.0.0.0/0", 9}, {"zero2.example", 9}, {"127.0.0.1", 7777},
		{"not an entry", 7777}, // built by hand, invalid: permits nothing
	}
	tests := []struct {
		host    string
		port    int
		want    []netip.Addr
		wantErr error
		lookups map[string]int
	}{
		// Allowed by name: every address of that one lookup.
		{"kms.example", 443, []netip.Addr{ip("192.0.2.7"), ip("2001:db8::7")}, nil, map[string]int{"kms.example": 1}},
		{"KMS.example.", 443, []netip.Addr{ip("192.0.2.7"), ip("2001:db8::7")}, nil, map[string]int{"KMS.example.": 1}},
		{"kms.example", 444, nil, ErrNotAllowed, map[string]int{}},
		// vsock-proxy's rule: an address the allowlisted name resolves to.
		{"192.0.2.7", 443, []netip.Addr{ip("192.0.2.7")}, nil, map[string]int{"kms.example": 1}},
		{"::ffff:192.0.2.7", 443, []netip.Addr{ip("192.0.2.7")}, nil, map[string]int{"kms.example": 1}},
		{"alias.example", 443, []netip.Addr{ip("192.0.2.7")}, nil, map[string]int{"alias.example": 1, "kms.example": 1}},
		{"multi.example", 443, []netip.Addr{ip("192.0.2.7")}, nil, map[string]int{"multi.example": 1, "kms.example": 1}},
		{"other.example", 443, nil, ErrNotAllowed, map[string]int{"other.example": 1, "kms.example": 1}},
		// IP and CIDR entries: only the addresses they match.
		{"10.1.2.3", 80, []netip.Addr{ip("10.1.2.3")}, nil, map[string]int{}},
		{"10.1.2.4", 80, nil, ErrNotAllowed, map[string]int{}},
		{"mixed.example", 8443, []netip.Addr{ip("10.9.1.1"), ip("10.9.2.2"), ip("fd00::1")}, nil, map[string]int{"mixed.example": 1}},
		// Unspecified addresses are never dialled, whatever the list says.
		{"zero.example", 8443, []netip.Addr{ip("10.9.0.5")}, nil, map[string]int{"zero.example": 1}},
		{"zero2.example", 9, nil, ErrNotAllowed, map[string]int{"zero2.example": 1}},
		{"0.0.0.0", 9, nil, ErrNotAllowed, map[string]int{}},
		{"0.1.2.3", 9, nil, ErrNotAllowed, map[string]int{}},
		{"::", 9, nil, ErrNotAllowed, map[string]int{}},
		{"1.2.3.4", 9, []netip.Addr{ip("1.2.3.4")}, nil, map[string]int{}},
		// Lookups fail: ErrResolve; not even tried for a port no entry has.
		{"unresolvable.example", 443, nil, ErrResolve, map[string]int{"unresolvable.example": 1}},
		{"unresolvable.example", 1, nil, ErrNotAllowed, map[string]int{}},
		// Hosts that are neither canonical addresses nor names.
		{"2130706433", 7777, nil, ErrNotAllowed, map[string]int{}},
		{"127.1", 7777, nil, ErrNotAllowed, map[string]int{}},
		{"0x7f.0.0.1", 7777, nil, ErrNotAllowed, map[string]int{}},
		{"fe80::1%lo", 7777, nil, ErrNotAllowed, map[string]int{}},
		{"bad host", 7777, nil, ErrNotAllowed, map[string]int{}},
		{"127.0.0.1", 7777, []netip.Addr{ip("127.0.0.1")}, nil, map[string]int{}},
	}
	for _, tt := range tests {
		r := &countingResolver{answers: answers, n: map[string]int{}}
		al := &Allowlist{Entries: entries, Resolver: r}
		got, err := al.Resolve(context.Background(), tt.host, tt.port)
		if !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
			t.Errorf("Resolve(%s, %d) error = %v, want %v", tt.host, tt.port, err, tt.wantErr)
		}
		if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
			t.Errorf("Resolve(%s, %d) (-want +got):\n%s", tt.host, tt.port, diff)
		}
		if diff := cmp.Diff(tt.lookups, r.n); diff != "" {
			t.Errorf("Resolve(%s, %d) lookups (-want +got):\n%s", tt.host, tt.port, diff)
		}
	}
	var nilList *Allowlist
	if _, err := nilList.Resolve(context.Background(), "a", 1); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("nil allowlist: %v", err)
	}
}

// TestResolveAll: the intersection of an operator's list and an enclave's
// own. The destination is looked up once; an address passes only when
// every list permits it; a list without an entry for the port stops the
// check before any lookup.
func TestResolveAll(t *testing.T) {
	ip := netip.MustParseAddr
	answers := map[string][]netip.Addr{
		"kms.example":   {ip("192.0.2.7"), ip("2001:db8::7")},
		"alias.example": {ip("192.0.2.7")},
		"mixed.example": {ip("192.0.2.8"), ip("10.9.1.1"), ip("::ffff:10.9.2.2"), ip("fd00::1")},
	}
	outer := []Entry{{"kms.example", 443}, {"10.0.0.0/8", 5432}, {"10.9.0.0/16", 8443}, {"fd00::/8", 8443}, {"127.0.0.1", 80}}
	tests := []struct {
		name    string
		inner   []Entry
		host    string
		port    int
		want    []netip.Addr
		wantErr error
		lookups map[string]int
	}{
		{"address inside the prefix", []Entry{{"10.0.0.5", 5432}}, "10.0.0.5", 5432, []netip.Addr{ip("10.0.0.5")}, nil, map[string]int{}},
		{"another address of the prefix", []Entry{{"10.0.0.5", 5432}}, "10.0.0.6", 5432, nil, ErrNotAllowed, map[string]int{}},
		{"name narrowed to one address", []Entry{{"10.9.1.1", 8443}}, "mixed.example", 8443,
			[]netip.Addr{ip("10.9.1.1")}, nil, map[string]int{"mixed.example": 1}},
		{"name narrowed to a family", []Entry{{"fd00::/16", 8443}}, "mixed.example", 8443,
			[]netip.Addr{ip("fd00::1")}, nil, map[string]int{"mixed.example": 1}},
		{"by name in both", []Entry{{"kms.example", 443}}, "kms.example", 443,
			[]netip.Addr{ip("192.0.2.7"), ip("2001:db8::7")}, nil, map[string]int{"kms.example": 1}},
		{"named by the operator, narrowed to one address", []Entry{{"192.0.2.7", 443}}, "kms.example", 443,
			[]netip.Addr{ip("192.0.2.7")}, nil, map[string]int{"kms.example": 1}},
		// vsock-proxy's rule in both lists: each looks its entry up.
		{"another name of a listed name", []Entry{{"kms.example", 443}}, "alias.example", 443,
			[]netip.Addr{ip("192.0.2.7")}, nil, map[string]int{"alias.example": 1, "kms.example": 2}},
		// The enclave's list has no entry for the port: not even looked up.
		{"port the enclave does not list", []Entry{{"10.0.0.5", 5432}}, "kms.example", 443, nil, ErrNotAllowed, map[string]int{}},
		{"empty own list", []Entry{}, "kms.example", 443, nil, ErrNotAllowed, map[string]int{}},
		// Wider than the operator's (Outside refuses it at launch): the
		// operator's list still decides.
		{"wider own list", []Entry{{"0.0.0.0/0", 5432}}, "192.0.2.8", 5432, nil, ErrNotAllowed, map[string]int{}},
		{"wider own list, name", []Entry{{"0.0.0.0/0", 8443}}, "mixed.example", 8443,
			[]netip.Addr{ip("10.9.1.1"), ip("10.9.2.2")}, nil, map[string]int{"mixed.example": 1}},
		{"own list on a port the operator does not list", []Entry{{"127.0.0.1", 81}}, "127.0.0.1", 81, nil, ErrNotAllowed, map[string]int{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &countingResolver{answers: answers, n: map[string]int{}}
			o := &Allowlist{Entries: outer, Resolver: r}
			in := &Allowlist{Entries: tt.inner, Resolver: r}
			for _, order := range [][]*Allowlist{{o, in}, {in, o}} {
				clear(r.n)
				got, err := ResolveAll(context.Background(), tt.host, tt.port, order...)
				if !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
					t.Errorf("ResolveAll(%s, %d) error = %v, want %v", tt.host, tt.port, err, tt.wantErr)
				}
				if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
					t.Errorf("ResolveAll(%s, %d) (-want +got):\n%s", tt.host, tt.port, diff)
				}
				if diff := cmp.Diff(tt.lookups, r.n); diff != "" {
					t.Errorf("ResolveAll(%s, %d) lookups (-want +got):\n%s", tt.host, tt.port, diff)
				}
			}
		})
	}
	ctx := context.Background()
	o := &Allowlist{Entries: outer}
	for _, lists := range [][]*Allowlist{nil, {nil}, {o, nil}, {nil, o}} {
		if _, err := ResolveAll(ctx, "127.0.0.1", 80, lists...); !errors.Is(err, ErrNotAllowed) {
			t.Errorf("ResolveAll with lists %v: %v, want ErrNotAllowed", lists, err)
		}
	}
}

func TestOutside(t *testing.T) {
	outer := &Allowlist{Entries: []Entry{
		{"kms.example", 443}, {"10.0.0.0/8", 5432}, {"10.1.2.3", 6379}, {"fd00::/8", 8443}, {"::ffff:192.0.2.0/120", 25},
		{"0.0.0.0/0", 9000}, {"::/0", 9000}, {"0.0.0.0/0", 9001},
	}}
	tests := []struct {
		name    string
		entries []Entry
		outside []Entry
	}{
		{"same name", []Entry{{"kms.example", 443}, {"KMS.Example.", 443}}, nil},
		{"name on another port", []Entry{{"kms.example", 444}}, []Entry{{"kms.example", 444}}},
		{"another name", []Entry{{"evil.example", 443}, {"sub.kms.example", 443}}, []Entry{{"evil.example", 443}, {"sub.kms.example", 443}}},
		{"addresses and prefixes inside", []Entry{{"10.0.0.5", 5432}, {"10.20.0.0/16", 5432}, {"10.0.0.0/8", 5432}, {"10.1.2.3", 6379}, {"fd00:1::/32", 8443}, {"192.0.2.9", 25}}, nil},
		{"wider prefix", []Entry{{"10.0.0.0/7", 5432}, {"0.0.0.0/0", 5432}, {"10.1.2.0/24", 6379}}, []Entry{{"10.0.0.0/7", 5432}, {"0.0.0.0/0", 5432}, {"10.1.2.0/24", 6379}}},
		{"other family", []Entry{{"::ffff:10.0.0.5", 5432}, {"fd00::1", 5432}}, []Entry{{"fd00::1", 5432}}},
		// A name may resolve anywhere: within only every address of both
		// families, or the same name.
		{"name within everything", []Entry{{"anything.example", 9000}}, nil},
		{"name within IPv4 only", []Entry{{"anything.example", 9001}}, []Entry{{"anything.example", 9001}}},
		{"address of a listed name", []Entry{{"192.0.2.7", 443}}, []Entry{{"192.0.2.7", 443}}},
		{"invalid entry", []Entry{{"not a host", 443}, {"kms.example", 0}}, []Entry{{"not a host", 443}, {"kms.example", 0}}},
		{"empty", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := &Allowlist{Entries: tt.entries}
			if diff := cmp.Diff(tt.outside, in.Outside(outer)); diff != "" {
				t.Errorf("Outside (-want +got):\n%s", diff)
			}
		})
	}
	if got := (&Allowlist{Entries: []Entry{{"127.0.0.1", 80}}}).Outside(nil); len(got) != 1 {
		t.Errorf("Outside(nil) = %v, want the entry: no list permits nothing", got)
	}
}

func TestParseEntry(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want Entry
	}{
		{"kms.us-east-1.amazonaws.com:443", Entry{"kms.us-east-1.amazonaws.com", 443}},
		{" 10.0.0.5:5432 ", Entry{"10.0.0.5", 5432}},
		{"10.0.0.0/8:5432", Entry{"10.0.0.0/8", 5432}},
		{"[::1]:443", Entry{"::1", 443}},
		{"[fd00::/8]:443", Entry{"fd00::/8", 443}},
		{"localhost:1", Entry{"localhost", 1}},
	} {
		got, err := ParseEntry(tt.in)
		if err != nil {
			t.Errorf("ParseEntry(%q): %v", tt.in, err)
			continue
		}
		if got != tt.want {
			t.Errorf("ParseEntry(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
		if again, err := ParseEntry(got.String()); err != nil || again != got {
			t.Errorf("ParseEntry(%q) = %+v, %v; want %+v", got.String(), again, err, got)
		}
	}
	for _, bad := range []string{
		"", "kms.example", "kms.example:", ":443", "kms.example:0", "kms.example:65536", "kms.example:+443", "kms.example:https",
		"::1:443", "0.0.0.0:443", "127.1:443", "10.0.0.1/8:443", "bad host:443", "[fe80::1%eth0]:443", "a:1,b:2", "kms.example :443",
	} {
		if e, err := ParseEntry(bad); !errors.Is(err, ErrConfig) {
			t.Errorf("ParseEntry(%q) = %+v, %v; want ErrConfig", bad, e, err)
		}
	}
}

func FuzzParseEntry(f *testing.F) {
	for _, s := range []string{"kms.us-east-1.amazonaws.com:443", "10.0.0.0/8:5432", "[fd00::/8]:443", "[::1]:1", "a:0", "::1:443", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e, err := ParseEntry(s)
		if err != nil {
			return
		}
		if _, err := NewAllowlist([]Entry{e}); err != nil {
			t.Fatalf("ParseEntry(%q) = %+v, which NewAllowlist refuses: %v", s, e, err)
		}
		if again, err := ParseEntry(e.String()); err != nil || again != e {
			t.Fatalf("ParseEntry(%q) = %+v, but ParseEntry(%q) = %+v, %v", s, e, e.String(), again, err)
		}
	})
}

func FuzzParseHost(f *testing.F) {
	for _, s := range []string{"kms.example", "KMS.Example.", "127.0.0.1", "::ffff:127.0.0.1", "2130706433", "0x7f.1", "fe80::1%lo", "a..b", "-", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, host string) {
		name, ip, err := parseHost(host)
		switch {
		case err != nil:
			if name != "" || ip.IsValid() {
				t.Fatalf("parseHost(%q) returned %q %v with error %v", host, name, ip, err)
			}
		case ip.IsValid():
			if name != "" || ip.Is4In6() || ip.Zone() != "" {
				t.Fatalf("parseHost(%q) = %q %v", host, name, ip)
			}
		default:
			if _, err := netip.ParseAddr(name); err == nil || name != strings.ToLower(name) || strings.HasSuffix(name, ".") {
				t.Fatalf("parseHost(%q) = name %q", host, name)
			}
			if again, _, err := parseHost(name); err != nil || again != name {
				t.Fatalf("parseHost(%q) = %q, but parseHost(%q) = %q, %v", host, name, name, again, err)
			}
		}
	})
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
	port := echoServer(t)
	p := &Proxy{Allowlist: &Allowlist{Entries: []Entry{{"127.0.0.1", port + 1}}}, Target: "127.0.0.1:" + strconv.Itoa(port)}
	if err := p.Validate(context.Background()); !errors.Is(err, ErrNotAllowed) {
		t.Fatalf("Validate = %v, want ErrNotAllowed", err)
	}
	// Served anyway, each connection is refused.
	if got := fixedAttempt(t, startProxy(t, p)); got != "refused" {
		t.Fatalf("connection through the proxy: %q, want refused", got)
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
