//go:build linux

package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/internal/cpio"
	"github.com/cloister/cloister/internal/testenv"
	"github.com/cloister/cloister/parent/backend"
)

func TestMain(m *testing.M) {
	if IsChild() {
		ChildMain()
	}
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	removeTestCgroupParent()
	os.Exit(code)
}

// testCgroupParent keeps this test binary's groups apart from a daemon's.
var testCgroupParent = fmt.Sprintf("cloister-test-%d", os.Getpid())

func removeTestCgroupParent() {
	for _, c := range []string{"memory", "cpuset", "pids", "devices", "freezer", "cpu", ""} {
		_ = syscall.Rmdir(filepath.Join("/sys/fs/cgroup", c, testCgroupParent))
	}
}

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds cmd/cloister-init and testdata/attack statically, once
// per test binary, and returns their directory.
func binaries(t testing.TB) string {
	t.Helper()
	gobin := testenv.LookPath(t, "go", "install Go and put it on PATH")
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "cloister-sandbox-bin-")
		if buildErr != nil {
			return
		}
		for name, pkg := range map[string]string{
			"init":       "github.com/cloister/cloister/cmd/cloister-init",
			"attack":     "github.com/cloister/cloister/parent/sandbox/testdata/attack",
			"vsockprobe": "github.com/cloister/cloister/parent/sandbox/testdata/vsockprobe",
			"nsmprobe":   "github.com/cloister/cloister/e2e/testdata/nsmprobe",
		} {
			cmd := exec.Command(gobin, "build", "-trimpath", "-o", filepath.Join(binDir, name), pkg)
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

// writeCpio writes files into a newc archive at path.
func writeCpio(t testing.TB, path string, files []cpio.File) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w := cpio.NewWriter(f)
	if err := cpio.WriteFiles(w, files, cpio.FilesOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func diskFile(t testing.TB, archivePath, disk string, mode uint32) cpio.File {
	t.Helper()
	fi, err := os.Stat(disk)
	if err != nil {
		t.Fatal(err)
	}
	return cpio.File{Path: archivePath, Mode: cpio.TypeReg | mode, Size: fi.Size(),
		Open: func() (io.ReadCloser, error) { return os.Open(disk) }}
}

func dataFile(archivePath, content string) cpio.File {
	return cpio.File{Path: archivePath, Mode: cpio.TypeReg | 0o644, Size: int64(len(content)),
		Open: func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(content)), nil }}
}

func dir(archivePath string) cpio.File {
	return cpio.File{Path: archivePath, Mode: cpio.TypeDir | 0o755}
}

// images returns the bootstrap ramdisk (the real cloister-init) and a
// customer ramdisk holding /bin/attack, built once per test binary.
func images(t testing.TB) (bootstrap, customer string) {
	t.Helper()
	bin := binaries(t)
	bootstrap, customer = filepath.Join(bin, "bootstrap.cpio"), filepath.Join(bin, "customer.cpio")
	if _, err := os.Stat(customer); err == nil {
		return bootstrap, customer
	}
	writeCpio(t, bootstrap, []cpio.File{diskFile(t, "init", filepath.Join(bin, "init"), 0o755), dir("dev")})
	writeCpio(t, customer+".tmp", []cpio.File{
		dir("rootfs"), dir("rootfs/bin"), dir("rootfs/etc"), dir("rootfs/tmp"), dir("rootfs/proc"),
		diskFile(t, "rootfs/bin/attack", filepath.Join(bin, "attack"), 0o755),
		dataFile("rootfs/etc/hostname", "enclave\n"),
		dataFile("env", "GREETING=hi\n"),
	})
	if err := os.Rename(customer+".tmp", customer); err != nil {
		t.Fatal(err)
	}
	return bootstrap, customer
}

// vsockDir creates D with D/host (serving the boot heartbeat on
// vsock_9000, as the daemon does) and D/guest.
func vsockDir(t testing.TB) string {
	t.Helper()
	d := t.TempDir()
	for _, sub := range []string{"host", "guest"} {
		if err := os.Mkdir(filepath.Join(d, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	sock := filepath.Join(d, "host", "vsock_9000")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				b := make([]byte, 1)
				if _, err := c.Read(b); err == nil {
					_, _ = c.Write(b)
				}
			}()
		}
	}()
	return d
}

var runCounter atomic.Int64

type runOpts struct {
	memoryMiB, pidsMax int
}

