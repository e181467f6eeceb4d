package egress

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/cloister/cloister/internal/egress/egresstest"
)

// BenchmarkAllowlistResolve measures the per-connection check with an
// in-memory resolver: the allowlist logic alone, without DNS round trips.
func BenchmarkAllowlistResolve(b *testing.B) {
	ip := netip.MustParseAddr
	answers := map[string][]netip.Addr{
		"kms.us-east-1.amazonaws.com": {ip("52.94.0.1"), ip("52.94.0.2")},
		"svc.example":                 {ip("10.0.0.5"), ip("127.0.0.1")},
	}
	// vsock-proxy's shipped allowlist: a kms and a kms-fips name per region,
	// all on port 443.
	var kmsEntries []Entry
	for i := range 30 {
		kmsEntries = append(kmsEntries, Entry{fmt.Sprintf("kms.region-%d.amazonaws.com", i), 443}, Entry{fmt.Sprintf("kms-fips.region-%d.amazonaws.com", i), 443})
		answers[fmt.Sprintf("kms.region-%d.amazonaws.com", i)] = []netip.Addr{ip(fmt.Sprintf("52.95.%d.1", i))}
		answers[fmt.Sprintf("kms-fips.region-%d.amazonaws.com", i)] = []netip.Addr{ip(fmt.Sprintf("52.96.%d.1", i))}
	}
	kmsEntries = append(kmsEntries, Entry{"kms.us-east-1.amazonaws.com", 443})
	for _, bb := range []struct {
		name    string
		entries []Entry
		narrow  []Entry // an enclave's own list, checked too when set
		host    string
		port    int
	}{
		{"by-name", kmsEntries, nil, "kms.us-east-1.amazonaws.com", 443},
		{"ip-entry", []Entry{{"127.0.0.1", 8443}, {"10.0.0.0/8", 8443}}, nil, "127.0.0.1", 8443},
		{"name-against-ip-entries", []Entry{{"127.0.0.1", 8443}, {"10.0.0.0/8", 8443}}, nil, "svc.example", 8443},
		{"address-against-named-entries", kmsEntries, nil, "52.94.0.2", 443},
		{"narrowed/by-name", kmsEntries, []Entry{{"kms.us-east-1.amazonaws.com", 443}}, "kms.us-east-1.amazonaws.com", 443},
		{"narrowed/ip-entry", []Entry{{"127.0.0.1", 8443}, {"10.0.0.0/8", 8443}}, []Entry{{"10.0.0.5", 8443}}, "10.0.0.5", 8443},
		{"narrowed/name-against-ip-entries", []Entry{{"127.0.0.1", 8443}, {"10.0.0.0/8", 8443}}, []Entry{{"10.0.0.5", 8443}}, "svc.example", 8443},
	} {
		b.Run(bb.name, func(b *testing.B) {
			r := &countingResolver{answers: answers, n: map[string]int{}}
			lists := []*Allowlist{{Entries: bb.entries, Resolver: r}}
			if bb.narrow != nil {
				lists = append(lists, &Allowlist{Entries: bb.narrow, Resolver: r})
			}
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := ResolveAll(ctx, bb.host, bb.port, lists...); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkConnectProxyHandshake measures one CONNECT tunnel to a name,
// resolved by a DNS server on loopback: dial the proxy, CONNECT, the
// proxy's lookup, check and dial, 200, close.
func BenchmarkConnectProxyHandshake(b *testing.B) {
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
			c.Close()
		}
	}()
	port := l.Addr().(*net.TCPAddr).Port
	dns := egresstest.StartDNS(b, egresstest.StaticAnswers(map[string][]netip.Addr{"svc.test": {netip.MustParseAddr("127.0.0.1")}}))
	r := NewResolver(netip.MustParseAddrPort(dns.Addr()))
	sock := filepath.Join(b.TempDir(), "p.sock")
	pl, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p := &Proxy{
		Allowlist: &Allowlist{Entries: []Entry{{"127.0.0.1", port}}, Resolver: r},
		Dial:      (&net.Dialer{Resolver: r}).DialContext,
	}
	go p.Serve(ctx, pl)
	req := "CONNECT svc.test:" + strconv.Itoa(port) + " HTTP/1.1\r\nHost: svc.test\r\n\r\n"
	b.ReportAllocs()
	for b.Loop() {
		c, err := net.Dial("unix", sock)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.WriteString(c, req); err != nil {
			b.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != http.StatusOK {
			b.Fatalf("CONNECT: %v %v", resp, err)
		}
		c.Close()
	}
}
