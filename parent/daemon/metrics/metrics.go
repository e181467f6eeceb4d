// Package metrics exposes the parent daemon's Prometheus metrics. It is
// the daemon's [daemon.Events] sink and a collector that reads the
// enclaves and the resource pool at scrape time. It lives apart from
// package daemon so that the monitor process (cmd/cloister-monitor), which
// links package daemon, does not carry Prometheus and protobuf.
//
// Series (all prefixed cloister_daemon_ but cloister_build_info):
//
//	enclaves{state}                          gauge: enclaves by state (STARTING, RUNNING, TERMINATING, EXITED kept for describe --all)
//	launches_total{result}                   counter: run-enclave requests by result (ok or the API error kind)
//	launch_duration_seconds                  histogram: run-enclave → RUNNING, successful launches
//	heartbeat_timeouts_total                 counter: enclaves that sent no boot heartbeat in time
//	monitor_starts_total{kind}               counter: monitor processes started (spare, or direct when none was waiting)
//	monitors_lost_total                      counter: monitors that died while their enclave ran
//	enclaves_adopted_total                   counter: running enclaves found by a (re)started daemon
//	pool_cpus, pool_free_cpus                gauge: the CPU pool
//	pool_memory_bytes, pool_free_memory_bytes gauge: the memory pool
//	cloister_build_info{version,commit,backend} 1
//
// plus the Go runtime (go_*) and process (process_*) collectors.
package metrics

import (
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/cloister/cloister/internal/buildinfo"
	"github.com/cloister/cloister/parent"
	"github.com/cloister/cloister/parent/daemon"
)

// Source is what the collector reads at scrape time: *daemon.Daemon.
type Source interface {
	Describe(all bool) []parent.EnclaveDescription
	Info() parent.Info
}

// States lists the enclave states always exported (0 when none).
var States = []string{parent.StateStarting, parent.StateRunning, parent.StateTerminating, parent.StateExited}

// LaunchBuckets are the launch-duration histogram's upper bounds in
// seconds: sandboxes launch in tens of milliseconds, microVMs in seconds
// (minutes under TCG), Nitro enclaves in seconds.
var LaunchBuckets = []float64{.005, .01, .02, .03, .05, .075, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300}

// Metrics collects the daemon's metrics. Create it with New, give it to
// the daemon as Options.Events and Options.Metrics (Handler), and call
// SetSource with the daemon once it exists.
type Metrics struct {
	reg        *prometheus.Registry
	launches   *prometheus.CounterVec
	latency    prometheus.Histogram
	hbTimeouts prometheus.Counter
	starts     *prometheus.CounterVec
	lost       prometheus.Counter
	adopted    prometheus.Counter

	mu  sync.Mutex
	src Source
}

var _ daemon.Events = (*Metrics)(nil)

