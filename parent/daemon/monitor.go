package daemon

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/cloister/cloister/attest"
	"github.com/cloister/cloister/internal/egress"
	"github.com/cloister/cloister/internal/hybrid"
	"github.com/cloister/cloister/internal/wellknown"
	"github.com/cloister/cloister/parent"
	"github.com/cloister/cloister/parent/backend"
	"github.com/cloister/cloister/parent/nsmemu"
)

// monitorSpec is what the daemon hands a monitor in <dir>/monitor.json.
type monitorSpec struct {
	FormatVersion int          `json:"format_version"` // see record.FormatVersion
	Spec          backend.Spec `json:"spec"`
	Config        Config       `json:"config"`
	// Egress is the enclave's own egress allowlist, which narrows the
	// configured one (format version 2; nil: the configured one alone).
	Egress           *parent.EgressPolicy `json:"egress,omitempty"`
	HeartbeatTimeout time.Duration        `json:"heartbeat_timeout"`
	issuerRef
	PCRs pcrSet `json:"pcrs,omitempty"` // measured PCRs for the emulated NSM (hex in JSON)
}

// issuerRef is where a monitor finds the daemon's development root: the
// file, and the SHA-256 of the bytes the daemon loaded (checking the
// chain's signatures) or wrote, so that the monitor loads those very
// bytes without checking the signatures again (attest.IssuerConfig).
type issuerRef struct {
	IssuerFile   string `json:"issuer_file,omitempty"`
	IssuerSHA256 []byte `json:"issuer_sha256,omitempty"`
}

// monitorStatus is the monitor's answer to GET /status, /wait and
// POST /terminate.
type monitorStatus struct {
	// FormatVersion is set in exit.json (see record.FormatVersion); the
	// control socket's answers leave it out.
	FormatVersion int   `json:"format_version,omitempty"`
	State         State `json:"state"` // STARTING, RUNNING, EXITED
	EnclavePID    int   `json:"enclave_pid"`
	// Booted is set once the boot heartbeat arrived; an enclave can boot
	// and end before the daemon sees it RUNNING.
	Booted bool               `json:"booted,omitempty"`
	Exit   *parent.ExitStatus `json:"exit,omitempty"`
	// Error explains a failed launch (state EXITED before RUNNING).
	Error string `json:"error,omitempty"`
	Code  string `json:"code,omitempty"`
	// Cause classifies a failed launch for metrics: "heartbeat_timeout"
	// (absent otherwise, and in the files of older daemons).
	Cause string `json:"cause,omitempty"`
}

// BackendFactory creates the backend named by the daemon configuration,
// inside the monitor process.
type BackendFactory func(cfg Config) (backend.Backend, error)

// RunMonitor is the body of the monitor process for the enclave directory
// dir: it launches the enclave from img, the daemon's sealed in-memory copy
// of the image (the bytes it measured), serves the enclave's services and
// records its exit. It returns when the enclave has ended and its exit is
// recorded. RunMonitor closes img once the enclave is launched.
func RunMonitor(ctx context.Context, path string, img *os.File, newBackend BackendFactory, logger *slog.Logger) error {
	dir := backend.Dir(path)
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	start := time.Now()
	ms, err := readMonitorSpec(dir)
	if err != nil {
		return fmt.Errorf("monitor: read %s: %w", dir.MonitorSpec(), err)
	}
	defer img.Close()
	be, err := newBackend(ms.Config)
	if err != nil {
		return fmt.Errorf("monitor: backend: %w", err)
	}
	ms.Spec.Image = img
	m := &monitor{start: start, dir: dir, spec: ms, be: be, log: logger.With("enclave", ms.Spec.ID), status: monitorStatus{State: StateStarting}}
	m.changed = make(chan struct{})
	if err := checkSealed(img); err != nil {
		return m.fail("E36", err)
	}
	// Sealed: the bytes the daemon validated (CRC included) and measured.
	m.spec.Spec.ImageVerified = true
	return m.run(ctx)
}

type monitor struct {
	start time.Time // when the monitor began
	dir   backend.Dir
	spec  monitorSpec
	be    backend.Backend
	log   *slog.Logger

	mu        sync.Mutex
	status    monitorStatus
	changed   chan struct{} // closed and replaced on every status change
	inst      backend.Instance
	terminate chan struct{}
	termOnce  sync.Once

	limits serviceLimits // bounded services and their counters (GET /stats)
}

func (m *monitor) setStatus(f func(*monitorStatus)) {
	m.mu.Lock()
	f(&m.status)
	close(m.changed)
	m.changed = make(chan struct{})
	m.mu.Unlock()
}

func (m *monitor) snapshot() (monitorStatus, <-chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.status, m.changed
}

