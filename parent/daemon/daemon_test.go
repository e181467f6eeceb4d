package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/enclave/eif"
	"github.com/cloister/cloister/parent"
	"github.com/cloister/cloister/parent/backend"
)

// The test binary doubles as the monitor process: the daemon re-executes
// it with CLOISTER_TEST_MONITOR set.
func TestMain(m *testing.M) {
	if dir := os.Getenv("CLOISTER_TEST_MONITOR"); dir != "" {
		logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
		err := RunMonitor(context.Background(), dir, os.NewFile(ImageFD, "eif"), func(Config) (backend.Backend, error) { return fakeBackend{}, nil }, logger)
		if err != nil {
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func monitorCommand(dir string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "CLOISTER_TEST_MONITOR="+dir)
	return cmd
}

// writeTestEIF writes a small valid EIF and returns its path.
func writeTestEIF(t testing.TB, dir, name string, ramdisk []byte) string {
	t.Helper()
	md, err := eif.MarshalMetadata(&eif.Metadata{ImageName: name, ImageVersion: "1"})
	if err != nil {
		t.Fatal(err)
	}
	img := &eif.Image{Sections: []eif.Section{
		{Type: eif.SectionKernel, Data: []byte(eif.NoKernelMarker)},
		{Type: eif.SectionCmdline, Data: []byte("console=ttyS0")},
		{Type: eif.SectionMetadata, Data: md},
		{Type: eif.SectionRamdisk, Data: []byte("bootstrap")},
		{Type: eif.SectionRamdisk, Data: ramdisk},
	}}
	b, err := eif.Marshal(img)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name+".eif")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// shortTempDir keeps Unix socket paths under the 108-byte limit.
func shortTempDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "cl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func newTestDaemon(t *testing.T, state string, cfg Config) *Daemon {
	t.Helper()
	cfg.StateDir = state
	cfg.Socket = filepath.Join(state, "api.sock")
	if cfg.CPUPool == "" && cfg.CPUCount == 0 {
		cfg.CPUPool = "0"
		if len(onlineCPUs()) > 1 {
			cfg.CPUPool = "0-1"
		}
	}
	if cfg.MemoryMiB == 0 {
		cfg.MemoryMiB = 1024
	}
	if cfg.HeartbeatTimeout == 0 {
		cfg.HeartbeatTimeout = 20 * time.Second
	}
	d, err := New(context.Background(), cfg, Options{Backend: fakeBackend{}, MonitorCommand: monitorCommand,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = d.TerminateAll(ctx)
		d.Close()
	})
	return d
}

func TestRunDescribeTerminate(t *testing.T) {
	state := shortTempDir(t)
	d := newTestDaemon(t, state, Config{})
	eifPath := writeTestEIF(t, state, "echo", []byte("customer"))
	ctx := context.Background()

	res, err := d.Run(ctx, parent.RunRequest{EIFPath: eifPath, MemoryMiB: 128, CPUCount: 1})
	if err != nil {
		t.Fatal(err)
	}
	if res.EnclaveName != "echo" || res.EnclaveCID != firstAutoCID || res.NumberOfCPUs != 1 || res.MemoryMiB != 128 {
		t.Errorf("run result %+v", res)
	}
	if !strings.HasPrefix(res.EnclaveID, "i-") || !strings.Contains(res.EnclaveID, "-enc") {
		t.Errorf("enclave id %q does not look like nitro-cli's", res.EnclaveID)
	}

	// A second one from the same image gets a suffixed name and the next CID.
	res2, err := d.Run(ctx, parent.RunRequest{EIFPath: eifPath, MemoryMiB: 128, CPUCount: 1})
	if len(onlineCPUs()) > 1 {
		if err != nil {
			t.Fatal(err)
		}
		if res2.EnclaveName != "echo_1" || res2.EnclaveCID != firstAutoCID+1 {
			t.Errorf("second run %+v", res2)
		}
	}

	list := d.Describe(false)
	if len(list) == 0 || list[0].State != parent.StateRunning || list[0].Flags != parent.FlagsNone {
		t.Fatalf("describe: %+v", list)
	}
	img, _ := eif.Open(eifPath, eif.ReadOptions{})
	m, _ := eif.Measure(img)
	if got := list[0].Measurements.PCR0; got != hexOf(m.PCR0[:]) {
		t.Errorf("PCR0 %s, want %s", got, hexOf(m.PCR0[:]))
	}

	// Host → enclave through the hybrid socket.
	c, err := d.Dial(ctx, res.EnclaveID, 5000)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo: %q %v", buf, err)
	}
	c.Close()

	tr, err := d.Terminate(ctx, "echo")
	if err != nil || !tr.Terminated || tr.EnclaveID != res.EnclaveID {
		t.Fatalf("terminate: %+v %v", tr, err)
	}
	all := d.Describe(true)
	var found bool
	for _, e := range all {
		if e.EnclaveID == res.EnclaveID {
			found = true
			if e.State != parent.StateExited || e.ExitStatus == nil || e.ExitStatus.Reason != "terminated" {
				t.Errorf("terminated enclave: %+v", e)
			}
		}
	}
	if !found {
		t.Error("terminated enclave not listed with all=true")
	}
	// Its CPU went back to the pool.
	if _, free, _, _ := d.pool.snapshot(); len(free) == 0 {
		t.Error("no free CPU after terminate")
	}
	// The kept console log survives the enclave.
	b, err := os.ReadFile(backend.Dir(filepath.Join(state, "enclaves", strings.SplitN(res.EnclaveID, "-enc", 2)[1])).Console())
	if err != nil || !strings.Contains(string(b), "echo service ready") {
		t.Errorf("console log %q, %v", b, err)
	}
}

