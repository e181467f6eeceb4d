// Package parenttest builds Cloister's real binaries and drives a real
// daemon for end-to-end tests (e2e and the examples): it builds
// cloister, cloister-monitor, cloister-init and test programs, builds enclave images with the
// build-enclave command, and starts `cloister daemon` as a child process
// with a private state directory and socket. Everything needs root; tests
// use internal/testenv so a missing prerequisite fails under CI=true.
package parenttest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cloister/cloister/internal/testenv"
	"github.com/cloister/cloister/parent"
)

// bins are the binaries built once per test binary.
var bins struct {
	once                    sync.Once
	err                     error
	dir                     string
	cloister, monitor, init string
}

// RepoRoot is the module root: the nearest parent directory of the
// working directory that holds go.mod.
func RepoRoot() string {
	wd, _ := os.Getwd()
	for d := wd; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
		if filepath.Dir(d) == d {
			return wd
		}
	}
}

// Cloister returns the path of the built cloister binary.
func Cloister(t testing.TB) string { buildBinaries(t); return bins.cloister }

// Monitor returns the path of the built cloister-monitor binary (next to
// Cloister, where the daemon finds it).
func Monitor(t testing.TB) string { buildBinaries(t); return bins.monitor }

// Init returns the path of the built (static) cloister-init binary.
func Init(t testing.TB) string { buildBinaries(t); return bins.init }

// Cleanup removes the built binaries; call it from TestMain after m.Run.
func Cleanup() {
	if bins.dir != "" {
		os.RemoveAll(bins.dir)
	}
}

// BuildProgram builds the Go package pkg (a path relative to the module
// root, e.g. "./examples/hello/enclave") into dir as a static binary and
// returns its path.
func BuildProgram(t testing.TB, dir, name, pkg string) string {
	t.Helper()
	out := filepath.Join(dir, name)
	if err := goBuild(out, pkg, true); err != nil {
		t.Fatal(err)
	}
	return out
}

func goBuild(out, pkg string, static bool) error {
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = RepoRoot()
	cmd.Env = os.Environ()
	if static {
		cmd.Env = append(cmd.Env, "CGO_ENABLED=0")
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
	}
	return nil
}

func buildBinaries(t testing.TB) {
	t.Helper()
	bins.once.Do(func() {
		bins.dir, bins.err = os.MkdirTemp("", "cloister-e2e-bin")
		if bins.err != nil {
			return
		}
		bins.cloister = filepath.Join(bins.dir, "cloister")
		bins.monitor = filepath.Join(bins.dir, "cloister-monitor")
		bins.init = filepath.Join(bins.dir, "cloister-init")
		// Everything is built without cgo, as the Debian package is.
		if bins.err = goBuild(bins.cloister, "./cmd/cloister", true); bins.err != nil {
			return
		}
		if bins.err = goBuild(bins.monitor, "./cmd/cloister-monitor", true); bins.err != nil {
			return
		}
		bins.err = goBuild(bins.init, "./cmd/cloister-init", true)
	})
	if bins.err != nil {
		t.Fatal(bins.err)
	}
}

// ShortTemp returns a temporary directory with a short path (Unix socket
// paths are limited to 108 bytes).
func ShortTemp(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "ce")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// Image describes an enclave image to build.
type Image struct {
	// Name is the image's file name without ".eif".
	Name string
	// RootFS, when set, is a directory copied first as the root filesystem
	// (for example [PythonRootFS]).
	RootFS string
	// Files maps paths inside the root filesystem to host files copied
	// there (mode 0755), e.g. {"bin/app": built}.
	Files map[string]string
	// Cmd is the command line (the first element is the program).
	Cmd []string
	// Extra are further build-enclave flags (e.g. --kernel …).
	Extra []string
}

// BuildImage builds an EIF through the real build-enclave command, in dir,
// and returns its path. SOURCE_DATE_EPOCH is fixed, so the same inputs
// give the same image.
func BuildImage(t testing.TB, dir string, img Image) string {
	t.Helper()
	buildBinaries(t)
	rootfs := filepath.Join(dir, img.Name+"-rootfs")
	if img.RootFS != "" {
		if err := copyTree(img.RootFS, rootfs); err != nil {
			t.Fatal(err)
		}
	}
	for dst, src := range img.Files {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(rootfs, dst)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(dir, img.Name+".eif")
	cmdArgs := []string{"build-enclave", "--rootfs", rootfs, "--init", bins.init, "--output-file", out}
	for _, a := range img.Cmd {
		cmdArgs = append(cmdArgs, "--cmd="+a)
	}
	extraArgs := img.Extra
	cmdArgs = append(cmdArgs, extraArgs...)
	cmd := exec.Command(bins.cloister, cmdArgs...)
	cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=1700000000")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build-enclave: %v\n%s", err, b)
	}
	return out
}

// Daemon is a cloister daemon running as a child process.
type Daemon struct {
	t        testing.TB
	State    string
	Socket   string
	config   string
	backend  string
	bin      string // the cloister binary Start runs
	opts     DaemonOptions
	cmd      *exec.Cmd
	log      *testenv.SyncBuffer
	Client   *parent.Client
	waitDone chan struct{}
}