// run starts the attack program in a sandbox with the given arguments as
// its cmd, waits for it, checks that nothing is left on the host, and
// returns the exit status, the RESULT lines and the whole console.
func run(t *testing.T, o runOpts, args ...string) (ExitStatus, map[string]string, string) {
	t.Helper()
	testenv.RequireRoot(t)
	bootstrap, customer := images(t)
	cmdRamdisk := filepath.Join(t.TempDir(), "cmd.cpio")
	writeCpio(t, cmdRamdisk, []cpio.File{dataFile("cmd", strings.Join(append([]string{"/bin/attack"}, args...), "\n")+"\n")})
	if o.memoryMiB == 0 {
		o.memoryMiB = 128
	}
	d := vsockDir(t)
	console := &testenv.SyncBuffer{}
	id := fmt.Sprintf("test-%d", runCounter.Add(1))
	spec := Spec{
		ID: id, CID: 5, Ramdisks: []string{bootstrap, customer, cmdRamdisk},
		MemoryMiB: o.memoryMiB, PidsMax: o.pidsMax, VsockDir: d, Console: console, CgroupParent: testCgroupParent,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p, err := Start(ctx, spec)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	hostUID := p.HostUID()
	done := make(chan struct{})
	go func() {
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			t.Errorf("sandbox still running after 60s; killing it")
			_ = p.Kill()
		}
	}()
	st, err := p.Wait()
	close(done)
	if err != nil {
		t.Fatalf("Wait: %v\nconsole:\n%s", err, console)
	}
	out := console.String()
	t.Logf("%v; console:\n%s", st, out)
	checkNoLeftovers(t, id, hostUID, d)
	results := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if kv, ok := strings.CutPrefix(line, "RESULT "); ok {
			k, v, _ := strings.Cut(kv, "=")
			results[k] = v
		}
	}
	return st, results, out
}

// checkNoLeftovers checks that the sandbox left no cgroup, no process and
// no mount behind on the host.
func checkNoLeftovers(t testing.TB, id string, hostUID int, d string) {
	t.Helper()
	for _, c := range []string{"memory", "cpuset", "pids", "devices", "freezer", ""} {
		p := filepath.Join("/sys/fs/cgroup", c, testCgroupParent, id)
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("cgroup %s left behind (%v)", p, err)
		}
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "status"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) > 1 && f[0] == "Uid:" {
				if uid, _ := strconv.Atoi(f[1]); uid >= hostUID && uid < hostUID+idsPer && !inOtherSandbox(e.Name(), id) {
					t.Errorf("process %s (uid %d) of the sandbox still running", e.Name(), uid)
				}
			}
		}
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), d) {
		t.Errorf("a mount of %s is visible on the host", d)
	}
}

// inOtherSandbox reports whether process pid is in the cgroup of a
// sandbox other than id: the uid range of a slot this test's sandbox used
// may meanwhile belong to a sandbox another test package started (go test
// runs packages in parallel). The child joins the sandbox's cgroup before
// it takes the sandbox's ids, so a process this sandbox left behind is in
// that cgroup (which then cannot be removed either).
func inOtherSandbox(pid, id string) bool {
	b, err := os.ReadFile(filepath.Join("/proc", pid, "cgroup"))
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasSuffix(line, "/"+id) || strings.Contains(line, "/"+id+"/") {
			return false
		}
	}
	return true
}

func TestSandboxHello(t *testing.T) {
	st, r, out := run(t, runOpts{}, "hello")
	if st.ExitCode() != 0 {
		t.Errorf("exit status %v, want 0", st)
	}
	want := map[string]string{
		"hello": "yes", "uid": "0", "hostname": "enclave", "cwd": "/", "world": "sandbox",
		"vsockdir": "/run/cloister/vsock", "cid": "5", "pid": r["pid"],
	}
	if diff := cmp.Diff(want, r); diff != "" {
		t.Errorf("results (-want +got):\n%s", diff)
	}
	if pid, _ := strconv.Atoi(r["pid"]); pid < 2 || pid > 100 {
		t.Errorf("application pid %q, want a small pid in the sandbox's namespace", r["pid"])
	}
	if !strings.Contains(out, "cloister-init: application exited with status 0") {
		t.Errorf("console lacks init's exit line")
	}
}

func TestSandboxExitStatus(t *testing.T) {
	st, _, _ := run(t, runOpts{}, "exit", "3")
	if st != (ExitStatus{Code: 3}) {
		t.Errorf("exit status %+v, want code 3", st)
	}
}

func TestSandboxSockets(t *testing.T) {
	_, r, _ := run(t, runOpts{}, "sockets")
	want := map[string]string{"inet": "EPERM", "inet6": "EPERM", "vsock": "EPERM", "netlink": "EPERM", "packet": "EPERM", "unix": "ok"}
	if diff := cmp.Diff(want, r); diff != "" {
		t.Errorf("socket outcomes (-want +got):\n%s", diff)
	}
}

