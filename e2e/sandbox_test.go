package e2e

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/attest"
	"github.com/cloister/cloister/internal/egress/egresstest"
	"github.com/cloister/cloister/parent"
	"github.com/cloister/cloister/parent/parenttest"
)

const sandboxConfig = `---
memory_mib: 1024
heartbeat_timeout: 60s
`

func TestSandboxEchoOverVsock(t *testing.T) {
	d := parenttest.StartDaemon(t, "sandbox", sandboxConfig)
	dir := parenttest.ShortTemp(t)
	img := appImage(t, dir, "echo", nil, "echo")
	res := d.Run(img, 128, false)
	d.ConsoleUntil(res.EnclaveID, "ECHO READY", time.Minute)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := 0; i < 3; i++ {
		c, err := d.Client.Connect(ctx, res.EnclaveName, 5000)
		if err != nil {
			t.Fatal(err)
		}
		msg := fmt.Sprintf("hello %d from the parent", i)
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatal(err)
		}
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		got, err := io.ReadAll(c)
		c.Close()
		if err != nil || string(got) != msg {
			t.Fatalf("echo %d: %q, %v", i, got, err)
		}
	}
}

func TestSandboxAttacksFail(t *testing.T) {
	d := parenttest.StartDaemon(t, "sandbox", sandboxConfig)
	dir := parenttest.ShortTemp(t)
	img := appImage(t, dir, "attacks", nil, "attacks")
	res := d.Run(img, 128, false)
	out := d.ConsoleUntil(res.EnclaveID, "ATTACKS DONE", time.Minute)
	for _, a := range []string{"af_inet", "af_inet6", "af_vsock", "read_host_shadow", "see_host_state", "mount", "ptrace", "chroot", "tcp_dial"} {
		if !strings.Contains(out, "ATTACK "+a+": blocked") {
			t.Errorf("attack %s was not blocked; console:\n%s", a, out)
		}
	}
	if strings.Contains(out, "SUCCEEDED") {
		t.Errorf("an attack succeeded:\n%s", out)
	}
	x := d.WaitExit(res.EnclaveID, time.Minute)
	if x.ExitStatus == nil || x.ExitStatus.Code != 0 {
		t.Errorf("attacks app exit: %+v", x.ExitStatus)
	}
}

func TestSandboxMemoryLimit(t *testing.T) {
	d := parenttest.StartDaemon(t, "sandbox", sandboxConfig)
	dir := parenttest.ShortTemp(t)
	img := appImage(t, dir, "oom", nil, "oom")
	res := d.Run(img, 96, false)
	x := d.WaitExit(res.EnclaveID, 2*time.Minute)
	if x.ExitStatus == nil || x.ExitStatus.Code != 137 || !strings.Contains(x.ExitStatus.Reason, "out of memory") {
		t.Fatalf("enclave exceeding its memory: %+v", x.ExitStatus)
	}
	// The host and the daemon are unaffected: another enclave still runs.
	echo := appImage(t, dir, "echo", nil, "echo")
	res2 := d.Run(echo, 128, false)
	d.ConsoleUntil(res2.EnclaveID, "ECHO READY", time.Minute)
}

func TestSandboxForkBomb(t *testing.T) {
	d := parenttest.StartDaemon(t, "sandbox", sandboxConfig)
	dir := parenttest.ShortTemp(t)
	img := appImage(t, dir, "forkbomb", nil, "forkbomb")
	res := d.Run(img, 256, false)
	out := d.ConsoleUntil(res.EnclaveID, "FORKBOMB", 2*time.Minute)
	if !strings.Contains(out, "FORKBOMB stopped after") {
		t.Fatalf("fork bomb not stopped:\n%s", out)
	}
	d.WaitExit(res.EnclaveID, 2*time.Minute)
}

