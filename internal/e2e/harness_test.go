package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cloister/cloister/internal/testenv"
	"github.com/cloister/cloister/parent"
)

// bins are the binaries built once for the whole test run.
var bins struct {
	once                     sync.Once
	err                      error
	dir                      string
	cloister, init, enclapp string
}

// repoRoot is the module root, two levels above this package.
func repoRoot() string {
	wd, _ := os.Getwd()
	return filepath.Clean(filepath.Join(wd, "..", ".."))
}

func buildBinaries(t testing.TB) {
	t.Helper()
	bins.once.Do(func() {
		bins.dir, bins.err = os.MkdirTemp("", "cloister-e2e-bin")
		if bins.err != nil {
			return
		}
		build := func(out, pkg string, static bool) error {
			cmd := exec.Command("go", "build", "-o", out, pkg)
			cmd.Dir = repoRoot()
			cmd.Env = os.Environ()
			if static {
				cmd.Env = append(cmd.Env, "CGO_ENABLED=0")
			}
			if b, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
			}
			return nil
		}
		bins.cloister = filepath.Join(bins.dir, "cloister")
		bins.init = filepath.Join(bins.dir, "cloister-init")
		bins.enclapp = filepath.Join(bins.dir, "enclaveapp")
		for _, b := range []struct {
			out, pkg string
			static   bool
		}{
			{bins.cloister, "./cmd/cloister", false},
			{bins.init, "./cmd/cloister-init", true},
			{bins.enclapp, "./internal/e2e/testdata/enclaveapp", true},
		} {
			if bins.err = build(b.out, b.pkg, b.static); bins.err != nil {
				return
			}
		}
	})
	if bins.err != nil {
		t.Fatal(bins.err)
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	if bins.dir != "" {
		os.RemoveAll(bins.dir)
	}
	os.Exit(code)
}

// shortTemp returns a temporary directory with a short path (Unix socket
// paths are limited to 108 bytes).
func shortTemp(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "ce")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// buildImage builds an EIF whose application is enclaveapp with args,
// through the real build-enclave command. extra files are added to the
// root filesystem (path → content) so different images differ.
func buildImage(t testing.TB, dir, name string, extraArgs []string, args ...string) string {
	t.Helper()
	rootfs := filepath.Join(dir, name+"-rootfs")
	if err := os.MkdirAll(filepath.Join(rootfs, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	app, err := os.ReadFile(bins.enclapp)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "bin", "enclaveapp"), app, 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, name+".eif")
	cmdArgs := []string{"build-enclave", "--rootfs", rootfs, "--init", bins.init, "--output-file", out, "--cmd", "/bin/enclaveapp"}
	for _, a := range args {
		cmdArgs = append(cmdArgs, "--cmd="+a)
	}
	cmdArgs = append(cmdArgs, extraArgs...)
	cmd := exec.Command(bins.cloister, cmdArgs...)
	cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=1700000000")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build-enclave: %v\n%s", err, b)
	}
	return out
}

// daemonProc is a cloister daemon running as a child process.
type daemonProc struct {
	t        testing.TB
	state    string
	socket   string
	config   string
	backend  string
	cmd      *exec.Cmd
	log      *bytes.Buffer
	client   *parent.Client
	waitDone chan struct{}
}

// startDaemon starts the daemon with the given YAML configuration.
func startDaemon(t testing.TB, backend, configYAML string) *daemonProc {
	t.Helper()
	testenv.RequireRoot(t)
	buildBinaries(t)
	dir := shortTemp(t)
	d := &daemonProc{t: t, state: filepath.Join(dir, "state"), socket: filepath.Join(dir, "d.sock"),
		config: filepath.Join(dir, "daemon.yaml"), backend: backend}
	if err := os.WriteFile(d.config, []byte(configYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	d.start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if _, err := d.client.TerminateAll(ctx); err != nil {
			t.Logf("terminate all: %v", err)
		}
		d.stop(syscall.SIGTERM)
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.log.String())
		}
	})
	return d
}

func (d *daemonProc) start() {
	d.t.Helper()
	d.log = &bytes.Buffer{}
	d.cmd = exec.Command(bins.cloister, "daemon", "--backend", d.backend, "--config", d.config,
		"--state-dir", d.state, "--socket", d.socket)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	d.waitDone = make(chan struct{})
	go func() { _ = d.cmd.Wait(); close(d.waitDone) }()
	d.client = parent.NewClient(d.socket)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := d.client.Info(context.Background()); err == nil {
			return
		}
		select {
		case <-d.waitDone:
			d.t.Fatalf("daemon exited:\n%s", d.log.String())
		default:
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("daemon did not come up:\n%s", d.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (d *daemonProc) stop(sig syscall.Signal) {
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

// run launches an enclave and fails the test on error.
func (d *daemonProc) run(eif string, memMiB int, debug bool) parent.RunResult {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := d.client.Run(ctx, parent.RunRequest{EIFPath: eif, MemoryMiB: memMiB, CPUCount: 1, DebugMode: debug})
	if err != nil {
		d.t.Fatalf("run-enclave %s: %v\ndaemon log:\n%s", filepath.Base(eif), err, d.log.String())
	}
	return res
}

// consoleUntil reads the enclave's console until it contains want or the
// enclave ends (follow), and returns it.
func (d *daemonProc) consoleUntil(id, want string, timeout time.Duration) string {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var sb strings.Builder
		if err := d.client.Console(context.Background(), id, false, 0, &sb); err != nil {
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

// waitExit waits until the enclave is listed as EXITED and returns it.
func (d *daemonProc) waitExit(id string, timeout time.Duration) parent.EnclaveDescription {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		desc, err := d.client.DescribeEnclave(context.Background(), id)
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
