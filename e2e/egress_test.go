package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/internal/egress/egresstest"
	"github.com/cloister/cloister/parent"
	"github.com/cloister/cloister/parent/parenttest"
)

// egressOutcomes runs the egress app of img in an enclave with the own
// allowlist own (nil: the daemon's alone) and returns "target outcome"
// per destination, outcome being the server's body or "refused".
func egressOutcomes(t *testing.T, d *parenttest.Daemon, img string, own *parent.EgressPolicy) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := d.Client.Run(ctx, parent.RunRequest{EIFPath: img, MemoryMiB: 128, CPUCount: 1, Egress: own})
	if err != nil {
		t.Fatalf("run-enclave with egress allowlist %+v: %v", own, err)
	}
	out := d.ConsoleUntil(res.EnclaveID, "EGRESS DONE", 2*time.Minute)
	var got []string
	for _, line := range strings.Split(out, "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "EGRESS ")
		if !ok || rest == "DONE" {
			continue
		}
		target, outcome, _ := strings.Cut(rest, ": ")
		if strings.HasPrefix(outcome, "refused") {
			outcome = "refused"
		}
		got = append(got, target+" "+strings.TrimPrefix(outcome, "ok: "))
	}
	return got
}

func entry(t *testing.T, hostport string) parent.EgressEntry {
	t.Helper()
	e, err := parent.ParseEgressEntry(hostport)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// TestSandboxEgressPerEnclave is the attack on per-enclave egress
// allowlists, through the daemon, its monitors' proxies and real enclaves:
// the daemon's allowlist permits servers A and B; an enclave launched with
// its own allowlist of A must not reach B (nor C, which the daemon does
// not list), another with B must not reach A at the same time, and an
// enclave without one keeps the daemon's. A launch whose own allowlist
// would widen the daemon's is refused as an invalid argument.
func TestSandboxEgressPerEnclave(t *testing.T) {
	a, b, c := httpServer(t, "server-a"), httpServer(t, "server-b"), httpServer(t, "server-c")
	dir := parenttest.ShortTemp(t)
	allow := filepath.Join(dir, "allow.yaml")
	var doc strings.Builder
	doc.WriteString("allowlist:\n")
	for _, hp := range []string{a, b} {
		host, port, _ := net.SplitHostPort(hp)
		fmt.Fprintf(&doc, "- {address: %s, port: %s}\n", host, port)
	}
	if err := os.WriteFile(allow, []byte(doc.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	d := parenttest.StartDaemon(t, "sandbox", sandboxConfig+"egress:\n  allowlist: "+allow+"\n")
	img := appImage(t, dir, "egress-own", nil, "egress", a, b, c)

	// Enclaves two at a time (the pool may have two CPUs): each with its
	// own list, next to one with another list or none.
	cases := []struct {
		name string
		own  *parent.EgressPolicy
		want []string
	}{
		{"own-a", &parent.EgressPolicy{Allowlist: []parent.EgressEntry{entry(t, a)}},
			[]string{a + " server-a", b + " refused", c + " refused"}},
		{"own-b", &parent.EgressPolicy{Allowlist: []parent.EgressEntry{entry(t, b)}},
			[]string{a + " refused", b + " server-b", c + " refused"}},
		{"own-empty", &parent.EgressPolicy{},
			[]string{a + " refused", b + " refused", c + " refused"}},
		{"daemon-only", nil,
			[]string{a + " server-a", b + " server-b", c + " refused"}},
	}
	got := make([][]string, len(cases))
	for pair := 0; pair < len(cases); pair += 2 {
		var wg sync.WaitGroup
		for i := pair; i < pair+2; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				got[i] = egressOutcomes(t, d, img, cases[i].own)
			}()
		}
		wg.Wait()
	}
	for i, tc := range cases {
		if diff := cmp.Diff(tc.want, got[i]); diff != "" {
			t.Errorf("%s: egress outcomes (-want +got):\n%s", tc.name, diff)
		}
	}

	// Widening the daemon's allowlist is refused at launch.
	hostA, _, _ := net.SplitHostPort(a)
	for _, own := range [][]parent.EgressEntry{
		{entry(t, c)},
		{entry(t, a), entry(t, c)},
		{{Address: "127.0.0.0/8", Port: entry(t, a).Port}},
		{{Address: "localhost", Port: entry(t, a).Port}},
		{{Address: hostA, Port: 1}},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		_, err := d.Client.Run(ctx, parent.RunRequest{EIFPath: img, MemoryMiB: 128, CPUCount: 1,
			Egress: &parent.EgressPolicy{Allowlist: own}})
		cancel()
		if !errors.Is(err, parent.ErrInvalidArgument) || !strings.Contains(err.Error(), "not within the daemon's egress allowlist") {
			t.Errorf("own allowlist %v wider than the daemon's: %v; want an invalid-argument error", own, err)
		}
	}
	if list, err := d.Client.Describe(context.Background(), false); err != nil || len(list) != 0 {
		t.Errorf("refused launches left enclaves running: %d, %v", len(list), err)
	}

	// The CLI's flags reach the daemon: a list in vsock-proxy's format
	// narrows the enclave's egress to b, and a wider one is refused.
	ownFile := filepath.Join(dir, "own.yaml")
	hostB, portB, _ := net.SplitHostPort(b)
	if err := os.WriteFile(ownFile, []byte(fmt.Sprintf("allowlist:\n- {address: %s, port: %s}\n", hostB, portB)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := parenttest.CLI(t, "run-enclave", "--socket", d.Socket, "--eif-path", img, "--memory", "128",
		"--cpu-count", "1", "--enclave-name", "cli-own-b", "--egress-allowlist", ownFile)
	if err != nil {
		t.Fatalf("run-enclave --egress-allowlist: %v\n%s", err, out)
	}
	console := d.ConsoleUntil("cli-own-b", "EGRESS DONE", 2*time.Minute)
	for _, want := range []string{"EGRESS " + a + ": refused: 403", "EGRESS " + b + ": ok: server-b"} {
		if !strings.Contains(console, want) {
			t.Errorf("enclave launched with --egress-allowlist of %s: want %q in its console:\n%s", b, want, console)
		}
	}
	out, err = parenttest.CLI(t, "run-enclave", "--socket", d.Socket, "--eif-path", img, "--memory", "128",
		"--cpu-count", "1", "--egress-allow", a+","+c)
	if err == nil || !strings.Contains(out, "not within the daemon's egress allowlist") || !strings.Contains(out, c) {
		t.Errorf("run-enclave --egress-allow %s,%s: %v\n%s\nwant a refusal naming %s", a, c, err, out, c)
	}
}

// TestSandboxEgressPerEnclaveDNS is the DNS attack on an enclave's own
// allowlist: the daemon permits 127.0.0.0/8:P, the enclave's own list only
// 127.0.0.1:P, and names under the enclave's control resolve to
// [127.0.0.2, 127.0.0.1] or alternate between the two (rebinding, TTL 0).
// The intersection keeps the single lookup: every connection dials only
// addresses both lists permit in that one answer, so the "secret" service
// on 127.0.0.2:P, which the daemon alone would permit, is never reached.
func TestSandboxEgressPerEnclaveDNS(t *testing.T) {
	port := httpServerPair(t, "127.0.0.1", "allowed-server", "127.0.0.2", "secret-server")
	listed, secret := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")
	dns := egresstest.StartDNS(t, func(name string, n int) ([]netip.Addr, bool) {
		switch name {
		case "multi.test":
			return []netip.Addr{secret, listed}, true
		case "rebind.test":
			if n%2 == 1 {
				return []netip.Addr{listed}, true
			}
			return []netip.Addr{secret}, true
		}
		return nil, false
	})
	dir := parenttest.ShortTemp(t)
	allow := filepath.Join(dir, "allow.yaml")
	if err := os.WriteFile(allow, []byte(fmt.Sprintf("allowlist:\n- {address: 127.0.0.0/8, port: %d}\n", port)), 0o644); err != nil {
		t.Fatal(err)
	}
	d := parenttest.StartDaemon(t, "sandbox", sandboxConfig+fmt.Sprintf("egress:\n  allowlist: %s\n  nameserver: %s\n", allow, dns.Addr()))
	p := fmt.Sprint(port)
	img := appImage(t, dir, "egress-own-dns", nil, "egress", "multi.test:"+p, "multi.test:"+p,
		"rebind.test:"+p, "rebind.test:"+p, "rebind.test:"+p, "rebind.test:"+p, "127.0.0.2:"+p)
	got := egressOutcomes(t, d, img, &parent.EgressPolicy{Allowlist: []parent.EgressEntry{{Address: "127.0.0.1", Port: port}}})
	want := []string{"multi.test:" + p + " allowed-server", "multi.test:" + p + " allowed-server",
		"rebind.test:" + p + " allowed-server", "rebind.test:" + p + " refused",
		"rebind.test:" + p + " allowed-server", "rebind.test:" + p + " refused",
		"127.0.0.2:" + p + " refused"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("egress outcomes (-want +got):\n%s", diff)
	}
}
