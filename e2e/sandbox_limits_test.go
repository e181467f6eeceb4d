package e2e

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cloister/cloister/parent"
	"github.com/cloister/cloister/parent/parenttest"
)

// The tests in this file are attacks by an enclave on its host through the
// daemon's per-enclave services: each enclave program tries to use more of
// the host than it was given, or to reach what it must not.

// monitorStats is the part of a monitor's GET /stats the tests read.
type monitorStats struct {
	Goroutines int `json:"goroutines"`
	Services   map[string]struct {
		Max      int    `json:"max"`
		Active   int64  `json:"active"`
		Accepted uint64 `json:"accepted"`
		Refused  uint64 `json:"refused"`
	} `json:"services"`
	NSM struct {
		IdleClosed   uint64 `json:"idle_closed"`
		Attestations uint64 `json:"attestations"`
		Throttled    uint64 `json:"throttled"`
		Waiting      int64  `json:"waiting"`
	} `json:"nsm"`
}

// TestSandboxConsoleFloodIsCapped: an enclave writes 64 MiB to its console
// as fast as it can. The kept console (console.log and its one rotated
// predecessor) stays within the default cap of 16 MiB per file and keeps
// the newest output, and a follower streaming the console across the
// rotations sees the last line.
func TestSandboxConsoleFloodIsCapped(t *testing.T) {
	d := parenttest.StartDaemon(t, "sandbox", sandboxConfig)
	img := appImage(t, parenttest.ShortTemp(t), "consoleflood", nil, "consoleflood", "64")
	res := d.Run(img, 128, false)

	followed := make(chan string, 1)
	go func() {
		tail := &tailWriter{max: 4096}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := d.Client.Console(ctx, res.EnclaveID, true, 0, tail); err != nil {
			followed <- "console error: " + err.Error()
			return
		}
		followed <- string(tail.b)
	}()
	x := d.WaitExit(res.EnclaveID, 2*time.Minute)
	if x.ExitStatus == nil || x.ExitStatus.Code != 0 {
		t.Fatalf("consoleflood exit: %+v", x.ExitStatus)
	}
	dir := d.EnclaveDir(res.EnclaveID)
	const capBytes = 16 << 20
	var total int64
	for _, name := range []string{"console.log", "console.log.1"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if fi.Size() > capBytes {
			t.Errorf("%s is %d bytes, over the %d-byte cap", name, fi.Size(), capBytes)
		}
		total += fi.Size()
	}
	if total < capBytes {
		t.Errorf("the kept console holds %d bytes; it should keep at least the newest %d", total, capBytes)
	}
	out := d.ConsoleUntil(res.EnclaveID, "CONSOLEFLOOD DONE", time.Second)
	t.Logf("console tail:\n%s", out[len(out)-min(len(out), 300):])
	t.Logf("dropped notices: %d", strings.Count(out, "console output dropped"))
	if !strings.Contains(out[len(out)-min(len(out), 4096):], "application exited with status 0") {
		t.Errorf("the console's end lacks init's last line:\n%s", out[len(out)-min(len(out), 4096):])
	}
	if got := <-followed; !strings.Contains(got, "CONSOLEFLOOD DONE") {
		t.Errorf("the console follower did not see the last lines; its tail:\n%s", got)
	}
}

// tailWriter keeps the last max bytes written to it.
type tailWriter struct {
	max int
	b   []byte
}

func (w *tailWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	if len(w.b) > w.max {
		w.b = append(w.b[:0], w.b[len(w.b)-w.max:]...)
	}
	return len(p), nil
}