// New creates the metrics of a daemon running backend.
func New(backend string) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		launches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cloister_daemon_launches_total",
			Help: "run-enclave requests that ended, by result: ok, or the API error kind (invalid_argument, not_found, conflict, insufficient_resources, boot_failed, unavailable, internal).",
		}, []string{"result"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "cloister_daemon_launch_duration_seconds",
			Help:    "Time from a run-enclave request to the enclave RUNNING (boot heartbeat received), for successful launches.",
			Buckets: LaunchBuckets,
		}),
		hbTimeouts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cloister_daemon_heartbeat_timeouts_total",
			Help: "Enclaves that sent no boot heartbeat within the heartbeat timeout.",
		}),
		starts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cloister_daemon_monitor_starts_total",
			Help: "Monitor processes started by the daemon: kind=spare (ahead of a launch) or direct (a launch found no spare waiting).",
		}, []string{"kind"}),
		lost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cloister_daemon_monitors_lost_total",
			Help: "Monitor processes that died while their enclave ran; the daemon cleaned up after the enclave.",
		}),
		adopted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cloister_daemon_enclaves_adopted_total",
			Help: "Running enclaves found by this daemon when it started (they survived a daemon restart).",
		}),
	}
	for _, r := range append([]string{"ok"}, parent.ErrorKinds()...) {
		m.launches.WithLabelValues(r)
	}
	m.starts.WithLabelValues("spare")
	m.starts.WithLabelValues("direct")
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "cloister_build_info",
		Help:        "Always 1; the labels name the build and the daemon's backend.",
		ConstLabels: prometheus.Labels{"version": buildinfo.Version(), "commit": buildinfo.Commit(), "backend": backend},
	})
	info.Set(1)
	m.reg.MustRegister(m.launches, m.latency, m.hbTimeouts, m.starts, m.lost, m.adopted, info, (*stateCollector)(m),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// SetSource makes the collector read the enclaves and the pool from s.
func (m *Metrics) SetSource(s Source) {
	m.mu.Lock()
	m.src = s
	m.mu.Unlock()
}

// Registry returns the registry holding every series (for tests and for
// embedding them in another exposition).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the metrics in the Prometheus text format (or protobuf,
// as negotiated).
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// LaunchFinished implements daemon.Events.
func (m *Metrics) LaunchFinished(took time.Duration, err error) {
	result := "ok"
	if err != nil {
		result = parent.ErrorKind(err)
	}
	m.launches.WithLabelValues(result).Inc()
	if err == nil {
		m.latency.Observe(took.Seconds())
	}
}

// HeartbeatTimeout implements daemon.Events.
func (m *Metrics) HeartbeatTimeout() { m.hbTimeouts.Inc() }

// MonitorStarted implements daemon.Events.
func (m *Metrics) MonitorStarted(spare bool) {
	kind := "direct"
	if spare {
		kind = "spare"
	}
	m.starts.WithLabelValues(kind).Inc()
}

// MonitorLost implements daemon.Events.
func (m *Metrics) MonitorLost() { m.lost.Inc() }

// EnclaveAdopted implements daemon.Events.
func (m *Metrics) EnclaveAdopted() { m.adopted.Inc() }

// stateCollector reads the source at scrape time.
type stateCollector Metrics

var (
	enclavesDesc = prometheus.NewDesc("cloister_daemon_enclaves", "Enclaves by state; EXITED counts the exited enclaves the daemon keeps for describe-enclaves --all.", []string{"state"}, nil)
	cpusDesc     = prometheus.NewDesc("cloister_daemon_pool_cpus", "CPUs in the enclave pool.", nil, nil)
	freeCPUsDesc = prometheus.NewDesc("cloister_daemon_pool_free_cpus", "CPUs of the pool no enclave holds.", nil, nil)
	memDesc      = prometheus.NewDesc("cloister_daemon_pool_memory_bytes", "Memory in the enclave pool.", nil, nil)
	freeMemDesc  = prometheus.NewDesc("cloister_daemon_pool_free_memory_bytes", "Memory of the pool no enclave holds.", nil, nil)
)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{enclavesDesc, cpusDesc, freeCPUsDesc, memDesc, freeMemDesc} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	src := c.src
	c.mu.Unlock()
	if src == nil {
		return
	}
	counts := map[string]int{}
	for _, s := range States {
		counts[s] = 0
	}
	for _, e := range src.Describe(true) {
		counts[e.State]++
	}
	for s, n := range counts {
		ch <- prometheus.MustNewConstMetric(enclavesDesc, prometheus.GaugeValue, float64(n), s)
	}
	info := src.Info()
	const mib = 1 << 20
	ch <- prometheus.MustNewConstMetric(cpusDesc, prometheus.GaugeValue, float64(len(info.CPUPool)))
	ch <- prometheus.MustNewConstMetric(freeCPUsDesc, prometheus.GaugeValue, float64(len(info.FreeCPUs)))
	ch <- prometheus.MustNewConstMetric(memDesc, prometheus.GaugeValue, float64(info.MemoryMiB)*mib)
	ch <- prometheus.MustNewConstMetric(freeMemDesc, prometheus.GaugeValue, float64(info.FreeMiB)*mib)
}
