// Package daemon is the Cloister parent daemon: it carves CPUs and memory
// out of the host into enclaves, launches them through a backend (process
// sandbox, QEMU microVM or Nitro), gives each enclave its services
// (heartbeat, emulated security module, kept console log, egress proxy,
// host↔enclave connections) and serves an HTTP/JSON API on a Unix socket.
//
// Every enclave is supervised by its own monitor process (the "enclave
// process" of nitro-cli, the shim of containerd): the daemon starts
// `cloister-monitor __monitor DIR` (or `cloister __monitor DIR`), which launches the enclave, serves its vsock
// services and records how it ended. Because the monitors outlive the
// daemon, restarting or upgrading the daemon leaves running enclaves alone;
// on start the daemon finds them again from their records, and cleans up
// after any whose monitor is gone.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cloister/cloister/attest"
	"github.com/cloister/cloister/internal/hybrid"
	"github.com/cloister/cloister/internal/wellknown"
	"github.com/cloister/cloister/parent"
	"github.com/cloister/cloister/parent/backend"
)

// Options are the daemon's collaborators; the zero value of each field has
// a sensible default.
type Options struct {
	// Backend launches enclaves. Required.
	Backend backend.Backend
	// Logger receives structured logs; nil discards them.
	Logger *slog.Logger
	// MonitorCommand returns the command that runs the monitor for the
	// enclave directory dir. Default: MonitorBinary with "__monitor dir".
	// Setting it also turns off spare monitors.
	MonitorCommand func(dir string) *exec.Cmd
	// MonitorBinary is the executable monitors run as (`MonitorBinary
	// __monitor …`), for example the lean cloister-monitor (see
	// [FindMonitorBinary]). Default: this executable (/proc/self/exe).
	MonitorBinary string
	// Clock returns the current time; nil uses time.Now.
	Clock func() time.Time
	// Version is reported by the info endpoint.
	Version string
	// CPUs, when set, is the CPU pool (instead of the configuration's
	// cpu_count/cpu_pool): the nitro backend's allocator decides it.
	CPUs []int
	// Cores groups CPUs into physical cores; when set, enclaves get whole
	// cores only, as the Nitro driver requires.
	Cores [][]int
	// Events receives launches, heartbeat timeouts and monitor events
	// (for metrics, see parent/daemon/metrics); nil drops them.
	Events Events
	// Metrics, when set, serves GET /metrics on the API socket and on
	// Config.MetricsAddr (parent/daemon/metrics provides one).
	Metrics http.Handler
	// Ready is called once Serve answers on the API socket (the cloister
	// command then tells systemd READY=1).
	Ready func()
}

// Daemon is the control plane. Its methods are safe for concurrent use.
type Daemon struct {
	cfg    Config
	opts   Options
	log    *slog.Logger
	now    func() time.Time
	pool   *pool
	issuer *attest.Issuer
	// issuerRef is what monitors are told of the issuer (its file and
	// the SHA-256 of the bytes loaded); zero without an emulated NSM.
	issuerRef issuerRef
	devRoot   []byte
	hostID    string
	caps      backend.Capabilities // of opts.Backend

	spares bool  // keep a spare monitor ready (the default monitor command)
	spare  spare // the waiting spare monitor

	mu       sync.Mutex
	enclaves map[string]*enclave // by ID
	wg       sync.WaitGroup
	closed   chan struct{}
}

// enclave is the daemon's view of one enclave.
type enclave struct {
	rec   record
	dir   backend.Dir
	state State
	exit  *parent.ExitStatus
	done  chan struct{} // closed when the enclave has ended
}