func TestSandboxHostFilesInvisible(t *testing.T) {
	secret, err := os.CreateTemp("/tmp", "cloister-host-secret-")
	if err != nil {
		t.Fatal(err)
	}
	secret.Close()
	defer os.Remove(secret.Name())
	_, r, _ := run(t, runOpts{}, "files", secret.Name())
	want := map[string]string{
		"shadow": "ENOENT", "hostfile": "ENOENT", "proc1cmdline": "/.cloister/init ",
		// init (PID 1 of the sandbox) keeps CAP_SETUID/SETGID, so the
		// capability-less application may not read its environment.
		"proc1world": "false",
		"pids":       r["pids"], "oldroot": "ENOENT", "sys": "ENOENT", "devnull": "ok", "cgroupns": "false",
		"dev": "/dev/fd,/dev/full,/dev/null,/dev/ptmx,/dev/pts,/dev/random,/dev/shm,/dev/stderr,/dev/stdin,/dev/stdout,/dev/tty,/dev/urandom,/dev/zero",
	}
	if diff := cmp.Diff(want, r); diff != "" {
		t.Errorf("results (-want +got):\n%s", diff)
	}
	if n, _ := strconv.Atoi(r["pids"]); n < 2 || n > 5 {
		t.Errorf("%q processes visible in /proc, want only the sandbox's few", r["pids"])
	}
}

func TestSandboxOOM(t *testing.T) {
	st, r, _ := run(t, runOpts{memoryMiB: 64}, "oom", "256")
	if st.ExitCode() != 128+int(syscall.SIGKILL) || st.OOMKills == 0 {
		t.Errorf("exit status %v, want 137 (application killed by the OOM killer) with OOM kills", st)
	}
	if _, ok := r["allocated"]; ok {
		t.Errorf("the application allocated 256 MiB under a 64 MiB limit")
	}
}

func TestSandboxForkBomb(t *testing.T) {
	st, r, _ := run(t, runOpts{pidsMax: 48}, "forkbomb")
	if st.ExitCode() != 0 {
		t.Errorf("exit status %v, want 0", st)
	}
	if r["forkerr"] != "EAGAIN" {
		t.Errorf("fork bomb ended with %q, want EAGAIN from pids.max", r["forkerr"])
	}
	if n, err := strconv.Atoi(r["forks"]); err != nil || n >= 48 {
		t.Errorf("%q forks succeeded under pids.max 48", r["forks"])
	}
}

func TestSandboxPrivilegedCalls(t *testing.T) {
	_, r, _ := run(t, runOpts{}, "mount")
	_, r2, _ := run(t, runOpts{}, "ptrace")
	r["ptrace"] = r2["ptrace"]
	want := map[string]string{"mount": "EPERM", "unshare": "EPERM", "chroot": "EPERM", "ptrace": "EPERM"}
	if diff := cmp.Diff(want, r); diff != "" {
		t.Errorf("results (-want +got):\n%s", diff)
	}
}

func TestSandboxNetwork(t *testing.T) {
	_, r, _ := run(t, runOpts{}, "netif")
	if diff := cmp.Diff(map[string]string{"interfaces": "lo", "lo_up": "false"}, r); diff != "" {
		t.Errorf("network (-want +got):\n%s", diff)
	}
}

func TestSandboxCapabilities(t *testing.T) {
	_, r, _ := run(t, runOpts{}, "caps")
	zero := "0000000000000000"
	want := map[string]string{"CapInh": zero, "CapPrm": zero, "CapEff": zero, "CapBnd": zero, "CapAmb": zero, "NoNewPrivs": "1", "Seccomp": "2"}
	if diff := cmp.Diff(want, r); diff != "" {
		t.Errorf("application's privileges (-want +got):\n%s", diff)
	}
	// The launcher leaves {CAP_SETUID, CAP_SETGID} in init's bounding set
	// (conventions); init cannot drop them without CAP_SETPCAP, so the
	// application may inherit them there — unusable: its permitted and
	// effective sets are empty and no_new_privs stops execve from granting
	// them. Anything else in the bounding set is a failure.

}