func (m *monitor) requestTerminate() { m.termOnce.Do(func() { close(m.terminate) }) }

func (m *monitor) run(ctx context.Context) error {
	m.terminate = make(chan struct{})
	spec := m.spec.Spec
	if err := os.MkdirAll(m.dir.HostDir(), 0o700); err != nil {
		return m.fail("", fmt.Errorf("create %s: %w", m.dir.HostDir(), err))
	}
	// The enclave's output goes to a capped, rotating log (consolelog.go).
	console, err := openConsoleLog(m.dir.Console(), m.spec.Config.consoleMaxBytes())
	if err != nil {
		return m.fail("", err)
	}
	defer console.Close()
	spec.Console = console

	// The control socket comes first so the daemon can watch the launch.
	ctl, err := listenUnix(m.dir.MonitorSock())
	if err != nil {
		return m.fail("", err)
	}
	srv := &http.Server{Handler: m.handler(), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ctl)
	defer func() {
		// Let the daemon collect the final status, then stop serving.
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()

	// Services stop when the monitor returns: cancel first, then wait
	// (one deferred function, so the order cannot be inverted).
	svcCtx, stopServices := context.WithCancel(ctx)
	var svcWG sync.WaitGroup
	defer func() {
		stopServices()
		svcWG.Wait()
	}()

	// Host-side listeners exist before the enclave starts, as on Nitro.
	hb, err := m.be.HostListen(svcCtx, spec, HeartbeatPort)
	if err != nil {
		return m.fail("E11", fmt.Errorf("heartbeat listener: %w", err))
	}
	defer hb.Close()
	if err := m.startServices(svcCtx, spec, &svcWG); err != nil {
		return m.fail("E11", err)
	}
	// A backend that serves /dev/nsm itself (the sandbox's supervisor)
	// sends its requests to the same emulated module, in this process.
	if emu := m.limits.emulator(); emu != nil {
		spec.NSM = emulatorRoundTripper{emu}
	}

	launchStart := time.Now()
	inst, err := m.be.Launch(ctx, spec)
	if err != nil {
		return m.fail("E36", fmt.Errorf("launch: %w", err))
	}
	launched := time.Now()
	// The backend has what it needs of the image: release the copy.
	_ = spec.Image.Close()
	m.mu.Lock()
	m.inst = inst
	m.mu.Unlock()
	m.limits.setInstance(inst)
	m.setStatus(func(s *monitorStatus) { s.EnclavePID = inst.Pid() })

	// Host → enclave connections through the hybrid socket.
	vs, err := listenUnix(m.dir.VsockSock())
	if err != nil {
		_ = inst.Terminate(context.Background())
		return m.fail("E11", err)
	}
	hs := &hybrid.Server{Connector: instanceConnector{inst}, Logger: m.log}
	svcWG.Add(1)
	go func() { defer svcWG.Done(); _ = hs.Serve(svcCtx, vs) }()

	if err := m.awaitHeartbeat(ctx, hb, inst); err != nil {
		_ = inst.Terminate(context.Background())
		x := inst.Exit()
		return m.fail("E36", fmt.Errorf("%w (enclave: %s)", err, x.Reason))
	}
	_ = hb.Close()
	m.log.Info("heartbeat received; enclave running", "setup", launchStart.Sub(m.start), "launch", launched.Sub(launchStart), "boot", time.Since(launched))
	m.setStatus(func(s *monitorStatus) { s.State, s.Booted = StateRunning, true })

	select {
	case <-inst.Done():
	case <-m.terminate:
		tctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := inst.Terminate(tctx)
		cancel()
		if err != nil {
			m.log.Error("terminate", "err", err)
		}
	case <-ctx.Done():
		_ = inst.Terminate(context.Background())
	}
	<-inst.Done()
	x := inst.Exit()
	select {
	case <-m.terminate:
		x.Reason = "terminated"
	default:
	}
	return m.finish(exitStatus(x, time.Now()), "", "")
}

// awaitHeartbeat accepts the boot heartbeat: one 0xB7 byte, echoed back.
func (m *monitor) awaitHeartbeat(ctx context.Context, l net.Listener, inst backend.Instance) error {
	timeout := m.spec.HeartbeatTimeout
	type result struct{ err error }
	ch := make(chan result, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			ch <- result{fmt.Errorf("heartbeat: accept: %w", err)}
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(timeout))
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			ch <- result{fmt.Errorf("heartbeat: read: %w", err)}
			return
		}
		if b[0] != wellknown.HeartbeatByte {
			ch <- result{fmt.Errorf("heartbeat: got byte %#x, want %#x", b[0], wellknown.HeartbeatByte)}
			return
		}
		if _, err := c.Write(b[:]); err != nil {
			ch <- result{fmt.Errorf("heartbeat: echo: %w", err)}
			return
		}
		ch <- result{nil}
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case r := <-ch:
		return r.err
	case <-inst.Done():
		// An enclave may send its heartbeat and end right away; the
		// accepting goroutine then reports success a moment later.
		select {
		case r := <-ch:
			return r.err
		case <-time.After(500 * time.Millisecond):
		}
		return errors.New("the enclave ended before sending its boot heartbeat")
	case <-t.C:
		return fmt.Errorf("%w within %s", errHeartbeatTimeout, timeout)
	case <-m.terminate:
		return errors.New("terminated during boot")
	case <-ctx.Done():
		return ctx.Err()
	}
}