func hexOf(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

func TestRunValidation(t *testing.T) {
	state := shortTempDir(t)
	d := newTestDaemon(t, state, Config{MemoryMiB: 256})
	big := writeTestEIF(t, state, "big", make([]byte, 40<<20))
	small := writeTestEIF(t, state, "small", []byte("x"))
	ctx := context.Background()
	tests := []struct {
		name string
		req  parent.RunRequest
		code string
		kind error
	}{
		{"no eif", parent.RunRequest{MemoryMiB: 64, CPUCount: 1}, "E01", parent.ErrInvalidArgument},
		{"both cpu forms", parent.RunRequest{EIFPath: small, MemoryMiB: 64, CPUCount: 1, CPUIDs: []int{0}}, "E02", parent.ErrInvalidArgument},
		{"no cpus", parent.RunRequest{EIFPath: small, MemoryMiB: 64}, "E01", parent.ErrInvalidArgument},
		{"memory below 4x image", parent.RunRequest{EIFPath: big, MemoryMiB: 100, CPUCount: 1}, "E26", parent.ErrInvalidArgument},
		{"memory over budget", parent.RunRequest{EIFPath: small, MemoryMiB: 512, CPUCount: 1}, "E27", parent.ErrResources},
		{"too many cpus", parent.RunRequest{EIFPath: small, MemoryMiB: 64, CPUCount: 64}, "E22", parent.ErrResources},
		{"cpu outside pool", parent.RunRequest{EIFPath: small, MemoryMiB: 64, CPUIDs: []int{4000}}, "E21", parent.ErrResources},
		{"cpu twice", parent.RunRequest{EIFPath: small, MemoryMiB: 64, CPUIDs: []int{0, 0}}, "E20", parent.ErrInvalidArgument},
		{"cid reserved", parent.RunRequest{EIFPath: small, MemoryMiB: 64, CPUCount: 1, EnclaveCID: 3}, "E03", parent.ErrInvalidArgument},
		{"cid too large", parent.RunRequest{EIFPath: small, MemoryMiB: 64, CPUCount: 1, EnclaveCID: 1 << 32}, "E03", parent.ErrInvalidArgument},
		{"not an eif", parent.RunRequest{EIFPath: "/etc/hostname", MemoryMiB: 64, CPUCount: 1}, "E35", parent.ErrInvalidArgument},
		{"missing file", parent.RunRequest{EIFPath: filepath.Join(state, "nope.eif"), MemoryMiB: 64, CPUCount: 1}, "E19", parent.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := d.Run(ctx, tt.req)
			var de *parent.Error
			if !errors.As(err, &de) || de.Code != tt.code || !errors.Is(err, tt.kind) {
				t.Fatalf("Run = %v, want code %s class %v", err, tt.code, tt.kind)
			}
		})
	}
	// Nothing was leaked by the failures.
	if _, free, total, freeMem := d.pool.snapshot(); freeMem != total || len(free) != len(d.pool.cpus) {
		t.Errorf("pool not intact after failed launches: free=%v freeMem=%d", free, freeMem)
	}
}