func TestSandboxAttestationMatchesDescribeEIF(t *testing.T) {
	d := parenttest.StartDaemon(t, "sandbox", sandboxConfig)
	dir := parenttest.ShortTemp(t)
	img := appImage(t, dir, "attest", nil, "attest")
	res := d.Run(img, 128, false)
	d.ConsoleUntil(res.EnclaveID, "ATTEST READY", time.Minute)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	doc := attestationFrom(ctx, t, d, res.EnclaveID)
	v := verifyDevRoot(ctx, t, d, doc, "the document from the enclave")
	if _, err := attest.Verify(doc, time.Now(), attest.VerifierConfig{}); err == nil {
		t.Fatal("a development document verified under the AWS root")
	}
	desc := describeEIF(t, img)
	got := v.Document()
	if h := hex.EncodeToString(got.PCRs[0]); h != desc.PCR0 {
		t.Errorf("attested PCR0 %s, describe-eif %s", h, desc.PCR0)
	}
	if h := hex.EncodeToString(got.PCRs[1]); h != desc.PCR1 {
		t.Errorf("attested PCR1 %s, describe-eif %s", h, desc.PCR1)
	}
	if h := hex.EncodeToString(got.PCRs[2]); h != desc.PCR2 {
		t.Errorf("attested PCR2 %s, describe-eif %s", h, desc.PCR2)
	}
	if got.ModuleID != res.EnclaveID || string(got.Nonce) != "e2e-nonce" || string(got.UserData) != "e2e-user-data" {
		t.Errorf("document fields: module %q nonce %q user_data %q", got.ModuleID, got.Nonce, got.UserData)
	}
	if err := (attest.Policy{PCRs: map[int][]byte{0: got.PCRs[0]}}).Evaluate(v, time.Now()); err != nil {
		t.Errorf("policy on PCR0: %v", err)
	}
}

