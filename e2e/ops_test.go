package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/internal/cgroups"
	"github.com/cloister/cloister/internal/sdnotify/sdnotifytest"
	"github.com/cloister/cloister/internal/testenv"
	"github.com/cloister/cloister/parent"
	"github.com/cloister/cloister/parent/parenttest"
)

// unixHTTP is an HTTP client for the daemon's API socket.
func unixHTTP(socket string) *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}
}

// metricsAddr waits for the daemon's "metrics listening" log line and
// returns the address it names.
func metricsAddr(t *testing.T, d *parenttest.Daemon) string {
	t.Helper()
	re := regexp.MustCompile(`msg="metrics listening" addr=(\S+)`)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if m := re.FindStringSubmatch(d.Log()); m != nil {
			return m[1]
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("the daemon never logged its metrics address:\n%s", d.Log())
	return ""
}

func healthz(t *testing.T, hc *http.Client, url string) {
	t.Helper()
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(b) != "ok\n" {
		t.Fatalf("GET %s: %s %q, want 200 \"ok\\n\"", url, resp.Status, b)
	}
}

// TestOpsDaemonMetrics scrapes the daemon's /metrics on the API socket and
// on --metrics-addr, parses them with Prometheus' text parser, and checks
// the series after a launch, a terminate and a refused launch.
func TestOpsDaemonMetrics(t *testing.T) {
	d := parenttest.StartDaemonWith(t, "sandbox", sandboxConfig, parenttest.DaemonOptions{Args: []string{"--metrics-addr", "127.0.0.1:0"}})
	sock := unixHTTP(d.Socket)
	tcp := &http.Client{Timeout: 30 * time.Second}
	tcpURL := "http://" + metricsAddr(t, d)
	healthz(t, sock, "http://daemon/healthz")
	healthz(t, tcp, tcpURL+"/healthz")

	type want map[string]float64
	check := func(step string, w want) {
		t.Helper()
		for _, src := range []struct {
			name string
			hc   *http.Client
			url  string
		}{{"socket", sock, "http://daemon/metrics"}, {"tcp", tcp, tcpURL + "/metrics"}} {
			m := parenttest.ScrapeMetrics(t, src.hc, src.url)
			got := want{}
			for key := range w {
				name, labels := splitKey(key)
				if v, ok := m.Value(name, labels); ok {
					got[key] = v
				}
			}
			if diff := cmp.Diff(w, got); diff != "" {
				t.Errorf("%s, metrics on the %s (-want +got):\n%s", step, src.name, diff)
			}
		}
	}
	check("before any launch", want{
		`cloister_daemon_enclaves{state=RUNNING}`:           0,
		`cloister_daemon_launches_total{result=ok}`:         0,
		`cloister_daemon_launch_duration_seconds`:           0,
		`cloister_daemon_heartbeat_timeouts_total`:          0,
		`cloister_daemon_monitor_starts_total{kind=direct}`: 0,
		`cloister_daemon_monitors_lost_total`:               0,
		`cloister_build_info{backend=sandbox}`:              1,
	})

	img := appImage(t, parenttest.ShortTemp(t), "echo", nil, "echo")
	res := d.Run(img, 128, false)
	check("after a launch", want{
		`cloister_daemon_enclaves{state=RUNNING}`:           1,
		`cloister_daemon_enclaves{state=EXITED}`:            0,
		`cloister_daemon_launches_total{result=ok}`:         1,
		`cloister_daemon_launch_duration_seconds`:           1,
		`cloister_daemon_monitor_starts_total{kind=direct}`: 0,
		`cloister_daemon_pool_free_memory_bytes`:            (1024 - 128) << 20,
	})

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := d.Client.Terminate(ctx, res.EnclaveID); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Client.Run(ctx, parent.RunRequest{EIFPath: filepath.Join(t.TempDir(), "missing.eif"), MemoryMiB: 128, CPUCount: 1}); err == nil {
		t.Fatal("run-enclave of a missing image succeeded")
	}
	check("after a terminate and a refused launch", want{
		`cloister_daemon_enclaves{state=RUNNING}`:                 0,
		`cloister_daemon_enclaves{state=EXITED}`:                  1,
		`cloister_daemon_launches_total{result=ok}`:               1,
		`cloister_daemon_launches_total{result=invalid_argument}`: 1,
		`cloister_daemon_launch_duration_seconds`:                 1,
		`cloister_daemon_pool_free_memory_bytes`:                  1024 << 20,
	})
}

// splitKey splits `name{k=v,k=v}` into the name and its labels.
func splitKey(key string) (string, map[string]string) {
	name, rest, ok := strings.Cut(key, "{")
	if !ok {
		return key, nil
	}
	labels := map[string]string{}
	for _, kv := range strings.Split(strings.TrimSuffix(rest, "}"), ",") {
		k, v, _ := strings.Cut(kv, "=")
		labels[k] = v
	}
	return name, labels
}

// TestOpsMonitorsRunLean checks that the daemon runs its monitors (and so the
// sandbox launcher) as the lean cloister-monitor built next to cloister.
func TestOpsMonitorsRunLean(t *testing.T) {
	d := parenttest.StartDaemon(t, "sandbox", sandboxConfig)
	img := appImage(t, parenttest.ShortTemp(t), "echo", nil, "echo")
	d.Run(img, 128, false)
	mons := d.Monitors()
	if len(mons) == 0 {
		t.Fatal("no monitor process found")
	}
	for _, pid := range mons {
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if err != nil {
			t.Fatal(err)
		}
		if exe != parenttest.Monitor(t) {
			t.Errorf("monitor %d runs %s, want %s", pid, exe, parenttest.Monitor(t))
		}
	}
}

// TestOpsDaemonNotifiesServiceManager runs the daemon as systemd would run a
// Type=notify service (a datagram socket in NOTIFY_SOCKET) and checks it
// reports READY=1 once its API answers and STOPPING=1 on SIGTERM. This
// machine's PID 1 is not systemd; docs/install.md says how the unit was
// checked under systemd itself.
func TestOpsDaemonNotifiesServiceManager(t *testing.T) {
	sockPath, next := sdnotifytest.Listen(t, parenttest.ShortTemp(t))
	d := parenttest.StartDaemonWith(t, "sandbox", sandboxConfig, parenttest.DaemonOptions{Env: []string{"NOTIFY_SOCKET=" + sockPath}})
	if s := next("READY"); s != "READY=1" {
		t.Fatalf("first notification %q, want READY=1", s)
	}
	if _, err := d.Client.Info(context.Background()); err != nil {
		t.Fatalf("READY=1 sent but the API does not answer: %v", err)
	}
	d.Stop(syscall.SIGTERM)
	if s := next("STOPPING"); s != "STOPPING=1" {
		t.Fatalf("notification on SIGTERM %q, want STOPPING=1", s)
	}
	d.Start() // for the harness's cleanup
}

// TestOpsDelegatedCgroup runs the daemon the way systemd runs a
// Delegate=yes service: in a cgroup of its own (in the supervisor leaf on
// cgroup v2), with cgroup_parent: auto. The enclave's group must be
// created beneath that cgroup, the enclave must survive a daemon restart
// and be adopted, and terminating it must remove its group.
func TestOpsDelegatedCgroup(t *testing.T) {
	testenv.RequireRoot(t)
	mode, err := cgroups.DetectMode("/sys/fs/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	unit := fmt.Sprintf("cloister-e2e-%d.service", os.Getpid())
	// Where the service manager would have put the daemon: on v2 the
	// supervisor leaf of the unit's cgroup; on v1 and hybrid the unit's
	// cgroup in the hierarchy that tracks processes (name=systemd, else
	// the unified one). The enclave's memory group shows where it went.
	procs := filepath.Join("/sys/fs/cgroup", unit, cgroups.SupervisorGroup, "cgroup.procs")
	groupRoot, ctrl := "/sys/fs/cgroup", ""
	if mode != cgroups.ModeV2 {
		track := "/sys/fs/cgroup/systemd"
		if _, err := os.Stat(filepath.Join(track, "cgroup.procs")); err != nil {
			track = "/sys/fs/cgroup/unified"
		}
		procs = filepath.Join(track, unit, "cgroup.procs")
		groupRoot, ctrl = "/sys/fs/cgroup/memory", "memory"
	}
	if err := os.MkdirAll(filepath.Dir(procs), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeCgroupTree(t, unit) })

	wrapper := []string{"sh", "-c", `echo $$ > "$0" && exec "$@"`, procs}
	config := sandboxConfig + "cgroup_parent: auto\n"
	d := parenttest.StartDaemonWith(t, "sandbox", config, parenttest.DaemonOptions{Wrapper: wrapper})
	if !strings.Contains(d.Log(), "enclave cgroups go beneath the daemon's delegated cgroup") {
		t.Fatalf("the daemon did not use its delegated cgroup:\n%s", d.Log())
	}
	img := appImage(t, parenttest.ShortTemp(t), "echo", nil, "echo")
	res := d.Run(img, 128, false)
	want := "/" + unit + "/" + cgroups.EnclavesGroup + "/" + res.EnclaveID
	if got := cgroupOf(t, res.ProcessID, ctrl); got != want {
		t.Fatalf("enclave init (pid %d) is in %s cgroup %q, want %q", res.ProcessID, ctrl, got, want)
	}

	// A restart (systemctl restart with KillMode=process) keeps the
	// enclave; the new daemon, in the same cgroup, adopts it.
	d.Stop(syscall.SIGTERM)
	d.Start()
	desc, err := d.Client.DescribeEnclave(context.Background(), res.EnclaveID)
	if err != nil || desc.State != parent.StateRunning {
		t.Fatalf("after a daemon restart the enclave is %+v, %v; want RUNNING", desc.State, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := d.Client.Terminate(ctx, res.EnclaveID); err != nil {
		t.Fatal(err)
	}
	groupDir := filepath.Join(groupRoot, want)
	if _, err := os.Stat(groupDir); !os.IsNotExist(err) {
		t.Errorf("the enclave's group %s is still there after terminate (%v)", groupDir, err)
	}
}

// cgroupOf returns pid's cgroup in the hierarchy of controller ctrl ("" for
// the unified one).
func cgroupOf(t *testing.T, pid int, ctrl string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		if (ctrl == "" && f[0] == "0") || (ctrl != "" && containsWord(f[1], ctrl)) {
			return f[2]
		}
	}
	t.Fatalf("pid %d has no %q cgroup in:\n%s", pid, ctrl, b)
	return ""
}

func containsWord(list, w string) bool {
	for _, x := range strings.Split(list, ",") {
		if x == w {
			return true
		}
	}
	return false
}

// removeCgroupTree removes the test's unit cgroup in every hierarchy,
// deepest groups first, after moving any process left back to the root.
func removeCgroupTree(t *testing.T, unit string) {
	ents, _ := os.ReadDir("/sys/fs/cgroup")
	roots := []string{"/sys/fs/cgroup"}
	for _, e := range ents {
		roots = append(roots, filepath.Join("/sys/fs/cgroup", e.Name()))
	}
	for _, root := range roots {
		top := filepath.Join(root, unit)
		if _, err := os.Stat(top); err != nil {
			continue
		}
		var dirs []string
		_ = filepath.WalkDir(top, func(p string, de os.DirEntry, err error) error {
			if err == nil && de.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if b, err := os.ReadFile(filepath.Join(dirs[i], "cgroup.procs")); err == nil && len(strings.TrimSpace(string(b))) > 0 {
				for _, pid := range strings.Fields(string(b)) {
					_ = os.WriteFile(filepath.Join(root, "cgroup.procs"), []byte(pid), 0o644)
				}
			}
			if err := syscall.Rmdir(dirs[i]); err != nil {
				t.Logf("remove cgroup %s: %v", dirs[i], err)
			}
		}
	}
}

// BenchmarkProcessStart measures starting a process of each binary and
// waiting for it to exit (`--version`): cloister, and cloister-monitor,
// which the daemon starts for every monitor and the sandbox launcher.
func BenchmarkProcessStart(b *testing.B) {
	for _, bin := range []struct{ name, path string }{
		{"cloister", parenttest.Cloister(b)},
		{"cloister-monitor", parenttest.Monitor(b)},
	} {
		b.Run(bin.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if err := exec.Command(bin.path, "--version").Run(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