// TestRunEgress: an enclave's own egress allowlist is checked at launch
// against the daemon's (it can only narrow it), kept in record.json and
// monitor.json, and described.
func TestRunEgress(t *testing.T) {
	state := shortTempDir(t)
	allow := filepath.Join(state, "allow.yaml")
	if err := os.WriteFile(allow, []byte("allowlist:\n- {address: 10.0.0.0/8, port: 5432}\n- {address: kms.example, port: 443}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d := newTestDaemon(t, state, Config{Egress: EgressConfig{Allowlist: allow}})
	eifPath := writeTestEIF(t, state, "egress", []byte("x"))
	ctx := context.Background()
	own := func(entries ...parent.EgressEntry) *parent.EgressPolicy {
		return &parent.EgressPolicy{Allowlist: entries}
	}
	many := make([]parent.EgressEntry, parent.MaxEgressEntries+1)
	for i := range many {
		many[i] = parent.EgressEntry{Address: "10.0.0.1", Port: 5432}
	}
	for _, tt := range []struct {
		name    string
		egress  *parent.EgressPolicy
		message string // in the refusal
	}{
		{"outside", own(parent.EgressEntry{Address: "10.0.0.5", Port: 5432}, parent.EgressEntry{Address: "evil.example", Port: 443}),
			"egress allowlist entry evil.example:443 is not within the daemon's egress allowlist"},
		{"wider prefix", own(parent.EgressEntry{Address: "10.0.0.0/7", Port: 5432}), "10.0.0.0/7:5432 is not within"},
		{"other port", own(parent.EgressEntry{Address: "kms.example", Port: 80}, parent.EgressEntry{Address: "10.0.0.5", Port: 80}),
			"entries kms.example:80, 10.0.0.5:80 are not within"},
		{"invalid", own(parent.EgressEntry{Address: "0.0.0.0", Port: 443}), "the enclave's egress allowlist is invalid"},
		{"too many", &parent.EgressPolicy{Allowlist: many}, "at most 256"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := d.Run(ctx, parent.RunRequest{EIFPath: eifPath, MemoryMiB: 64, CPUCount: 1, Egress: tt.egress})
			var de *parent.Error
			if !errors.As(err, &de) || de.Code != "E03" || !errors.Is(err, parent.ErrInvalidArgument) || !strings.Contains(err.Error(), tt.message) {
				t.Fatalf("Run = %v, want an invalid-argument error saying %q", err, tt.message)
			}
			if strings.Contains(err.Error(), allow) || strings.Contains(err.Error(), "10.0.0.0/8") {
				t.Errorf("Run = %v: the refusal tells the daemon's allowlist (its path or entries)", err)
			}
		})
	}
	if list := d.Describe(true); len(list) != 0 {
		t.Fatalf("refused launches left enclaves: %+v", list)
	}

	want := own(parent.EgressEntry{Address: "10.0.0.5", Port: 5432}, parent.EgressEntry{Address: "KMS.example.", Port: 443})
	res, err := d.Run(ctx, parent.RunRequest{EIFPath: eifPath, MemoryMiB: 64, CPUCount: 1, Egress: want})
	if err != nil {
		t.Fatal(err)
	}
	desc, err := d.DescribeOne(res.EnclaveID)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, desc.Egress); diff != "" {
		t.Errorf("described egress (-want +got):\n%s", diff)
	}
	e, err := d.lookup(res.EnclaveID)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := readRecord(e.dir)
	if err != nil {
		t.Fatal(err)
	}
	ms, err := readMonitorSpec(e.dir)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]*parent.EgressPolicy{want, want}, []*parent.EgressPolicy{rec.Egress, ms.Egress}); diff != "" {
		t.Errorf("record.json, monitor.json egress (-want +got):\n%s", diff)
	}
}