// TestSandboxDevRootReplacedUnderDaemon: monitors sign with exactly the
// development root the daemon loaded and serves. A different (valid)
// issuer written over issuer.pem while the daemon runs fails the launch,
// naming why, instead of signing documents under a root nobody is told
// about; putting the file back makes launches work again.
func TestSandboxDevRootReplacedUnderDaemon(t *testing.T) {
	d := parenttest.StartDaemon(t, "sandbox", sandboxConfig)
	img := appImage(t, parenttest.ShortTemp(t), "attest", nil, "attest")
	path := filepath.Join(d.State, "devroot", "issuer.pem")
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	other, err := attest.NewIssuer(attest.IssuerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	op, err := other.MarshalPEM()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, op, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err = d.Client.Run(ctx, parent.RunRequest{EIFPath: img, MemoryMiB: 128, CPUCount: 1})
	if err == nil || !strings.Contains(err.Error(), "not the one whose chain was verified") {
		t.Fatalf("launch with a replaced development root: %v", err)
	}
	if err := os.WriteFile(path, orig, 0o600); err != nil {
		t.Fatal(err)
	}
	res := d.Run(img, 128, false)
	d.ConsoleUntil(res.EnclaveID, "ATTEST READY", time.Minute)
	doc := attestationFrom(ctx, t, d, res.EnclaveID)
	verifyDevRoot(ctx, t, d, doc, "the document after the root was put back")
}

func TestSandboxDebugModeZeroesPCRs(t *testing.T) {
	d := parenttest.StartDaemon(t, "sandbox", sandboxConfig)
	dir := parenttest.ShortTemp(t)
	img := appImage(t, dir, "attest", nil, "attest")
	res := d.Run(img, 128, true)
	out := d.ConsoleUntil(res.EnclaveID, "ATTEST READY", time.Minute)
	if !strings.Contains(out, "PCR0 "+strings.Repeat("0", 96)) {
		t.Errorf("debug enclave does not see a zero PCR0:\n%s", out)
	}
	desc, _ := d.Client.DescribeEnclave(context.Background(), res.EnclaveID)
	if desc.Flags != parent.FlagsDebug {
		t.Errorf("flags %q", desc.Flags)
	}
}

type eifMeasurements struct{ PCR0, PCR1, PCR2 string }

func describeEIF(t *testing.T, path string) eifMeasurements {
	t.Helper()
	out, err := parenttest.CLI(t, "describe-eif", "--eif-path", path)
	if err != nil {
		t.Fatalf("describe-eif: %v\n%s", err, out)
	}
	var m eifMeasurements
	for _, k := range []string{"PCR0", "PCR1", "PCR2"} {
		i := strings.Index(out, `"`+k+`": "`)
		if i < 0 {
			t.Fatalf("describe-eif output lacks %s:\n%s", k, out)
		}
		v := out[i+len(k)+5 : i+len(k)+5+96]
		switch k {
		case "PCR0":
			m.PCR0 = v
		case "PCR1":
			m.PCR1 = v
		case "PCR2":
			m.PCR2 = v
		}
	}
	return m
}

func TestSandboxEgressProxy(t *testing.T) {
	allowed := httpServer(t, "allowed-server")
	denied := httpServer(t, "denied-server")
	dir := parenttest.ShortTemp(t)
	allow := filepath.Join(dir, "allow.yaml")
	host, port, _ := net.SplitHostPort(allowed)
	if err := os.WriteFile(allow, []byte(fmt.Sprintf("allowlist:\n- {address: %s, port: %s}\n", host, port)), 0o644); err != nil {
		t.Fatal(err)
	}
	d := parenttest.StartDaemon(t, "sandbox", sandboxConfig+"egress:\n  allowlist: "+allow+"\n")
	img := appImage(t, dir, "egress", nil, "egress", allowed, denied)
	res := d.Run(img, 128, false)
	out := d.ConsoleUntil(res.EnclaveID, "EGRESS DONE", time.Minute)
	if !strings.Contains(out, "EGRESS "+allowed+": ok: allowed-server") {
		t.Errorf("allow-listed destination not reached:\n%s", out)
	}
	if !strings.Contains(out, "EGRESS "+denied+": refused: 403") {
		t.Errorf("other destination not refused with 403:\n%s", out)
	}
}

// TestSandboxEgressDNSBypass is the DNS attack on the egress allowlist,
// through the daemon, its monitor's proxies and a real enclave: the
// allowlist names 127.0.0.1:P, and names under the enclave's control resolve
// to [127.0.0.2, 127.0.0.1] or alternate between the two (rebinding, TTL 0).
// A "secret" service listens on 127.0.0.2:P, as the parent's own services,
// an internal network or instance metadata would; the enclave must never
// reach it, through the CONNECT proxy or a fixed (vsock-proxy style) one.
func TestSandboxEgressDNSBypass(t *testing.T) {
	port := httpServerPair(t, "127.0.0.1", "allowed-server", "127.0.0.2", "secret-server")
	listed, secret := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")
	dns := egresstest.StartDNS(t, func(name string, n int) ([]netip.Addr, bool) {
		switch name {
		case "multi.test":
			return []netip.Addr{secret, listed}, true
		case "rebind-connect.test", "rebind-fixed.test":
			if n%2 == 1 {
				return []netip.Addr{listed}, true
			}
			return []netip.Addr{secret}, true
		}
		return nil, false
	})
	dir := parenttest.ShortTemp(t)
	allow := filepath.Join(dir, "allow.yaml")
	if err := os.WriteFile(allow, []byte(fmt.Sprintf("allowlist:\n- {address: 127.0.0.1, port: %d}\n", port)), 0o644); err != nil {
		t.Fatal(err)
	}
	d := parenttest.StartDaemon(t, "sandbox", sandboxConfig+fmt.Sprintf(`egress:
  allowlist: %s
  nameserver: %s
  proxies:
    - port: 8000
    - {port: 8001, remote_addr: multi.test, remote_port: %d}
    - {port: 8002, remote_addr: rebind-fixed.test, remote_port: %d}
`, allow, dns.Addr(), port, port))
	p := fmt.Sprint(port)
	targets := []string{"multi.test:" + p, "multi.test:" + p,
		"rebind-connect.test:" + p, "rebind-connect.test:" + p, "rebind-connect.test:" + p, "rebind-connect.test:" + p,
		"@8001", "@8001", "@8002", "@8002", "@8002", "@8002"}
	img := appImage(t, dir, "egress-dns", nil, append([]string{"egress"}, targets...)...)
	res := d.Run(img, 128, false)
	out := d.ConsoleUntil(res.EnclaveID, "EGRESS DONE", 2*time.Minute)

	// Each connection resolves its destination once and dials only what
	// that lookup allowed; the fixed proxy's startup check took the first
	// answer of rebind-fixed.test.
	want := []string{"multi.test ok: allowed-server", "multi.test ok: allowed-server",
		"rebind-connect.test ok: allowed-server", "rebind-connect.test refused",
		"rebind-connect.test ok: allowed-server", "rebind-connect.test refused",
		"@8001 ok: allowed-server", "@8001 ok: allowed-server",
		"@8002 refused", "@8002 ok: allowed-server", "@8002 refused", "@8002 ok: allowed-server"}
	var got []string
	for _, line := range strings.Split(out, "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "EGRESS ")
		if !ok || rest == "DONE" {
			continue
		}
		target, outcome, _ := strings.Cut(rest, ": ")
		target = strings.TrimSuffix(target, ":"+p)
		if strings.HasPrefix(outcome, "refused") {
			outcome = "refused"
		}
		got = append(got, target+" "+outcome)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("egress outcomes (-want +got):\n%s\nconsole:\n%s", diff, out)
	}
	if strings.Contains(out, "secret-server") {
		t.Errorf("the enclave reached the unlisted service:\n%s", out)
	}
}

// httpServerPair serves body1 on ip1:P and body2 on ip2:P, with one port P,
// and returns P.
func httpServerPair(t *testing.T, ip1, body1, ip2, body2 string) int {
	t.Helper()
	for attempt := 0; attempt < 20; attempt++ {
		l2, err := net.Listen("tcp", net.JoinHostPort(ip2, "0"))
		if err != nil {
			t.Fatal(err)
		}
		port := l2.Addr().(*net.TCPAddr).Port
		l1, err := net.Listen("tcp", net.JoinHostPort(ip1, fmt.Sprint(port)))
		if err != nil {
			l2.Close() // taken on ip1: try another port
			continue
		}
		for _, s := range []struct {
			l    net.Listener
			body string
		}{{l1, body1}, {l2, body2}} {
			srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, s.body) })}
			go srv.Serve(s.l)
			t.Cleanup(func() { srv.Close() })
		}
		return port
	}
	t.Fatalf("no port free on both %s and %s", ip1, ip2)
	return 0
}

