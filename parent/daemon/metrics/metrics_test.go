package metrics

import (
	"fmt"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/parent"
	"github.com/cloister/cloister/parent/parenttest"
)

type fakeSource struct {
	enclaves []parent.EnclaveDescription
	info     parent.Info
}

func (f fakeSource) Describe(bool) []parent.EnclaveDescription { return f.enclaves }
func (f fakeSource) Info() parent.Info                         { return f.info }

func scrape(t *testing.T, m *Metrics) parenttest.Metrics {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	return parenttest.ScrapeMetrics(t, srv.Client(), srv.URL)
}

func TestMetricsExposition(t *testing.T) {
	m := New("sandbox")
	m.SetSource(fakeSource{
		enclaves: []parent.EnclaveDescription{{State: parent.StateRunning}, {State: parent.StateRunning}, {State: parent.StateExited}},
		info:     parent.Info{CPUPool: []int{0, 1, 2, 3}, FreeCPUs: []int{3}, MemoryMiB: 2048, FreeMiB: 1024},
	})
	m.LaunchFinished(20*time.Millisecond, nil)
	m.LaunchFinished(40*time.Millisecond, nil)
	m.LaunchFinished(time.Minute, fmt.Errorf("boot: %w", parent.ErrBoot))
	m.LaunchFinished(time.Millisecond, parent.NewError("E01", parent.ErrInvalidArgument, "bad"))
	m.HeartbeatTimeout()
	m.MonitorStarted(true)
	m.MonitorStarted(true)
	m.MonitorStarted(false)
	m.MonitorLost()
	m.EnclaveAdopted()

	got := scrape(t, m)
	want := map[string]float64{}
	have := map[string]float64{}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"cloister_daemon_enclaves", map[string]string{"state": "RUNNING"}, 2},
		{"cloister_daemon_enclaves", map[string]string{"state": "EXITED"}, 1},
		{"cloister_daemon_enclaves", map[string]string{"state": "STARTING"}, 0},
		{"cloister_daemon_enclaves", map[string]string{"state": "TERMINATING"}, 0},
		{"cloister_daemon_launches_total", map[string]string{"result": "ok"}, 2},
		{"cloister_daemon_launches_total", map[string]string{"result": "boot_failed"}, 1},
		{"cloister_daemon_launches_total", map[string]string{"result": "invalid_argument"}, 1},
		{"cloister_daemon_launches_total", map[string]string{"result": "insufficient_resources"}, 0},
		{"cloister_daemon_launch_duration_seconds", nil, 2},
		{"cloister_daemon_heartbeat_timeouts_total", nil, 1},
		{"cloister_daemon_monitor_starts_total", map[string]string{"kind": "spare"}, 2},
		{"cloister_daemon_monitor_starts_total", map[string]string{"kind": "direct"}, 1},
		{"cloister_daemon_monitors_lost_total", nil, 1},
		{"cloister_daemon_enclaves_adopted_total", nil, 1},
		{"cloister_daemon_pool_cpus", nil, 4},
		{"cloister_daemon_pool_free_cpus", nil, 1},
		{"cloister_daemon_pool_memory_bytes", nil, 2048 << 20},
		{"cloister_daemon_pool_free_memory_bytes", nil, 1024 << 20},
		{"cloister_build_info", map[string]string{"backend": "sandbox"}, 1},
	} {
		key := fmt.Sprintf("%s%v", c.name, c.labels)
		want[key] = c.want
		if v, ok := got.Value(c.name, c.labels); ok {
			have[key] = v
		}
	}
	if d := cmp.Diff(want, have); d != "" {
		t.Errorf("scraped metrics (-want +got):\n%s", d)
	}
	// The histogram's buckets: both successful launches are under 50 ms,
	// only one under 30 ms; the failed one-minute launch is not observed.
	h := got["cloister_daemon_launch_duration_seconds"].GetMetric()[0].GetHistogram()
	buckets := map[float64]uint64{}
	for _, b := range h.GetBucket() {
		buckets[b.GetUpperBound()] = b.GetCumulativeCount()
	}
	if buckets[0.02] != 1 || buckets[0.05] != 2 || buckets[300] != 2 {
		t.Errorf("launch histogram buckets %v: want 1 at ≤0.02 s, 2 at ≤0.05 s and ≤300 s", buckets)
	}
	if _, ok := got["go_goroutines"]; !ok {
		t.Error("the Go runtime collector's go_goroutines is missing")
	}
}

func TestMetricsWithoutSource(t *testing.T) {
	got := scrape(t, New("qemu"))
	if _, ok := got.Value("cloister_daemon_enclaves", nil); ok {
		t.Error("enclave gauges exported before the daemon exists")
	}
	if v, ok := got.Value("cloister_daemon_launches_total", map[string]string{"result": "ok"}); !ok || v != 0 {
		t.Errorf("launches_total{result=ok} = %v, %v; want 0", v, ok)
	}
}