// New creates the daemon: it prepares the state directory, loads (or
// creates) the development root, sets up the resource pool and finds the
// enclaves a previous daemon left running.
func New(ctx context.Context, cfg Config, opts Options) (*Daemon, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("daemon: config: %w", err)
	}
	if cfg.CgroupParent == CgroupParentAuto {
		return nil, errors.New("daemon: config: cgroup_parent auto must be resolved (ResolveCgroupParent) before the backend is created")
	}
	cfg = cfg.withDefaults()
	if opts.Backend == nil {
		return nil, errors.New("daemon: no backend")
	}
	if opts.Backend.Kind() != backend.Kind(cfg.Backend) {
		return nil, fmt.Errorf("daemon: backend %q does not match config backend %q", opts.Backend.Kind(), cfg.Backend)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	if opts.Events == nil {
		opts.Events = noEvents{}
	}
	if opts.MonitorBinary == "" {
		opts.MonitorBinary = "/proc/self/exe"
	}
	useSpares := opts.MonitorCommand == nil
	if opts.MonitorCommand == nil {
		bin := opts.MonitorBinary
		opts.MonitorCommand = func(dir string) *exec.Cmd {
			return exec.Command(bin, monitorArg, dir)
		}
	}
	if err := opts.Backend.Check(ctx); err != nil {
		return nil, fmt.Errorf("daemon: backend %s cannot run on this host: %w", opts.Backend.Kind(), err)
	}
	cpus := opts.CPUs
	if cpus == nil {
		var err error
		if cpus, err = cfg.poolCPUs(onlineCPUs()); err != nil {
			return nil, fmt.Errorf("daemon: cpu pool: %w", err)
		}
	}
	if err := os.MkdirAll(filepath.Join(cfg.StateDir, "enclaves"), 0o700); err != nil {
		return nil, fmt.Errorf("daemon: state directory: %w", err)
	}
	d := &Daemon{
		cfg:      cfg,
		opts:     opts,
		log:      opts.Logger,
		now:      opts.Clock,
		pool:     newPool(cpus, cfg.MemoryMiB).withCores(opts.Cores),
		hostID:   instanceID(),
		caps:     backend.CapabilitiesOf(opts.Backend),
		enclaves: map[string]*enclave{},
		closed:   make(chan struct{}),
		spares:   useSpares,
	}
	if d.caps.EmulatedNSM {
		var err error
		if d.issuer, d.issuerRef, err = loadOrCreateIssuer(d.issuerPath(), opts.Clock); err != nil {
			return nil, err
		}
		d.devRoot = d.issuer.RootPEM()
	}
	if err := d.recover(ctx); err != nil {
		return nil, err
	}
	if d.spares {
		d.spawnSpare()
	}
	return d, nil
}

func (d *Daemon) issuerPath() string { return filepath.Join(d.cfg.StateDir, "devroot", "issuer.pem") }

// DevRootPEM returns the development root certificate that signs the
// attestation documents of this daemon's enclaves (nil on Nitro).
func (d *Daemon) DevRootPEM() []byte { return append([]byte(nil), d.devRoot...) }

// Close stops the daemon's watchers. Running enclaves keep running under
// their monitors; a new daemon finds them again.
func (d *Daemon) Close() error {
	select {
	case <-d.closed:
	default:
		close(d.closed)
	}
	d.stopSpare()
	d.wg.Wait()
	return nil
}

// Info describes the daemon and its free resources.
func (d *Daemon) Info() parent.Info {
	all, free, total, freeMem := d.pool.snapshot()
	return parent.Info{
		Backend: d.cfg.Backend, Version: d.opts.Version,
		CPUPool: all, FreeCPUs: free, MemoryMiB: total, FreeMiB: freeMem,
		StateDir: d.cfg.StateDir, DevRootPEM: string(d.devRoot),
	}
}

// heartbeatTimeout is nitro-cli's formula unless the config sets one.
func (d *Daemon) heartbeatTimeout(eifSize int64, memMiB int) time.Duration {
	if d.cfg.HeartbeatTimeout > 0 {
		return d.cfg.HeartbeatTimeout
	}
	const gib = 1 << 30
	img := math.Ceil(float64(eifSize) / (6 * gib))
	mem := math.Ceil(float64(memMiB) / (100 * 1024))
	return time.Duration(img+mem) * 90 * time.Second
}