// TestRunEgressWithoutDaemonAllowlist: a daemon without an egress
// allowlist allows nothing, so an enclave's own list can hold no entry.
func TestRunEgressWithoutDaemonAllowlist(t *testing.T) {
	state := shortTempDir(t)
	d := newTestDaemon(t, state, Config{})
	eifPath := writeTestEIF(t, state, "egress", []byte("x"))
	_, err := d.Run(context.Background(), parent.RunRequest{EIFPath: eifPath, MemoryMiB: 64, CPUCount: 1,
		Egress: &parent.EgressPolicy{Allowlist: []parent.EgressEntry{{Address: "10.0.0.5", Port: 5432}}}})
	if !errors.Is(err, parent.ErrInvalidArgument) || !strings.Contains(err.Error(), "the daemon has none") {
		t.Fatalf("Run = %v, want an invalid-argument error", err)
	}
	// An empty own list narrows nothing away that was allowed: it runs.
	if _, err := d.Run(context.Background(), parent.RunRequest{EIFPath: eifPath, MemoryMiB: 64, CPUCount: 1,
		Egress: &parent.EgressPolicy{}}); err != nil {
		t.Fatal(err)
	}
}

func TestNameAndCIDConflicts(t *testing.T) {
	state := shortTempDir(t)
	d := newTestDaemon(t, state, Config{})
	p := writeTestEIF(t, state, "app", []byte("x"))
	ctx := context.Background()
	if _, err := d.Run(ctx, parent.RunRequest{EIFPath: p, MemoryMiB: 64, CPUCount: 1, EnclaveName: "a", EnclaveCID: 100}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Run(ctx, parent.RunRequest{EIFPath: p, MemoryMiB: 64, CPUCount: 1, EnclaveName: "a"}); !errors.Is(err, parent.ErrConflict) {
		t.Errorf("duplicate name: %v", err)
	}
	if _, err := d.Run(ctx, parent.RunRequest{EIFPath: p, MemoryMiB: 64, CPUCount: 1, EnclaveCID: 100}); !errors.Is(err, parent.ErrConflict) {
		t.Errorf("duplicate CID: %v", err)
	}
}

func TestHeartbeatTimeoutCleansUp(t *testing.T) {
	state := shortTempDir(t)
	d := newTestDaemon(t, state, Config{HeartbeatTimeout: 500 * time.Millisecond})
	p := writeTestEIF(t, state, "silent", []byte("x"))
	_, err := d.Run(context.Background(), parent.RunRequest{EIFPath: p, MemoryMiB: 64, CPUCount: 1})
	var de *parent.Error
	if !errors.As(err, &de) || de.Code != "E36" || !strings.Contains(err.Error(), "no boot heartbeat") {
		t.Fatalf("Run = %v, want E36 heartbeat timeout", err)
	}
	if len(d.Describe(true)) != 0 {
		t.Errorf("failed launch left a record: %+v", d.Describe(true))
	}
	ents, _ := os.ReadDir(filepath.Join(state, "enclaves"))
	if len(ents) != 0 {
		t.Errorf("failed launch left %d directories", len(ents))
	}
	if _, free, total, freeMem := d.pool.snapshot(); freeMem != total || len(free) != len(d.pool.cpus) {
		t.Errorf("pool not returned: free=%v", free)
	}
}

func TestCrashReported(t *testing.T) {
	state := shortTempDir(t)
	d := newTestDaemon(t, state, Config{})
	p := writeTestEIF(t, state, "crash-7", []byte("x"))
	res, err := d.Run(context.Background(), parent.RunRequest{EIFPath: p, MemoryMiB: 64, CPUCount: 1})
	if err != nil {
		// It booted (heartbeat) before crashing: that is a successful launch.
		t.Fatalf("Run = %v", err)
	}
	e, _ := d.lookup(res.EnclaveID)
	select {
	case <-e.done:
	case <-time.After(30 * time.Second):
		t.Fatal("crash not detected")
	}
	desc, _ := d.DescribeOne(res.EnclaveID)
	if desc.State != parent.StateExited || desc.ExitStatus == nil || desc.ExitStatus.Code != 7 {
		t.Fatalf("crashed enclave: %+v", desc)
	}
}

func TestRestartFindsRunningEnclaves(t *testing.T) {
	state := shortTempDir(t)
	p := writeTestEIF(t, state, "svc", []byte("x"))
	cfg := Config{StateDir: state, Socket: filepath.Join(state, "api.sock"), CPUPool: "0", MemoryMiB: 512, HeartbeatTimeout: 20 * time.Second}
	opts := Options{Backend: fakeBackend{}, MonitorCommand: monitorCommand, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	d1, err := New(context.Background(), cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	res, err := d1.Run(context.Background(), parent.RunRequest{EIFPath: p, MemoryMiB: 64, CPUCount: 1})
	if err != nil {
		t.Fatal(err)
	}
	d1.Close()

	d2, err := New(context.Background(), cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	desc, err := d2.DescribeOne(res.EnclaveID)
	if err != nil || desc.State != parent.StateRunning {
		t.Fatalf("after restart: %+v %v", desc, err)
	}
	// Its CPU is still taken.
	if _, err := d2.Run(context.Background(), parent.RunRequest{EIFPath: p, MemoryMiB: 64, CPUCount: 1}); !errors.Is(err, parent.ErrResources) {
		t.Errorf("pool after restart: %v", err)
	}
	// The enclave still answers.
	c, err := d2.Dial(context.Background(), res.EnclaveID, 5000)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()

	// Killing the monitor is detected and cleaned up.
	if err := syscall.Kill(desc.ProcessID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	e, _ := d2.lookup(res.EnclaveID)
	select {
	case <-e.done:
	case <-time.After(30 * time.Second):
		t.Fatal("lost monitor not detected")
	}
	desc, _ = d2.DescribeOne(res.EnclaveID)
	if desc.ExitStatus == nil || !strings.Contains(desc.ExitStatus.Reason, "lost") {
		t.Errorf("exit after killing the monitor: %+v", desc.ExitStatus)
	}
}

func TestAPI(t *testing.T) {
	state := shortTempDir(t)
	d := newTestDaemon(t, state, Config{})
	srv := httptest.NewUnstartedServer(d.Handler())
	l, err := ListenSocket(filepath.Join(state, "api.sock"), "no-such-group-hopefully")
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(filepath.Join(state, "api.sock"))
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want 0600 without the group", fi.Mode().Perm())
	}
	srv.Listener = l
	srv.Start()
	defer srv.Close()
	c := parent.NewClient(filepath.Join(state, "api.sock"))
	ctx := context.Background()
	p := writeTestEIF(t, state, "apitest", []byte("x"))
	res, err := c.Run(ctx, parent.RunRequest{EIFPath: p, MemoryMiB: 64, CPUCount: 1})
	if err != nil {
		t.Fatal(err)
	}
	list, err := c.Describe(ctx, false)
	if err != nil || len(list) != 1 || list[0].EnclaveID != res.EnclaveID {
		t.Fatalf("describe: %+v %v", list, err)
	}
	conn, err := c.Connect(ctx, "apitest", 5000)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = conn.Write([]byte("hi"))
	b := make([]byte, 2)
	if _, err := io.ReadFull(conn, b); err != nil || string(b) != "hi" {
		t.Fatalf("connect echo %q %v", b, err)
	}
	conn.Close()
	var sb strings.Builder
	if err := c.Console(ctx, res.EnclaveID, false, 0, &sb); err != nil || !strings.Contains(sb.String(), "fake init: starting") {
		t.Errorf("console %q %v", sb.String(), err)
	}
	_, err = c.Run(ctx, parent.RunRequest{EIFPath: p, MemoryMiB: 1 << 20, CPUCount: 1})
	var ae *parent.Error
	if !errors.As(err, &ae) || ae.Code != "E27" || ae.Status != http.StatusConflict || !errors.Is(err, parent.ErrResources) {
		t.Errorf("over-budget run via API: %v", err)
	}
	if err.Error() != "[E27] "+ae.Msg {
		t.Errorf("client-side message %q is not the daemon's [Exx] message", err)
	}
	if _, err := c.Terminate(ctx, "nope"); !errors.As(err, &ae) || ae.Status != http.StatusNotFound || !errors.Is(err, parent.ErrNotFound) {
		t.Errorf("terminate unknown: %v", err)
	}
	if _, err := c.Run(ctx, parent.RunRequest{MemoryMiB: 64, CPUCount: 1}); !errors.Is(err, parent.ErrInvalidArgument) || errors.Is(err, parent.ErrNotFound) {
		t.Errorf("run without an image via API: %v is not (only) an invalid argument", err)
	}
	pem, err := c.DevRootPEM(ctx)
	if err != nil || !strings.Contains(string(pem), "BEGIN CERTIFICATE") {
		t.Errorf("devroot: %q %v", pem, err)
	}
	if _, err := c.TerminateAll(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestClientUnreachable(t *testing.T) {
	_, err := parent.NewClient(filepath.Join(t.TempDir(), "none.sock")).Info(context.Background())
	if !errors.Is(err, parent.ErrDaemonUnreachable) {
		t.Fatalf("Info = %v, want ErrDaemonUnreachable", err)
	}
}