// startServices starts the emulated security module and egress proxies.
func (m *monitor) startServices(ctx context.Context, spec backend.Spec, wg *sync.WaitGroup) error {
	if m.spec.IssuerFile != "" {
		pemBytes, err := os.ReadFile(m.spec.IssuerFile)
		if err != nil {
			return fmt.Errorf("read development root: %w", err)
		}
		iss, err := attest.LoadIssuer(pemBytes, attest.IssuerConfig{VerifiedSHA256: m.spec.IssuerSHA256})
		if err != nil {
			return fmt.Errorf("load development root: %w", err)
		}
		// Per-enclave limits: the emulator works in this process, outside
		// the enclave's cgroup (monitor_limits.go).
		nc := m.spec.Config.NSM.withDefaults()
		bucket, err := attestationBucket(nc, len(spec.CPUs))
		if err != nil {
			return fmt.Errorf("security module emulator: %w", err)
		}
		emu, err := nsmemu.New(nsmemu.Config{
			ModuleID: spec.ID, Issuer: iss, PCRs: m.spec.PCRs, Debug: spec.Debug,
			Logger:      m.log.With("service", "nsm"),
			IdleTimeout: nc.IdleTimeout, Attestations: bucket,
		})
		if err != nil {
			return fmt.Errorf("security module emulator: %w", err)
		}
		m.limits.setEmulator(emu)
		l, err := m.be.HostListen(ctx, spec, NSMPort)
		if err != nil {
			return fmt.Errorf("security module listener: %w", err)
		}
		l = m.limits.bound("nsm", l, nc.MaxConnections)
		wg.Add(1)
		go func() { defer wg.Done(); _ = emu.Serve(ctx, l) }()
	}

	al, err := m.spec.Config.egressAllowlist()
	if err != nil {
		return err
	}
	// The enclave's own allowlist narrows the daemon's on every connection.
	own, err := m.spec.Config.enclaveAllowlist(m.spec.Egress)
	if err != nil {
		return fmt.Errorf("the enclave's egress allowlist: %w", err)
	}
	for _, pc := range m.spec.Config.Egress.Proxies {
		p := &egress.Proxy{Allowlist: al, Narrow: own, Logger: m.log.With("service", "egress", "port", pc.Port)}
		if pc.RemoteAddr != "" {
			p.Target = net.JoinHostPort(pc.RemoteAddr, fmt.Sprint(pc.RemotePort))
			if err := p.Validate(ctx); err != nil {
				return fmt.Errorf("egress proxy on port %d: %w", pc.Port, err)
			}
		}
		l, err := m.be.HostListen(ctx, spec, pc.Port)
		if err != nil {
			return fmt.Errorf("egress proxy listener on port %d: %w", pc.Port, err)
		}
		l = m.limits.bound(fmt.Sprintf("egress:%d", pc.Port), l, m.spec.Config.egressMaxConnections())
		wg.Add(1)
		go func() { defer wg.Done(); _ = p.Serve(ctx, l) }()
	}
	return nil
}

// fail records a launch failure and returns it.
func (m *monitor) fail(code string, err error) error {
	m.log.Error("launch failed", "err", err)
	if errors.Is(err, errHeartbeatTimeout) {
		m.setStatus(func(s *monitorStatus) { s.Cause = causeHeartbeatTimeout })
	}
	_ = m.finish(parent.ExitStatus{Code: -1, Reason: "launch failed: " + err.Error(), Time: time.Now().UTC()}, err.Error(), code)
	return err
}

// finish writes exit.json and publishes the final status.
func (m *monitor) finish(x parent.ExitStatus, errMsg, code string) error {
	st := monitorStatus{State: StateExited, Exit: &x, Error: errMsg, Code: code}
	m.mu.Lock()
	st.EnclavePID, st.Booted, st.Cause = m.status.EnclavePID, m.status.Booted, m.status.Cause
	m.mu.Unlock()
	werr := writeExit(m.dir, st)
	m.setStatus(func(s *monitorStatus) { *s = st })
	if werr != nil {
		return fmt.Errorf("monitor: record exit: %w", werr)
	}
	return nil
}