// DaemonOptions change how [StartDaemonWith] runs the daemon.
type DaemonOptions struct {
	// Args are further daemon flags (e.g. --metrics-addr …).
	Args []string
	// Env is added to the daemon's environment.
	Env []string
	// Wrapper runs the daemon through another command, which gets the
	// daemon's command line as its last arguments (e.g. a shell that
	// first moves itself into a cgroup, then execs "$@").
	Wrapper []string
}

// Log returns what the daemon has logged so far.
func (d *Daemon) Log() string { return d.log.String() }

// StartDaemon starts `cloister daemon --backend backend` with the given
// YAML configuration, a private state directory and socket, and stops it
// (terminating its enclaves) when the test ends.
func StartDaemon(t testing.TB, backend, configYAML string) *Daemon {
	t.Helper()
	buildBinaries(t)
	return StartDaemonFrom(t, bins.cloister, backend, configYAML)
}

// StartDaemonWith is [StartDaemon] with options.
func StartDaemonWith(t testing.TB, backend, configYAML string, opts DaemonOptions) *Daemon {
	t.Helper()
	buildBinaries(t)
	return startDaemon(t, bins.cloister, backend, configYAML, opts)
}

// StartDaemonFrom is [StartDaemon] with the cloister binary at path (for
// example one built by [BuildCloisterAt]); [Daemon.UseBinary] changes the
// binary later starts run.
func StartDaemonFrom(t testing.TB, binary, backend, configYAML string) *Daemon {
	t.Helper()
	return startDaemon(t, binary, backend, configYAML, DaemonOptions{})
}

func startDaemon(t testing.TB, binary, backend, configYAML string, opts DaemonOptions) *Daemon {
	t.Helper()
	testenv.RequireRoot(t)
	buildBinaries(t)
	dir := ShortTemp(t)
	d := &Daemon{t: t, State: filepath.Join(dir, "state"), Socket: filepath.Join(dir, "d.sock"),
		config: filepath.Join(dir, "daemon.yaml"), backend: backend, bin: binary, opts: opts}
	if err := os.WriteFile(d.config, []byte(configYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	d.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if _, err := d.Client.TerminateAll(ctx); err != nil {
			t.Logf("terminate all: %v", err)
		}
		d.Stop(syscall.SIGTERM)
		// Every enclave ended, so every monitor must have exited.
		deadline := time.Now().Add(10 * time.Second)
		for len(d.Monitors()) > 0 && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if left := d.Monitors(); len(left) > 0 {
			t.Errorf("monitor processes left running after every enclave ended: %v", left)
			for _, pid := range left {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.Log())
		}
	})
	return d
}

