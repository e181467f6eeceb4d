package egress

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/internal/egress/egresstest"
)

// Addresses of the attack tests: an allowlisted service on listedIP and a
// "secret" one on secretIP (the parent's own loopback services, an internal
// network, instance metadata), on the same port.
var (
	listedIP = netip.MustParseAddr("127.0.0.1")
	secretIP = netip.MustParseAddr("127.0.0.2")
)

// twoServices listens on listedIP:P ("allowed") and secretIP:P ("secret")
// with one port P, and returns P. Each service writes its name to every
// connection and closes it.
func twoServices(t *testing.T) int {
	t.Helper()
	serve := func(l net.Listener, name string) {
		t.Cleanup(func() { l.Close() })
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				_, _ = io.WriteString(c, name)
				c.Close()
			}
		}()
	}
	for attempt := 0; attempt < 20; attempt++ {
		secret, err := net.Listen("tcp", netip.AddrPortFrom(secretIP, 0).String())
		if err != nil {
			t.Fatal(err)
		}
		port := secret.Addr().(*net.TCPAddr).Port
		listed, err := net.Listen("tcp", netip.AddrPortFrom(listedIP, uint16(port)).String())
		if err != nil {
			secret.Close() // port taken on the listed address: try another
			continue
		}
		serve(secret, "secret")
		serve(listed, "allowed")
		return port
	}
	t.Fatal("no port free on both loopback addresses")
	return 0
}

// dialVia is a proxy dialer that resolves names with r, the resolver the
// allowlist uses (in a deployment both use the host's), and fails the test
// when it is asked to dial a name rather than an address that was checked.
func dialVia(t *testing.T, r *net.Resolver) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{Resolver: r}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if _, err := netip.ParseAddrPort(addr); err != nil {
			t.Errorf("the proxy dialled %q, not the address it checked", addr)
		}
		return d.DialContext(ctx, network, addr)
	}
}

// alternate answers a name's odd-numbered queries with first and its
// even-numbered ones with second: a rebinding name with TTL 0.
func alternate(first, second netip.Addr) func(n int) []netip.Addr {
	return func(n int) []netip.Addr {
		if n%2 == 1 {
			return []netip.Addr{first}
		}
		return []netip.Addr{second}
	}
}

// fixedAttempt connects to a fixed proxy and returns what the destination
// sent: a service's name, or "refused" when the proxy closed the connection
// without reaching one.
func fixedAttempt(t *testing.T, sock string) string {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	_ = c.(*net.UnixConn).CloseWrite()
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) == 0 {
		return "refused"
	}
	return string(b)
}

// connectAttempt opens a CONNECT tunnel and returns what the destination
// sent, or "refused" on a 403.
func connectAttempt(t *testing.T, sock, target string) string {
	t.Helper()
	code, body := connectThrough(t, sock, target, "")
	switch code {
	case http.StatusOK:
		return body
	case http.StatusForbidden:
		return "refused"
	}
	return strconv.Itoa(code) + " " + body
}