// httpServer serves body on a loopback port and returns host:port.
func httpServer(t *testing.T, body string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, body) })}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

func TestSandboxDaemonRestart(t *testing.T) {
	d := parenttest.StartDaemon(t, "sandbox", sandboxConfig)
	dir := parenttest.ShortTemp(t)
	img := appImage(t, dir, "echo", nil, "echo")
	res := d.Run(img, 128, false)
	d.ConsoleUntil(res.EnclaveID, "ECHO READY", time.Minute)

	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		d.Stop(sig)
		d.Start()
		desc, err := d.Client.DescribeEnclave(context.Background(), res.EnclaveID)
		if err != nil || desc.State != parent.StateRunning {
			t.Fatalf("after daemon %v: %+v %v", sig, desc, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		c, err := d.Client.Connect(ctx, res.EnclaveID, 5000)
		cancel()
		if err != nil {
			t.Fatalf("after daemon %v: connect: %v", sig, err)
		}
		_, _ = io.WriteString(c, "x")
		b := make([]byte, 1)
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatalf("after daemon %v: echo: %v", sig, err)
		}
		c.Close()
	}
	if _, err := d.Client.Terminate(context.Background(), res.EnclaveID); err != nil {
		t.Fatal(err)
	}
	// Nothing is left: no cgroup, no monitor.
	if ents, err := os.ReadDir("/sys/fs/cgroup/pids/cloister"); err == nil {
		for _, e := range ents {
			if e.IsDir() && strings.HasPrefix(e.Name(), res.EnclaveID) {
				t.Errorf("cgroup %s left behind", e.Name())
			}
		}
	}
}

func TestSandboxCrashReported(t *testing.T) {
	d := parenttest.StartDaemon(t, "sandbox", sandboxConfig)
	dir := parenttest.ShortTemp(t)
	img := appImage(t, dir, "crash", nil, "crash", "7")
	res := d.Run(img, 128, false)
	x := d.WaitExit(res.EnclaveID, time.Minute)
	if x.ExitStatus == nil || x.ExitStatus.Code != 7 {
		t.Fatalf("crash exit status: %+v", x.ExitStatus)
	}
	out := d.ConsoleUntil(res.EnclaveID, "application exited with status 7", time.Second)
	if !strings.Contains(out, "crashing with status 7") {
		t.Errorf("console lost the application's output:\n%s", out)
	}
}