// Run launches an enclave and returns once it has sent its heartbeat.
func (d *Daemon) Run(ctx context.Context, req parent.RunRequest) (res parent.RunResult, err error) {
	began := time.Now()
	defer func() { d.opts.Events.LaunchFinished(time.Since(began), err) }()
	if req.EIFPath == "" {
		return parent.RunResult{}, newErr("E01", parent.ErrInvalidArgument, "no EIF given: set eif_path (--eif-path)")
	}
	if (req.CPUCount > 0) == (len(req.CPUIDs) > 0) {
		if req.CPUCount == 0 {
			return parent.RunResult{}, newErr("E01", parent.ErrInvalidArgument, "give exactly one of cpu_count (--cpu-count) and cpu_ids (--cpu-ids)")
		}
		return parent.RunResult{}, newErr("E02", parent.ErrInvalidArgument, "cpu_count (--cpu-count) and cpu_ids (--cpu-ids) cannot be used together")
	}
	if req.CPUCount < 0 {
		return parent.RunResult{}, newErr("E03", parent.ErrInvalidArgument, "cpu_count %d is negative", req.CPUCount)
	}
	if req.MemoryMiB <= 0 {
		return parent.RunResult{}, newErr("E01", parent.ErrInvalidArgument, "no memory given: set memory_mib (--memory)")
	}
	if req.EnclaveCID != 0 && (req.EnclaveCID < wellknown.MinEnclaveCID || req.EnclaveCID > wellknown.MaxEnclaveCID) {
		return parent.RunResult{}, newErr("E03", parent.ErrInvalidArgument, "enclave CID %d is outside %d..%d (0 or omitted picks one)", req.EnclaveCID, wellknown.MinEnclaveCID, uint64(wellknown.MaxEnclaveCID))
	}
	if err := d.checkEgress(req.Egress); err != nil {
		return parent.RunResult{}, err
	}
	eifPath, err := filepath.Abs(req.EIFPath)
	if err != nil {
		return parent.RunResult{}, newErr("E19", parent.ErrInvalidArgument, "EIF path %q: %v", req.EIFPath, err)
	}
	src, err := openAsCaller(ctx, eifPath)
	if err != nil {
		return parent.RunResult{}, newErr("E19", parent.ErrInvalidArgument, "cannot read EIF: %v", err)
	}
	loaded, err := loadImage(ctx, src, eifPath, d.now())
	src.Close()
	if err != nil {
		return parent.RunResult{}, err
	}
	defer loaded.Close()
	img := loaded.info
	if min := minMemoryMiB(img.size); req.MemoryMiB < min {
		return parent.RunResult{}, newErr("E26", parent.ErrInvalidArgument, "at least %d MiB must be allocated to run %s (4 × its %d-byte size, and no less than 64 MiB); raise --memory", min, filepath.Base(eifPath), img.size)
	}
	if img.noKernel && !d.caps.NoKernel {
		return parent.RunResult{}, newErr("E35", parent.ErrInvalidArgument, "%s was built without a kernel and can only run on the sandbox backend; rebuild it with --kernel (see docs/images.md)", eifPath)
	}

	slot, err := newSlot()
	if err != nil {
		return parent.RunResult{}, err
	}
	id := d.hostID + "-enc" + slot

	// Name, CID and resources are decided under the lock so concurrent
	// launches never collide.
	d.mu.Lock()
	name, err := d.pickNameLocked(req.EnclaveName, eifPath)
	if err != nil {
		d.mu.Unlock()
		return parent.RunResult{}, err
	}
	// In range (checked above): the CID is 32 bits from here on.
	cid, err := d.pickCIDLocked(uint32(req.EnclaveCID))
	if err != nil {
		d.mu.Unlock()
		return parent.RunResult{}, err
	}
	cpus, err := d.pool.allocate(id, req.CPUCount, req.CPUIDs, req.MemoryMiB)
	if err != nil {
		d.mu.Unlock()
		return parent.RunResult{}, err
	}
	dir := backend.Dir(filepath.Join(d.cfg.StateDir, "enclaves", slot))
	e := &enclave{
		rec:   newRecord(req, id, slot, name, cid, cpus, eifPath, img, d.opts.Backend.Kind(), d.now()),
		dir:   dir,
		state: StateStarting,
		done:  make(chan struct{}),
	}
	d.enclaves[id] = e
	d.mu.Unlock()

	log := d.log.With("enclave", id, "name", name)
	log.Info("launching enclave", "cid", cid, "cpus", cpus, "memory_mib", req.MemoryMiB, "eif", eifPath, "debug", e.rec.Debug)
	if err := d.launch(ctx, e, loaded); err != nil {
		log.Error("launch failed", "err", err)
		d.forget(e)
		return parent.RunResult{}, err
	}
	log.Info("enclave running", "pid", e.rec.EnclavePID)
	return e.rec.runResult(), nil
}