// TestSandboxGuestDirIsSmall: an enclave tries to write 200 MiB into its
// listener directory (/run/cloister/vsock/guest). It gets at most the
// directory's small cap, and can still listen there afterwards.
func TestSandboxGuestDirIsSmall(t *testing.T) {
	d := parenttest.StartDaemon(t, "sandbox", sandboxConfig)
	img := appImage(t, parenttest.ShortTemp(t), "guestfill", nil, "guestfill", "200")
	res := d.Run(img, 128, false)
	out := d.ConsoleUntil(res.EnclaveID, "GUESTFILL LISTENING", time.Minute)
	m := regexp.MustCompile(`GUESTFILL wrote (\d+) bytes`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no GUESTFILL report:\n%s", out)
	}
	n, _ := strconv.ParseInt(m[1], 10, 64)
	if n > 1<<20 {
		t.Errorf("the enclave wrote %d bytes into its listener directory; want at most 1 MiB", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := d.Client.Connect(ctx, res.EnclaveID, 5000)
	if err != nil {
		t.Fatalf("connect after filling the directory: %v", err)
	}
	b, err := io.ReadAll(c)
	c.Close()
	if err != nil || string(b) != "still here" {
		t.Errorf("listener after filling the directory: %q, %v", b, err)
	}
}

// TestSandboxVsockSymlinkNotFollowed: an enclave names its listener for
// port 5000 with a symbolic link to a host Unix socket. A host client's
// connection to port 5000 must not reach that host socket (before the fix
// the root monitor connected to it and passed it the client's socket).
func TestSandboxVsockSymlinkNotFollowed(t *testing.T) {
	d := parenttest.StartDaemon(t, "sandbox", sandboxConfig)
	hostSock := filepath.Join(parenttest.ShortTemp(t), "victim.sock")
	victim, err := net.ListenUnix("unix", &net.UnixAddr{Name: hostSock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer victim.Close()
	img := appImage(t, parenttest.ShortTemp(t), "vsocklink", nil, "vsocklink", "5000", hostSock)
	res := d.Run(img, 128, false)
	d.ConsoleUntil(res.EnclaveID, "VSOCKLINK READY", time.Minute)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	c, err := d.Client.Connect(ctx, res.EnclaveID, 5000)
	cancel()
	t.Logf("connect to port 5000: %v", err)
	if desc, derr := d.Client.DescribeEnclave(context.Background(), res.EnclaveID); derr != nil || desc.State != parent.StateRunning {
		t.Fatalf("the enclave is not running: %+v, %v", desc, derr)
	}
	if err == nil {
		c.Close()
		t.Errorf("connecting to port 5000 succeeded through the enclave's symbolic link")
	}
	// Whatever the monitor connected to is queued on the victim by now
	// (Connect returned after the monitor's attempts): accept without
	// waiting.
	if vc := acceptNow(t, victim); vc != nil {
		defer vc.Close()
		_ = vc.SetReadDeadline(time.Now().Add(5 * time.Second))
		b := make([]byte, 1)
		oob := make([]byte, syscall.CmsgSpace(4*4))
		n, oobn, _, _, rerr := vc.ReadMsgUnix(b, oob)
		var fds int
		if msgs, perr := syscall.ParseSocketControlMessage(oob[:oobn]); perr == nil {
			for _, m := range msgs {
				if r, err := syscall.ParseUnixRights(&m); err == nil {
					fds += len(r)
					for _, fd := range r {
						syscall.Close(fd)
					}
				}
			}
		}
		t.Fatalf("the host socket the enclave's link names received a connection from the monitor: first byte %q (n=%d, %v) with %d descriptor(s)", b[:n], n, rerr, fds)
	}
}

// acceptNow returns a connection already queued on l, or nil if there is
// none (l's socket is non-blocking: accept4 fails with EAGAIN).
func acceptNow(t *testing.T, l *net.UnixListener) *net.UnixConn {
	t.Helper()
	rc, err := l.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	nfd := -1
	var aerr error
	if err := rc.Control(func(fd uintptr) { nfd, _, aerr = syscall.Accept4(int(fd), syscall.SOCK_CLOEXEC) }); err != nil {
		t.Fatal(err)
	}
	if errors.Is(aerr, syscall.EAGAIN) {
		return nil
	}
	if aerr != nil {
		t.Fatalf("accept on the victim socket: %v", aerr)
	}
	f := os.NewFile(uintptr(nfd), "victim-conn")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		t.Fatal(err)
	}
	return c.(*net.UnixConn)
}

// TestSandboxNSMConnectionFlood: an enclave opens 500 connections to the
// emulated security module and keeps them open. The monitor serves at
// most its per-enclave cap (64) at a time and refuses the rest, so its
// goroutines stay bounded.
func TestSandboxNSMConnectionFlood(t *testing.T) {
	d := parenttest.StartDaemon(t, "sandbox", sandboxConfig)
	img := appImage(t, parenttest.ShortTemp(t), "nsmconns", nil, "nsmconns", "500")
	res := d.Run(img, 128, false)
	out := d.ConsoleUntil(res.EnclaveID, "NSMCONNS served=", 2*time.Minute)
	m := regexp.MustCompile(`NSMCONNS served=(\d+) refused=(\d+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no NSMCONNS report:\n%s", out)
	}
	served, _ := strconv.Atoi(m[1])
	refused, _ := strconv.Atoi(m[2])
	const capConns = 64
	if served > capConns || served+refused != 500 {
		t.Fatalf("the monitor served %d of 500 concurrent security-module connections (refused %d); want at most %d", served, refused, capConns)
	}
	var st monitorStats
	d.MonitorStats(res.EnclaveID, &st)
	nsmSvc, ok := st.Services["nsm"]
	if !ok {
		t.Fatalf("monitor stats lack the nsm service: %+v", st)
	}
	if nsmSvc.Max != capConns || nsmSvc.Active > capConns || nsmSvc.Refused < uint64(500-capConns) {
		t.Errorf("nsm connection stats %+v: want max %d, active ≤ %d, refused ≥ %d", nsmSvc, capConns, capConns, 500-capConns)
	}
	// One goroutine per served connection plus the monitor's own: far
	// below one per attempted connection.
	if st.Goroutines > capConns+100 {
		t.Errorf("the monitor runs %d goroutines after the flood", st.Goroutines)
	}
}

// TestSandboxAttestationFloodThrottled: with a bucket of 5 attestations
// per vCPU that refills once every 1000 s, four attestation loops of 50
// documents each get exactly 5 documents; the rest wait for tokens.
func TestSandboxAttestationFloodThrottled(t *testing.T) {
	d := parenttest.StartDaemon(t, "sandbox", sandboxConfig+`nsm:
  attestations_per_second_per_cpu: 0.001
  attestation_burst_per_cpu: 5
`)
	img := appImage(t, parenttest.ShortTemp(t), "nsmflood", nil, "nsmflood", "4", "50")
	res := d.Run(img, 128, false)
	d.ConsoleUntil(res.EnclaveID, "NSMFLOOD STARTED", time.Minute)
	deadline := time.Now().Add(time.Minute)
	var st monitorStats
	for {
		var sb strings.Builder
		if err := d.Client.Console(context.Background(), res.EnclaveID, false, 0, &sb); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(sb.String(), "NSMFLOOD DONE") {
			t.Fatalf("the attestation flood was not throttled:\n%s", sb.String())
		}
		d.MonitorStats(res.EnclaveID, &st)
		if st.NSM.Waiting == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the four loops never all waited for the bucket: %+v", st.NSM)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if st.NSM.Attestations != 5 {
		t.Errorf("issued %d attestation documents; the bucket holds 5", st.NSM.Attestations)
	}
}
