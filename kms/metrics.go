package kms

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the key service's Prometheus metrics, served at GET /metrics.
type metrics struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	decision *prometheus.CounterVec
	handler  http.Handler
}

func newMetrics(reg *prometheus.Registry) (*metrics, error) {
	if reg == nil {
		reg = prometheus.NewRegistry()
		if err := reg.Register(collectors.NewGoCollector()); err != nil {
			return nil, err
		}
		if err := reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
			return nil, err
		}
	}
	m := &metrics{
		reg: reg,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cloister_kms_requests_total",
			Help: "Key service requests by operation and result (\"ok\" or the AWS error code).",
		}, []string{"operation", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cloister_kms_request_duration_seconds",
			Help:    "Key service request latency by operation, authentication included.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"operation"}),
		decision: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cloister_kms_authorization_total",
			Help: "Authorization decisions by operation and outcome (allowed, denied).",
		}, []string{"operation", "outcome"}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.latency, m.decision} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	m.handler = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	return m, nil
}

// observe records one finished request. op is "" for requests that named
// no known operation (counted as "unknown").
func (m *metrics) observe(op, code string, d time.Duration) {
	if op == "" {
		op = "unknown"
	}
	if code == "" {
		code = "ok"
	}
	m.requests.WithLabelValues(op, code).Inc()
	m.latency.WithLabelValues(op).Observe(d.Seconds())
}

// serveHealthz answers GET /healthz: 200 "ok" when the store answers within
// 2 seconds, 503 with the reason otherwise.
func (s *Server) serveHealthz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if err := s.cfg.Store.Ping(ctx); err != nil {
		s.log.Warn("kms health check failed", "err", err)
		w.WriteHeader(http.StatusServiceUnavailable)
		w.Write([]byte("store unavailable\n"))
		return
	}
	w.Write([]byte("ok\n"))
}