// minMemoryMiB is nitro-cli's rule: at least 4 × the EIF size, and the
// Nitro driver's minimum of 64 MiB.
func minMemoryMiB(eifSize int64) int {
	n := int((4*eifSize + (1<<20 - 1)) >> 20)
	return max(n, 64)
}

func (d *Daemon) pickNameLocked(requested, eifPath string) (string, error) {
	taken := func(n string) bool {
		for _, e := range d.enclaves {
			if e.state != StateExited && e.rec.Name == n {
				return true
			}
		}
		return false
	}
	if requested != "" {
		if strings.ContainsAny(requested, "/\x00") || len(requested) > 128 {
			return "", newErr("E58", parent.ErrInvalidArgument, "enclave name %q is invalid (at most 128 characters, no '/')", requested)
		}
		if taken(requested) {
			return "", newErr("E58", parent.ErrConflict, "an enclave named %q is already running; pick another --enclave-name", requested)
		}
		return requested, nil
	}
	base := strings.TrimSuffix(filepath.Base(eifPath), ".eif")
	if !taken(base) {
		return base, nil
	}
	for i := 1; ; i++ {
		if n := fmt.Sprintf("%s_%d", base, i); !taken(n) {
			return n, nil
		}
	}
}

// firstAutoCID is where automatic CIDs start, as on Nitro hosts.
const firstAutoCID = 16

func (d *Daemon) pickCIDLocked(requested uint32) (uint32, error) {
	used := map[uint32]bool{}
	for _, e := range d.enclaves {
		if e.state != StateExited {
			used[e.rec.CID] = true
		}
	}
	if requested != 0 {
		if used[requested] {
			return 0, newErr("E03", parent.ErrConflict, "enclave CID %d is already in use; pick another --enclave-cid or omit it", requested)
		}
		return requested, nil
	}
	for c := uint32(firstAutoCID); c <= wellknown.MaxEnclaveCID; c++ {
		if !used[c] {
			return c, nil
		}
	}
	return 0, newErr("E03", parent.ErrResources, "no free enclave CID")
}

// forget drops a failed launch: its resources and its directory.
func (d *Daemon) forget(e *enclave) {
	d.pool.release(e.rec.ID)
	d.mu.Lock()
	delete(d.enclaves, e.rec.ID)
	d.mu.Unlock()
	if err := os.RemoveAll(e.dir.Path()); err != nil {
		d.log.Warn("removing enclave directory", "dir", e.dir, "err", err)
	}
}

// lookup finds an enclave by ID or name. A running enclave wins over
// exited ones with the same name; among exited ones the newest wins.
func (d *Daemon) lookup(idOrName string) (*enclave, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if e, ok := d.enclaves[idOrName]; ok {
		return e, nil
	}
	var best *enclave
	for _, e := range d.enclaves {
		if e.rec.Name != idOrName {
			continue
		}
		switch {
		case best == nil,
			best.state == StateExited && e.state != StateExited,
			best.state == StateExited && e.state == StateExited && e.rec.StartTime.After(best.rec.StartTime):
			best = e
		}
	}
	if best == nil {
		return nil, newErr("", parent.ErrNotFound, "no enclave with id or name %q (see describe-enclaves)", idOrName)
	}
	return best, nil
}

// Describe lists the enclaves: running ones, and exited ones with all.
func (d *Daemon) Describe(all bool) []parent.EnclaveDescription {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := []parent.EnclaveDescription{}
	for _, e := range d.enclaves {
		if e.state == StateExited && !all {
			continue
		}
		out = append(out, e.describeLocked(d.caps))
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].StartTime.Equal(out[j].StartTime) {
			return out[i].StartTime.Before(out[j].StartTime)
		}
		return out[i].EnclaveID < out[j].EnclaveID
	})
	return out
}