func (m *monitor) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		st, _ := m.snapshot()
		writeJSON(w, http.StatusOK, st)
	})
	// /wait blocks until the state differs from ?state= (default: until EXITED).
	mux.HandleFunc("GET /wait", func(w http.ResponseWriter, r *http.Request) {
		from := r.URL.Query().Get("state")
		for {
			st, changed := m.snapshot()
			if st.State == StateExited || (from != "" && st.State.String() != from) {
				writeJSON(w, http.StatusOK, st)
				return
			}
			select {
			case <-changed:
			case <-r.Context().Done():
				return
			}
		}
	})
	mux.HandleFunc("GET /stats", m.limits.handleStats)
	mux.HandleFunc("POST /terminate", func(w http.ResponseWriter, r *http.Request) {
		m.requestTerminate()
		for {
			st, changed := m.snapshot()
			if st.State == StateExited {
				writeJSON(w, http.StatusOK, st)
				return
			}
			select {
			case <-changed:
			case <-r.Context().Done():
				return
			}
		}
	})
	return mux
}

// emulatorRoundTripper gives a backend the emulated security module as a
// backend.NSMRoundTripper: the same PCRs, locks and attestation pacing as
// the module's vsock port.
type emulatorRoundTripper struct{ emu *nsmemu.Emulator }

func (e emulatorRoundTripper) RoundTrip(ctx context.Context, req []byte) ([]byte, error) {
	return e.emu.Handle(ctx, req), nil
}

// instanceConnector adapts a backend instance to the hybrid server.
type instanceConnector struct{ inst backend.Instance }

func (c instanceConnector) ConnectGuest(ctx context.Context, port uint32) (net.Conn, error) {
	return c.inst.Dial(ctx, port)
}

// Handoff hands the client's socket to the enclave when the instance can
// (the sandbox backend); otherwise it returns hybrid.ErrHandoffUnsupported
// and the hybrid server relays through ConnectGuest.
func (c instanceConnector) Handoff(ctx context.Context, port uint32, client *net.UnixConn, ok []byte) error {
	if h, is := c.inst.(hybrid.Handoff); is {
		return h.Handoff(ctx, port, client, ok)
	}
	return hybrid.ErrHandoffUnsupported
}

func listenUnix(path string) (net.Listener, error) {
	_ = os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// monitorClient talks to a monitor's control socket.
func monitorClient(dir backend.Dir) *http.Client {
	sock := dir.MonitorSock()
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		DisableKeepAlives: true,
	}}
}

func monitorCall(ctx context.Context, dir backend.Dir, method, path string) (monitorStatus, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://monitor"+path, nil)
	if err != nil {
		return monitorStatus{}, err
	}
	resp, err := monitorClient(dir).Do(req)
	if err != nil {
		return monitorStatus{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return monitorStatus{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return monitorStatus{}, fmt.Errorf("monitor %s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(b))
	}
	var st monitorStatus
	if err := json.Unmarshal(b, &st); err != nil {
		return monitorStatus{}, fmt.Errorf("monitor %s %s: %w", method, path, err)
	}
	return st, nil
}

func monitorTerminate(ctx context.Context, dir backend.Dir) error {
	_, err := monitorCall(ctx, dir, http.MethodPost, "/terminate")
	return err
}

// loadOrCreateIssuer loads the development root from path, creating and
// saving a new one (mode 0600) on first use.
func loadOrCreateIssuer(path string, clock func() time.Time) (*attest.Issuer, issuerRef, error) {
	cfg := attest.IssuerConfig{Clock: clock}
	ref := func(b []byte) issuerRef {
		sum := sha256.Sum256(b)
		return issuerRef{IssuerFile: path, IssuerSHA256: sum[:]}
	}
	if b, err := os.ReadFile(path); err == nil {
		iss, err := attest.LoadIssuer(b, cfg)
		if err != nil {
			return nil, issuerRef{}, fmt.Errorf("daemon: development root %s is unusable (%v); move it away to create a new one", path, err)
		}
		return iss, ref(b), nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, issuerRef{}, fmt.Errorf("daemon: read development root: %w", err)
	}
	iss, err := attest.NewIssuer(cfg)
	if err != nil {
		return nil, issuerRef{}, fmt.Errorf("daemon: create development root: %w", err)
	}
	b, err := iss.MarshalPEM()
	if err != nil {
		return nil, issuerRef{}, fmt.Errorf("daemon: encode development root: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, issuerRef{}, fmt.Errorf("daemon: development root directory: %w", err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return nil, issuerRef{}, fmt.Errorf("daemon: save development root: %w", err)
	}
	return iss, ref(b), nil
}