// Start starts (or restarts) the daemon process and waits for its API.
func (d *Daemon) Start() {
	d.t.Helper()
	d.log = &testenv.SyncBuffer{}
	args := append([]string{d.bin, "daemon", "--backend", d.backend, "--config", d.config,
		"--state-dir", d.State, "--socket", d.Socket}, d.opts.Args...)
	args = append(append([]string(nil), d.opts.Wrapper...), args...)
	d.cmd = exec.Command(args[0], args[1:]...)
	d.cmd.Env = append(os.Environ(), d.opts.Env...)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	d.waitDone = make(chan struct{})
	go func() { _ = d.cmd.Wait(); close(d.waitDone) }()
	d.Client = parent.NewClient(d.Socket)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := d.Client.Info(context.Background()); err == nil {
			return
		}
		select {
		case <-d.waitDone:
			d.t.Fatalf("daemon exited:\n%s", d.Log())
		default:
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("daemon did not come up:\n%s", d.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// UseBinary makes the next [Daemon.Start] run the cloister binary at path
// on the same state directory, socket and configuration (an upgrade).
func (d *Daemon) UseBinary(path string) { d.bin = path }

// BuildCloisterAt builds cmd/cloister as it is at commit of the
// repository holding the module (extracted with git archive into a
// temporary directory) and returns the binary's path. It needs git and go.
func BuildCloisterAt(t testing.TB, commit string) string {
	t.Helper()
	git := testenv.LookPath(t, "git", "apt-get install -y git")
	tar := testenv.LookPath(t, "tar", "apt-get install -y tar")
	gobin := testenv.LookPath(t, "go", "install Go from https://go.dev/dl/")
	src := ShortTemp(t)
	archive := filepath.Join(src, "src.tar")
	run := func(dir, name string, args ...string) {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Dir = dir
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, b)
		}
	}
	run(RepoRoot(), git, "archive", "--format=tar", "-o", archive, commit)
	tree := filepath.Join(src, "tree")
	if err := os.Mkdir(tree, 0o755); err != nil {
		t.Fatal(err)
	}
	run(tree, tar, "-xf", archive)
	out := filepath.Join(src, "cloister")
	run(tree, gobin, "build", "-o", out, "./cmd/cloister")
	return out
}

// Stop sends sig to the daemon and waits for it to exit (enclaves keep
// running under their monitors).
func (d *Daemon) Stop(sig syscall.Signal) {
	if d.cmd.Process == nil {
		return
	}
	_ = d.cmd.Process.Signal(sig)
	select {
	case <-d.waitDone:
	case <-time.After(20 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.waitDone
	}
}

// Run launches an enclave with one CPU and fails the test on error.
func (d *Daemon) Run(eif string, memMiB int, debug bool) parent.RunResult {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := d.Client.Run(ctx, parent.RunRequest{EIFPath: eif, MemoryMiB: memMiB, CPUCount: 1, DebugMode: debug})
	if err != nil {
		d.t.Fatalf("run-enclave %s: %v\ndaemon log:\n%s", filepath.Base(eif), err, d.Log())
	}
	return res
}

// ConsoleUntil reads the enclave's console until it contains want or the
// enclave ends (follow), and returns it.
func (d *Daemon) ConsoleUntil(id, want string, timeout time.Duration) string {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var sb strings.Builder
		if err := d.Client.Console(context.Background(), id, false, 0, &sb); err != nil {
			d.t.Fatalf("console: %v", err)
		}
		if strings.Contains(sb.String(), want) {
			return sb.String()
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("console of %s never showed %q; it has:\n%s", id, want, sb.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// WaitExit waits until the enclave is listed as EXITED and returns it.
func (d *Daemon) WaitExit(id string, timeout time.Duration) parent.EnclaveDescription {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		desc, err := d.Client.DescribeEnclave(context.Background(), id)
		if err != nil {
			d.t.Fatalf("describe %s: %v", id, err)
		}
		if desc.State == parent.StateExited {
			return desc
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("enclave %s still %s", id, desc.State)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// CLI runs the built cloister binary with args and returns its combined output.
func CLI(t testing.TB, args ...string) (string, error) {
	t.Helper()
	buildBinaries(t)
	b, err := exec.Command(bins.cloister, args...).CombinedOutput()
	return string(b), err
}

// Monitors returns the pids of the monitor processes of this daemon's
// enclaves that are still running.
func (d *Daemon) Monitors() []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) < 3 || args[1] != "__monitor" {
			continue
		}
		cwd, _ := os.Readlink(filepath.Join("/proc", e.Name(), "cwd"))
		mine := false
		for _, a := range append(args[2:], cwd) {
			if strings.HasPrefix(a, d.State+string(filepath.Separator)) {
				mine = true // its enclave directory, or a spare's root
			}
		}
		if mine {
			if st, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat")); err == nil && strings.Contains(string(st), ") Z ") {
				continue // a zombie waiting for its parent is gone for our purposes
			}
			pids = append(pids, pid)
		}
	}
	return pids
}

// EnclaveDir returns the private directory of the enclave id
// (<state>/enclaves/<slot>, the slot being the part after "-enc").
func (d *Daemon) EnclaveDir(id string) string {
	_, slot, ok := strings.Cut(id, "-enc")
	if !ok {
		d.t.Fatalf("enclave id %q has no -enc suffix", id)
	}
	return filepath.Join(d.State, "enclaves", slot)
}

// MonitorStats decodes the GET /stats answer of the monitor of enclave id
// (its control socket monitor.sock) into v.
func (d *Daemon) MonitorStats(id string, v any) {
	d.t.Helper()
	sock := filepath.Join(d.EnclaveDir(id), "monitor.sock")
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, "unix", sock)
	}}, Timeout: 10 * time.Second}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("http://monitor/stats")
	if err != nil {
		d.t.Fatalf("monitor stats of %s: %v", id, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		d.t.Fatalf("monitor stats of %s: %s %v: %s", id, resp.Status, err, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		d.t.Fatalf("monitor stats of %s: %v: %s", id, err, b)
	}
}

// CPUTime is the processor time the daemon used so far, with that of its
// exited and reaped children (monitors, and through them the enclaves'
// processes): utime+stime+cutime+cstime of /proc/PID/stat, in clock ticks
// (10 ms). A benchmark divides its growth by the launches it made.
func (d *Daemon) CPUTime() time.Duration {
	d.t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", d.cmd.Process.Pid))
	if err != nil {
		d.t.Fatalf("daemon cpu time: %v", err)
	}
	// The fields after the command name, which may hold spaces, in parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		d.t.Fatalf("daemon cpu time: malformed /proc/%d/stat", d.cmd.Process.Pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 15 {
		d.t.Fatalf("daemon cpu time: /proc/%d/stat has %d fields after the name", d.cmd.Process.Pid, len(f))
	}
	var ticks int64
	for _, i := range []int{11, 12, 13, 14} { // utime stime cutime cstime (fields 14-17)
		n, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			d.t.Fatalf("daemon cpu time: %v", err)
		}
		ticks += n
	}
	const hz = 100 // USER_HZ on Linux
	return time.Duration(ticks) * time.Second / hz
}