// TestDNSCannotBypassAllowlist is the attack: a name whose DNS answer holds
// an unlisted address next to a listed one, or that changes its answer
// between two lookups, must never reach the unlisted address, through either
// kind of proxy. Each connection resolves the destination exactly once.
func TestDNSCannotBypassAllowlist(t *testing.T) {
	const attempts = 4
	both := []netip.Addr{secretIP, listedIP}
	tests := []struct {
		name    string
		entries func(port int) []Entry
		// narrow, when set, is an enclave's own list (Proxy.Narrow).
		narrow func(port int) []Entry
		// answers are the destination name's A records per query.
		answers func(n int) []netip.Addr
		// The outcomes of the attempts, through a CONNECT proxy and through
		// a fixed proxy (whose startup check takes the first lookup).
		wantConnect, wantFixed []string
	}{{
		name:        "several addresses, IP entry",
		entries:     func(p int) []Entry { return []Entry{{"127.0.0.1", p}} },
		answers:     func(int) []netip.Addr { return both },
		wantConnect: []string{"allowed", "allowed", "allowed", "allowed"},
		wantFixed:   []string{"allowed", "allowed", "allowed", "allowed"},
	}, {
		name:        "rebinding, IP entry",
		entries:     func(p int) []Entry { return []Entry{{"127.0.0.1", p}} },
		answers:     alternate(listedIP, secretIP),
		wantConnect: []string{"allowed", "refused", "allowed", "refused"},
		wantFixed:   []string{"refused", "allowed", "refused", "allowed"},
	}, {
		name:        "several addresses, CIDR entry",
		entries:     func(p int) []Entry { return []Entry{{"127.0.0.1/32", p}} },
		answers:     func(int) []netip.Addr { return both },
		wantConnect: []string{"allowed", "allowed", "allowed", "allowed"},
		wantFixed:   []string{"allowed", "allowed", "allowed", "allowed"},
	}, {
		// vsock-proxy's rule: a destination also matches when its address
		// is one the allowlisted name resolves to.
		name:        "several addresses, through a named entry's addresses",
		entries:     func(p int) []Entry { return []Entry{{"svc.test", p}} },
		answers:     func(int) []netip.Addr { return both },
		wantConnect: []string{"allowed", "allowed", "allowed", "allowed"},
		wantFixed:   []string{"allowed", "allowed", "allowed", "allowed"},
	}, {
		name:        "rebinding, through a named entry's addresses",
		entries:     func(p int) []Entry { return []Entry{{"svc.test", p}} },
		answers:     alternate(listedIP, secretIP),
		wantConnect: []string{"allowed", "refused", "allowed", "refused"},
		wantFixed:   []string{"refused", "allowed", "refused", "allowed"},
	}, {
		// The operator's list permits both services; the enclave's own
		// narrows it to one, and the one lookup of each connection is
		// checked against both.
		name:        "several addresses, narrowed by the enclave's list",
		entries:     func(p int) []Entry { return []Entry{{"127.0.0.0/8", p}} },
		narrow:      func(p int) []Entry { return []Entry{{"127.0.0.1", p}} },
		answers:     func(int) []netip.Addr { return both },
		wantConnect: []string{"allowed", "allowed", "allowed", "allowed"},
		wantFixed:   []string{"allowed", "allowed", "allowed", "allowed"},
	}, {
		// Validate checks the operator's list alone, which permits both
		// answers: it takes the first, and each connection the next.
		name:        "rebinding, narrowed by the enclave's list",
		entries:     func(p int) []Entry { return []Entry{{"127.0.0.0/8", p}} },
		narrow:      func(p int) []Entry { return []Entry{{"127.0.0.1", p}} },
		answers:     alternate(listedIP, secretIP),
		wantConnect: []string{"allowed", "refused", "allowed", "refused"},
		wantFixed:   []string{"refused", "allowed", "refused", "allowed"},
	}, {
		name:        "rebinding, narrowed through a named entry's addresses",
		entries:     func(p int) []Entry { return []Entry{{"127.0.0.0/8", p}} },
		narrow:      func(p int) []Entry { return []Entry{{"svc.test", p}} },
		answers:     alternate(listedIP, secretIP),
		wantConnect: []string{"allowed", "refused", "allowed", "refused"},
		wantFixed:   []string{"refused", "allowed", "refused", "allowed"},
	}}
	for _, tt := range tests {
		for _, mode := range []string{"connect", "fixed"} {
			t.Run(tt.name+"/"+mode, func(t *testing.T) {
				port := twoServices(t)
				const evil = "evil.test"
				dns := egresstest.StartDNS(t, func(name string, n int) ([]netip.Addr, bool) {
					switch name {
					case evil:
						return tt.answers(n), true
					case "svc.test":
						return []netip.Addr{listedIP}, true
					}
					return nil, false
				})
				r := NewResolver(netip.MustParseAddrPort(dns.Addr()))
				al := &Allowlist{Entries: tt.entries(port), Resolver: r}
				var narrow *Allowlist
				if tt.narrow != nil {
					narrow = &Allowlist{Entries: tt.narrow(port), Resolver: r}
				}
				target := net.JoinHostPort(evil, strconv.Itoa(port))
				var got, want []string
				lookups := attempts
				if mode == "connect" {
					sock := startProxy(t, &Proxy{Allowlist: al, Narrow: narrow, Dial: dialVia(t, r)})
					for range attempts {
						got = append(got, connectAttempt(t, sock, target))
					}
					want = tt.wantConnect
				} else {
					p := &Proxy{Allowlist: al, Narrow: narrow, Target: target, Dial: dialVia(t, r)}
					// vsock-proxy's startup check, as the daemon's monitor
					// runs it.
					if err := p.Validate(context.Background()); err != nil {
						t.Fatalf("Validate: %v", err)
					}
					sock := startProxy(t, p)
					for range attempts {
						got = append(got, fixedAttempt(t, sock))
					}
					want, lookups = tt.wantFixed, attempts+1
				}
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("outcomes of %d connections to %s (-want +got):\n%s", attempts, target, diff)
				}
				if n := dns.Queries(evil); n != lookups {
					t.Errorf("%s was looked up %d times, want %d (once per check, never again to dial)", evil, n, lookups)
				}
			})
		}
	}
}