// TestSandboxSignalAndKill starts a sleeping application, delivers
// SIGTERM through init (which forwards it), and kills a second one.
func TestSandboxSignalAndKill(t *testing.T) {
	testenv.RequireRoot(t)
	bootstrap, customer := images(t)
	cmdRamdisk := filepath.Join(t.TempDir(), "cmd.cpio")
	writeCpio(t, cmdRamdisk, []cpio.File{dataFile("cmd", "/bin/attack\nsleep\nannounce\n")})
	for _, tc := range []struct {
		name string
		stop func(p *Process) error
		want ExitStatus
	}{
		{"sigterm", func(p *Process) error { return p.Signal(syscall.SIGTERM) }, ExitStatus{Code: 128 + int(syscall.SIGTERM)}},
		{"kill", func(p *Process) error { return p.Kill() }, ExitStatus{Signal: syscall.SIGKILL}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			console := &testenv.SyncBuffer{}
			d := vsockDir(t)
			spec := Spec{ID: "signal-" + tc.name, CID: 6, Ramdisks: []string{bootstrap, customer, cmdRamdisk},
				MemoryMiB: 64, VsockDir: d, Console: console, CgroupParent: testCgroupParent}
			p, err := Start(context.Background(), spec)
			if err != nil {
				t.Fatal(err)
			}
			hostUID := p.HostUID()
			// Wait until the application runs (a bound, not an assertion).
			for i := 0; i < 3000 && !strings.Contains(console.String(), "RESULT sleeping=yes"); i++ {
				time.Sleep(10 * time.Millisecond)
			}
			guard := time.AfterFunc(60*time.Second, func() { _ = p.Kill() })
			defer guard.Stop()
			if err := tc.stop(p); err != nil {
				t.Fatal(err)
			}
			st, err := p.Wait()
			if err != nil {
				t.Fatal(err)
			}
			if st != tc.want {
				t.Errorf("exit status %+v, want %+v; console:\n%s", st, tc.want, console)
			}
			checkNoLeftovers(t, spec.ID, hostUID, d)
		})
	}
}

func TestStartSetupErrors(t *testing.T) {
	testenv.RequireRoot(t)
	bootstrap, customer := images(t)
	tmp := t.TempDir()
	noInit := filepath.Join(tmp, "noinit.cpio")
	writeCpio(t, noInit, []cpio.File{dir("dev")})
	reserved := filepath.Join(tmp, "reserved.cpio")
	writeCpio(t, reserved, []cpio.File{dir("rootfs"), dir("rootfs/.cloister"), dataFile("rootfs/.cloister/init", "#!/bin/sh\n")})
	for _, tc := range []struct {
		name     string
		ramdisks []string
		want     string
	}{
		{"no init", []string{noInit, customer}, "no regular file /.cloister/init"},
		{"reserved path", []string{bootstrap, reserved}, "/.cloister is reserved"},
		{"not an archive", []string{bootstrap, "/etc/hostname"}, "unpack ramdisk 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := Spec{ID: "setup-err", CID: 9, Ramdisks: tc.ramdisks, MemoryMiB: 64, VsockDir: vsockDir(t), CgroupParent: testCgroupParent}
			p, err := Start(context.Background(), spec)
			var se *SetupError
			var step *backend.StepError
			if !errors.As(err, &se) || !errors.Is(err, ErrSetup) || !strings.Contains(err.Error(), tc.want) ||
				!errors.As(err, &step) || step.Step != "wait for init" {
				if p != nil {
					_ = p.Kill()
					_, _ = p.Wait()
				}
				t.Fatalf("Start error = %v, want a SetupError at wait for init containing %q", err, tc.want)
			}
			checkNoLeftovers(t, spec.ID, uidBase, spec.VsockDir)
		})
	}
}

func TestStartInvalidSpec(t *testing.T) {
	ok := Spec{ID: "x", CID: 4, Ramdisks: []string{"/nonexistent"}, MemoryMiB: 64, VsockDir: t.TempDir()}
	for name, mod := range map[string]func(*Spec){
		"bad id":      func(s *Spec) { s.ID = "a/b" },
		"parent cid":  func(s *Spec) { s.CID = 3 },
		"tiny memory": func(s *Spec) { s.MemoryMiB = 8 },
		"no ramdisks": func(s *Spec) { s.Ramdisks = nil },
		"no vsock":    func(s *Spec) { s.VsockDir = "" },
		"no host dir": func(s *Spec) {},
	} {
		s := ok
		mod(&s)
		if _, err := Start(context.Background(), s); !errors.Is(err, ErrInvalidSpec) {
			t.Errorf("%s: Start = %v, want ErrInvalidSpec", name, err)
		}
	}
}

// BenchmarkLaunch measures Start → init executed → application (exit 0)
// → Wait, cgroup removal included.
func BenchmarkLaunch(b *testing.B) {
	testenv.RequireRoot(b)
	bootstrap, customer := images(b)
	cmdRamdisk := filepath.Join(b.TempDir(), "cmd.cpio")
	writeCpio(b, cmdRamdisk, []cpio.File{dataFile("cmd", "/bin/attack\nexit\n0\n")})
	d := vsockDir(b)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		spec := Spec{ID: fmt.Sprintf("bench-%d", i), CID: 5, Ramdisks: []string{bootstrap, customer, cmdRamdisk},
			MemoryMiB: 128, VsockDir: d, CgroupParent: testCgroupParent}
		p, err := Start(context.Background(), spec)
		if err != nil {
			b.Fatal(err)
		}
		st, err := p.Wait()
		if err != nil || st.ExitCode() != 0 {
			b.Fatalf("Wait = %v, %v", st, err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/launch")
}