// DescribeOne describes one enclave by ID or name.
func (d *Daemon) DescribeOne(idOrName string) (parent.EnclaveDescription, error) {
	e, err := d.lookup(idOrName)
	if err != nil {
		return parent.EnclaveDescription{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return e.describeLocked(d.caps), nil
}

func (e *enclave) describeLocked(caps backend.Capabilities) parent.EnclaveDescription {
	return e.rec.describe(e.dir, e.state, e.exit, caps)
}

// Terminate stops an enclave by ID or name. Terminating an exited enclave
// removes its record and kept console log.
func (d *Daemon) Terminate(ctx context.Context, idOrName string) (parent.TerminateResult, error) {
	e, err := d.lookup(idOrName)
	if err != nil {
		return parent.TerminateResult{}, err
	}
	res := parent.TerminateResult{EnclaveName: e.rec.Name, EnclaveID: e.rec.ID, Terminated: true}
	d.mu.Lock()
	st := e.state
	if st == StateRunning || st == StateStarting {
		e.state = StateTerminating
	}
	d.mu.Unlock()
	if st == StateExited {
		d.remove(e)
		return res, nil
	}
	d.log.Info("terminating enclave", "enclave", e.rec.ID)
	if err := monitorTerminate(ctx, e.dir); err != nil {
		// The monitor is gone or hung: clean up ourselves.
		d.log.Warn("monitor did not terminate the enclave; cleaning up directly", "enclave", e.rec.ID, "err", err)
		d.reapLost(ctx, e, "terminated (monitor unreachable)")
	}
	select {
	case <-e.done:
	case <-ctx.Done():
		return parent.TerminateResult{}, fmt.Errorf("daemon: waiting for enclave %s to end: %w", e.rec.ID, ctx.Err())
	}
	return res, nil
}

// TerminateAll terminates every running enclave.
func (d *Daemon) TerminateAll(ctx context.Context) ([]parent.TerminateResult, error) {
	d.mu.Lock()
	var ids []string
	for id, e := range d.enclaves {
		if e.state != StateExited {
			ids = append(ids, id)
		}
	}
	d.mu.Unlock()
	sort.Strings(ids)
	out := []parent.TerminateResult{}
	var errs []error
	for _, id := range ids {
		r, err := d.Terminate(ctx, id)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, r)
	}
	return out, errors.Join(errs...)
}

// remove deletes an exited enclave's record and directory.
func (d *Daemon) remove(e *enclave) {
	d.mu.Lock()
	delete(d.enclaves, e.rec.ID)
	d.mu.Unlock()
	if err := os.RemoveAll(e.dir.Path()); err != nil {
		d.log.Warn("removing enclave directory", "dir", e.dir, "err", err)
	}
}

// Dial opens a connection to port inside a running enclave, through its
// hybrid-vsock socket.
func (d *Daemon) Dial(ctx context.Context, idOrName string, port uint32) (net.Conn, error) {
	e, err := d.lookup(idOrName)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	st := e.state
	d.mu.Unlock()
	if st != StateRunning {
		return nil, newErr("", parent.ErrConflict, "enclave %s is %s, not RUNNING", e.rec.ID, st)
	}
	c, err := hybrid.Dial(ctx, e.dir.VsockSock(), port, nil)
	if err != nil {
		return nil, fmt.Errorf("daemon: connect to port %d of enclave %s: %w", port, e.rec.ID, err)
	}
	return c, nil
}

// ended records how an enclave ended and gives its resources back.
func (d *Daemon) ended(e *enclave, x parent.ExitStatus) {
	d.mu.Lock()
	if e.state == StateExited {
		d.mu.Unlock()
		return
	}
	e.state = StateExited
	e.exit = &x
	d.mu.Unlock()
	d.pool.release(e.rec.ID)
	_ = os.Remove(e.dir.MonitorSock())
	_ = os.Remove(e.dir.VsockSock())
	_ = os.RemoveAll(e.dir.HostDir())
	_ = os.RemoveAll(e.dir.GuestDir())
	close(e.done)
	d.log.Info("enclave ended", "enclave", e.rec.ID, "reason", x.Reason, "code", x.Code)
	d.pruneExited()
}

// pruneExited keeps at most KeepExited exited enclaves.
func (d *Daemon) pruneExited() {
	d.mu.Lock()
	var exited []*enclave
	for _, e := range d.enclaves {
		if e.state == StateExited {
			exited = append(exited, e)
		}
	}
	d.mu.Unlock()
	if len(exited) <= d.cfg.KeepExited {
		return
	}
	sort.Slice(exited, func(i, j int) bool { return exited[i].exit.Time.Before(exited[j].exit.Time) })
	for _, e := range exited[:len(exited)-d.cfg.KeepExited] {
		d.remove(e)
	}
}

// processAlive reports whether pid exists (signal 0).
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
