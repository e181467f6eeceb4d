package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"
)

// Events receives what happens in the daemon, for metrics
// (parent/daemon/metrics turns them into Prometheus series). The daemon
// calls the methods synchronously: they must be quick and must not block.
type Events interface {
	// LaunchFinished reports a run-enclave request that ended, successfully
	// (err nil: the enclave is RUNNING) or not, and how long it took.
	LaunchFinished(took time.Duration, err error)
	// HeartbeatTimeout reports an enclave that sent no boot heartbeat in
	// time (its launch then fails too).
	HeartbeatTimeout()
	// MonitorStarted reports a monitor process started by the daemon: a
	// spare, started ahead of a launch, or one started for a launch that
	// found no spare waiting.
	MonitorStarted(spare bool)
	// MonitorLost reports a monitor that died while its enclave ran, or
	// was gone when the daemon started (the daemon then cleans up after
	// the enclave).
	MonitorLost()
	// EnclaveAdopted reports a running enclave found by a starting daemon
	// (it survived a daemon restart).
	EnclaveAdopted()
}

// noEvents is the default Events.
type noEvents struct{}

func (noEvents) LaunchFinished(time.Duration, error) {}
func (noEvents) HeartbeatTimeout()                   {}
func (noEvents) MonitorStarted(bool)                 {}
func (noEvents) MonitorLost()                        {}
func (noEvents) EnclaveAdopted()                     {}

// errHeartbeatTimeout is the monitor's "no boot heartbeat in time".
var errHeartbeatTimeout = errors.New("no boot heartbeat")

// causeHeartbeatTimeout is monitorStatus.Cause of errHeartbeatTimeout.
const causeHeartbeatTimeout = "heartbeat_timeout"

// handleHealthz answers GET /healthz: 200 "ok" while the daemon serves,
// 503 once it is shutting down.
func (d *Daemon) handleHealthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	select {
	case <-d.closed:
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte("shutting down\n"))
	default:
		_, _ = w.Write([]byte("ok\n"))
	}
}

// operatorHandler adds the operator endpoints to mux: GET /healthz, and
// GET /metrics when Options.Metrics is set.
func (d *Daemon) operatorHandler(mux *http.ServeMux) {
	mux.HandleFunc("GET /healthz", d.handleHealthz)
	if d.opts.Metrics != nil {
		mux.Handle("GET /metrics", d.opts.Metrics)
	}
}

// serveMetrics serves the operator endpoints, and nothing else, on
// Config.MetricsAddr (TCP) when it is set. It returns once it listens;
// stop shuts that server down.
func (d *Daemon) serveMetrics(ctx context.Context) (stop func(), err error) {
	if d.cfg.MetricsAddr == "" {
		return func() {}, nil
	}
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", d.cfg.MetricsAddr)
	if err != nil {
		return nil, fmt.Errorf("daemon: metrics listener on %s: %w (change metrics_addr or --metrics-addr)", d.cfg.MetricsAddr, err)
	}
	mux := http.NewServeMux()
	d.operatorHandler(mux)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(l) }()
	d.log.Info("metrics listening", "addr", l.Addr().String())
	return func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		<-done
	}, nil
}