// TestAddressSpellingsCannotBypassAllowlist: IPv4-mapped IPv6 addresses,
// unspecified addresses (which connect to this host) and non-canonical IPv4
// spellings (decimal, octal, hex, shortened) reach nothing the list does
// not name.
func TestAddressSpellingsCannotBypassAllowlist(t *testing.T) {
	port := twoServices(t)
	p := strconv.Itoa(port)
	dns := egresstest.StartDNS(t, egresstest.StaticAnswers(map[string][]netip.Addr{
		"mapped.test":  {netip.MustParseAddr("::ffff:127.0.0.2")},
		"mapped1.test": {netip.MustParseAddr("::ffff:127.0.0.1")},
		"zero.test":    {netip.IPv4Unspecified()},
		"zero6.test":   {netip.IPv6Unspecified()},
		"any.test":     {netip.IPv4Unspecified(), listedIP},
	}))
	al := &Allowlist{
		Entries: []Entry{
			{"127.0.0.1", port},
			// "Everything on port+1" must still not include this host's
			// unspecified address (port+1 is only used by refused cases).
			{"0.0.0.0/0", port + 1}, {"::/0", port + 1},
			{"zero.test", port}, {"zero6.test", port}, {"any.test", port},
		},
	}
	r := NewResolver(netip.MustParseAddrPort(dns.Addr()))
	al.Resolver = r
	sock := startProxy(t, &Proxy{Allowlist: al, Dial: dialVia(t, r)})
	for _, tt := range []struct{ target, want string }{
		{"[::ffff:127.0.0.1]:" + p, "allowed"},
		{"[::ffff:127.0.0.2]:" + p, "refused"},
		{"[::ffff:7f00:2]:" + p, "refused"},
		{"mapped.test:" + p, "refused"},
		{"mapped1.test:" + p, "allowed"},
		{"0.0.0.0:" + p, "refused"},
		{"[::]:" + p, "refused"},
		{"[::ffff:0.0.0.0]:" + p, "refused"},
		{"zero.test:" + p, "refused"},
		{"zero6.test:" + p, "refused"},
		{"any.test:" + p, "allowed"}, // only the listed address is dialled
		{"2130706434:" + p, "refused"},
		{"2130706433:" + p, "refused"}, // 127.0.0.1, but not spelled canonically
		{"0177.0.0.2:" + p, "refused"},
		{"0x7f.0.0.2:" + p, "refused"},
		{"127.2:" + p, "refused"},
		{"127.0.0.02:" + p, "refused"},
		{"[fe80::1%25lo]:" + p, "refused"},
		{"127.0.0.1.:" + p, "refused"},
	} {
		if got := connectAttempt(t, sock, tt.target); got != tt.want {
			t.Errorf("CONNECT %s: %s, want %s", tt.target, got, tt.want)
		}
	}
}
