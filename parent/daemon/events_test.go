package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/parent"
)

// recordedEvents records what the daemon reports to its Events.
type recordedEvents struct {
	mu  sync.Mutex
	log []string
}

func (r *recordedEvents) add(s string) {
	r.mu.Lock()
	r.log = append(r.log, s)
	r.mu.Unlock()
}

func (r *recordedEvents) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.log
	r.log = nil
	return out
}

func (r *recordedEvents) LaunchFinished(_ time.Duration, err error) {
	kind := "ok"
	if err != nil {
		kind = parent.ErrorKind(err)
	}
	r.add("launch " + kind)
}
func (r *recordedEvents) HeartbeatTimeout() { r.add("heartbeat timeout") }
func (r *recordedEvents) MonitorStarted(spare bool) {
	if spare {
		r.add("monitor started (spare)")
	} else {
		r.add("monitor started")
	}
}
func (r *recordedEvents) MonitorLost()    { r.add("monitor lost") }
func (r *recordedEvents) EnclaveAdopted() { r.add("enclave adopted") }

// TestEventsReported drives launches that succeed, are refused and time
// out, a daemon restart and a lost monitor, and checks the events the
// daemon reports for its metrics.
func TestEventsReported(t *testing.T) {
	state := shortTempDir(t)
	ev := &recordedEvents{}
	cfg := Config{StateDir: state, Socket: filepath.Join(state, "api.sock"), CPUPool: "0", MemoryMiB: 512, HeartbeatTimeout: time.Second}
	opts := Options{Backend: fakeBackend{}, MonitorCommand: monitorCommand, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Events: ev}
	d1, err := New(context.Background(), cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	svc := writeTestEIF(t, state, "svc", []byte("x"))
	res, err := d1.Run(ctx, parent.RunRequest{EIFPath: svc, MemoryMiB: 64, CPUCount: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d1.Run(ctx, parent.RunRequest{EIFPath: svc, MemoryMiB: 64}); !errors.Is(err, parent.ErrInvalidArgument) {
		t.Fatalf("Run without CPUs = %v", err)
	}
	if _, err := d1.Run(ctx, parent.RunRequest{EIFPath: svc, MemoryMiB: 64, CPUCount: 1}); !errors.Is(err, parent.ErrResources) {
		t.Fatalf("Run with the pool taken = %v", err)
	}
	if diff := cmp.Diff([]string{"monitor started", "launch ok", "launch invalid_argument", "launch insufficient_resources"}, ev.take()); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	d1.Close()

	// A new daemon adopts the running enclave, and notices when its
	// monitor dies.
	d2, err := New(ctx, cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	desc, err := d2.DescribeOne(res.EnclaveID)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(desc.ProcessID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	e, _ := d2.lookup(res.EnclaveID)
	select {
	case <-e.done:
	case <-time.After(30 * time.Second):
		t.Fatal("lost monitor not detected")
	}
	silent := writeTestEIF(t, state, "silent", []byte("x"))
	if _, err := d2.Run(ctx, parent.RunRequest{EIFPath: silent, MemoryMiB: 64, CPUCount: 1}); !errors.Is(err, parent.ErrBoot) {
		t.Fatalf("Run of an enclave that sends no heartbeat = %v", err)
	}
	if diff := cmp.Diff([]string{"enclave adopted", "monitor lost", "monitor started", "heartbeat timeout", "launch boot_failed"}, ev.take()); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
}

// TestOperatorEndpoints: /healthz and /metrics on the API socket, and on
// metrics_addr only those two.
func TestOperatorEndpoints(t *testing.T) {
	state := shortTempDir(t)
	metrics := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "cloister_test 1\n") })
	cfg := Config{StateDir: state, Socket: filepath.Join(state, "api.sock"), CPUPool: "0", MemoryMiB: 512, MetricsAddr: "127.0.0.1:0"}
	ready := make(chan struct{})
	d, err := New(context.Background(), cfg, Options{Backend: fakeBackend{}, MonitorCommand: monitorCommand,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: metrics, Ready: func() { close(ready) }})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()

	srv := httptest.NewServer(d.Handler())
	defer srv.Close()
	get := func(hc *http.Client, url string) (int, string) {
		t.Helper()
		resp, err := hc.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for path, want := range map[string]string{"/healthz": "ok\n", "/metrics": "cloister_test 1\n"} {
		if code, body := get(srv.Client(), srv.URL+path); code != http.StatusOK || body != want {
			t.Errorf("API GET %s = %d %q, want 200 %q", path, code, body, want)
		}
	}

	// Serve: Ready once the socket answers; metrics_addr serves only the
	// operator endpoints.
	var logs strings.Builder
	var mu sync.Mutex
	d.log = slog.New(slog.NewTextHandler(writerFunc(func(b []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return logs.Write(b)
	}), nil))
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- d.Serve(ctx) }()
	select {
	case <-ready:
	case err := <-served:
		t.Fatalf("Serve = %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("Ready was not called")
	}
	c, err := net.Dial("unix", cfg.Socket)
	if err != nil {
		t.Fatalf("Ready called but the socket does not answer: %v", err)
	}
	c.Close()
	mu.Lock()
	line := logs.String()
	mu.Unlock()
	_, addr, ok := strings.Cut(line, `msg="metrics listening" addr=`)
	if !ok {
		t.Fatalf("no metrics address logged:\n%s", line)
	}
	addr = strings.Fields(addr)[0]
	hc := &http.Client{Timeout: 10 * time.Second}
	if code, body := get(hc, "http://"+addr+"/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Errorf("metrics_addr GET /healthz = %d %q", code, body)
	}
	if code, body := get(hc, "http://"+addr+"/metrics"); code != http.StatusOK || body != "cloister_test 1\n" {
		t.Errorf("metrics_addr GET /metrics = %d %q", code, body)
	}
	if code, _ := get(hc, "http://"+addr+"/v1/info"); code != http.StatusNotFound {
		t.Errorf("metrics_addr GET /v1/info = %d, want 404: the API must not be served over TCP", code)
	}
	cancel()
	if err := <-served; err != nil {
		t.Fatalf("Serve = %v", err)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }
