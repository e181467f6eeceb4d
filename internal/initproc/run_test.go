package initproc

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cloister/cloister/internal/testenv"
	"golang.org/x/sys/unix"
)

// The test binary plays every part: init (role sandbox-init or vm-init),
// init's exec stage (argv[0] cloister-init-exec) and the application (role
// app, selected through the image's env file).
const roleEnv = "INITPROC_TEST_ROLE"

func TestMain(m *testing.M) {
	if IsExecStage() {
		os.Exit(ExecStage())
	}
	switch os.Getenv(roleEnv) {
	case "sandbox-init":
		os.Exit(Run(context.Background(), Config{
			Root:      os.Getenv("INITPROC_TEST_ROOT"),
			Heartbeat: HeartbeatConfig{Attempts: 2, Backoff: time.Millisecond, Timeout: 30 * time.Second},
		}))
	case "vm-init":
		root := os.Getenv("INITPROC_TEST_ROOT")
		sock := os.Getenv("INITPROC_TEST_HB")
		os.Exit(Run(context.Background(), Config{
			World: WorldVM,
			Root:  root,
			Sys:   &fakeSys{root: root, output: os.Stdout},
			Dial:  func(ctx context.Context) (Conn, error) { return DialUnix(ctx, sock) },
		}))
	case "app":
		os.Exit(fakeApp(os.Args[1:]))
	}
	code := m.Run()
	if testBinaryOnce.path != "" {
		os.RemoveAll(filepath.Dir(testBinaryOnce.path))
	}
	os.Exit(code)
}

// fakeApp is the application. Modes:
//
//	report N   print identity, capabilities and environment; exit N
//	kill       kill itself with SIGKILL
//	signals    print each forwarded signal; exit 7 on SIGTERM
//	sleep      wait without handling signals
//	orphan     leave a grandchild to init and check that init reaps it
func fakeApp(args []string) int {
	if len(args) == 0 {
		fmt.Println("app: no mode")
		return 100
	}
	switch args[0] {
	case "report":
		report()
		n, _ := strconv.Atoi(args[1])
		return n
	case "kill":
		fmt.Println("app: killing myself")
		_ = unix.Kill(os.Getpid(), unix.SIGKILL)
		time.Sleep(time.Minute)
		return 101
	case "signals":
		ch := make(chan os.Signal, 8)
		signal.Notify(ch, unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGUSR1, unix.SIGUSR2)
		fmt.Println("app: ready")
		for s := range ch {
			fmt.Printf("app: got %v\n", s)
			if s == unix.SIGTERM {
				return 7
			}
		}
		return 102
	case "sleep":
		fmt.Println("app: ready")
		time.Sleep(time.Minute)
		return 103
	case "orphan":
		return orphan()
	case "orphan-child":
		// Start a grandchild that outlives this process, print its pid, exit.
		c := exec.Command("/proc/self/exe", "orphan-grandchild")
		c.Env = os.Environ()
		if err := c.Start(); err != nil {
			fmt.Println("app: starting the grandchild:", err)
			return 104
		}
		fmt.Println(c.Process.Pid)
		return 0
	case "orphan-grandchild":
		time.Sleep(time.Second)
		return 0
	}
	fmt.Println("app: unknown mode", args[0])
	return 100
}

func report() {
	wd, _ := os.Getwd()
	groups, _ := unix.Getgroups()
	slices.Sort(groups)
	pgid, _ := unix.Getpgid(0)
	sid, _ := unix.Getsid(0)
	fmt.Printf("app: uid=%d gid=%d groups=%v cwd=%s\n", os.Getuid(), os.Getgid(), groups, wd)
	fmt.Printf("app: session leader=%v group leader=%v\n", sid == os.Getpid(), pgid == os.Getpid())
	fmt.Printf("app: args=%q\n", os.Args[1:])
	status, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(l, "Cap") || strings.HasPrefix(l, "NoNewPrivs") {
			fmt.Printf("app: %s\n", strings.Join(strings.Fields(l), " "))
		}
	}
	env := os.Environ()
	slices.Sort(env)
	for _, kv := range env {
		fmt.Printf("app: env %s\n", kv)
	}
}

// orphan leaves a grandchild behind (its parent exits first), so the kernel
// re-parents it to init; init must reap it while the application runs.
func orphan() int {
	out, err := exec.Command("/proc/self/exe", "orphan-child").Output()
	if err != nil {
		fmt.Println("app: orphan-child:", err)
		return 110
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		fmt.Printf("app: orphan-child printed %q\n", out)
		return 111
	}
	// The grandchild's parent exited, so the kernel re-parented it to the
	// nearest subreaper: init, this process's parent.
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		fmt.Println("app: grandchild gone too early:", err)
		return 113
	}
	if want := fmt.Sprintf("\nPPid:\t%d\n", os.Getppid()); !strings.Contains(string(status), want) {
		fmt.Printf("app: the orphan was not re-parented to init (%d):\n%s", os.Getppid(), status)
		return 114
	}
	// The grandchild exits after a second. A zombie keeps /proc/<pid>; once
	// init reaps it the directory disappears. 20 s is a bound, not a timing
	// assertion.
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			fmt.Println("app: orphan reaped")
			return 0
		}
		_ = b
	}
	fmt.Println("app: orphan never reaped")
	return 112
}

// console collects a child's output lines.
type console struct {
	mu    sync.Mutex
	lines []string
	done  chan struct{}
}

func newConsole(r io.Reader) *console {
	c := &console{done: make(chan struct{})}
	go func() {
		defer close(c.done)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			c.mu.Lock()
			c.lines = append(c.lines, sc.Text())
			c.mu.Unlock()
		}
	}()
	return c
}

func (c *console) text() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.lines, "\n") + "\n"
}

// waitFor waits until a line contains s. The 30 s bound only stops a hung
// test; it is not a timing assertion.
func (c *console) waitFor(t *testing.T, s string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if strings.Contains(c.text(), s) {
			return
		}
	}
	t.Fatalf("the console never showed %q:\n%s", s, c.text())
}

// sandboxWorld is a temporary sandbox: a root with /.cloister files, a
// vsock directory with a fake parent, and the environment init gets.
type sandboxWorld struct {
	root, vsockDir string
	parentReply    atomic.Int32
	heartbeats     chan byte
}

func newSandbox(t *testing.T, cmd []string, extraEnv ...string) *sandboxWorld {
	t.Helper()
	base, err := os.MkdirTemp("", "sbx")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	w := &sandboxWorld{
		root:       filepath.Join(base, "root"),
		vsockDir:   filepath.Join(base, "vsock"),
		heartbeats: make(chan byte, 4),
	}
	w.parentReply.Store(HeartbeatByte)
	env := append([]string{roleEnv + "=app", "GREETING=hello world", "CLOISTER_CID=999"}, extraEnv...)
	writeFiles(t, w.root, map[string]string{
		".cloister/cmd":     strings.Join(cmd, "\n") + "\n",
		".cloister/env":     strings.Join(env, "\n") + "\n",
		".cloister/workdir": "/\n",
		".cloister/user":    "tester\n",
	})
	writeAccounts(t, w.root)
	if err := os.MkdirAll(filepath.Join(w.vsockDir, "host"), 0o755); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", filepath.Join(w.vsockDir, "host", "vsock_9000"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			var b [1]byte
			if _, err := io.ReadFull(c, b[:]); err == nil {
				w.heartbeats <- b[0]
				_, _ = c.Write([]byte{byte(w.parentReply.Load())})
			}
			c.Close()
		}
	}()
	return w
}

// writeAccounts gives root an /etc/passwd entry "tester" for the current
// uid and gid, member of the current supplementary groups, so that init
// keeps the test's own identity without privileges; plus "app" (uid 1000).
func writeAccounts(t *testing.T, root string) {
	t.Helper()
	groups, err := unix.Getgroups()
	if err != nil {
		t.Fatal(err)
	}
	var group strings.Builder
	fmt.Fprintf(&group, "app:x:1000:\nextra:x:2000:app\n")
	for _, g := range groups {
		if g != os.Getgid() && g != 1000 && g != 2000 {
			fmt.Fprintf(&group, "g%d:x:%d:tester\n", g, g)
		}
	}
	writeFiles(t, root, map[string]string{
		"etc/passwd": fmt.Sprintf("tester:x:%d:%d::/home/tester:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n", os.Getuid(), os.Getgid()),
		"etc/group":  group.String(),
	})
}

// start runs init (role) in w and returns the command and its console.
func (w *sandboxWorld) start(t *testing.T, role string) (*exec.Cmd, *console) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // a bound, not an assertion
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, testBinary(t))
	cmd.Env = []string{
		roleEnv + "=" + role,
		"INITPROC_TEST_ROOT=" + w.root,
		"INITPROC_TEST_HB=" + filepath.Join(w.vsockDir, "host", "vsock_9000"),
		EnvWorld + "=sandbox",
		EnvVsockDir + "=" + w.vsockDir,
		EnvCID + "=7",
	}
	r, wr, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = wr, wr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	wr.Close()
	t.Cleanup(func() { r.Close() })
	return cmd, newConsole(r)
}

// wait waits for init to exit and for the console to close, and returns
// init's exit status.
func wait(t *testing.T, cmd *exec.Cmd, con *console) int {
	t.Helper()
	err := cmd.Wait()
	select {
	case <-con.done:
	case <-time.After(30 * time.Second):
		t.Errorf("console still open 30 s after init exited")
	}
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		t.Fatalf("init: %v\n%s", err, con.text())
	}
	return 0
}

var testBinaryOnce struct {
	sync.Once
	path string
	err  error
}

// testBinary is this test binary, copied to a world-readable directory so
// that the application can run as another user.
func testBinary(t *testing.T) string {
	testBinaryOnce.Do(func() {
		self, err := os.Executable()
		if err != nil {
			testBinaryOnce.err = err
			return
		}
		dir, err := os.MkdirTemp("", "initproc-bin")
		if err == nil {
			err = os.Chmod(dir, 0o755)
		}
		if err != nil {
			testBinaryOnce.err = err
			return
		}
		dst := filepath.Join(dir, "initproc.test")
		b, err := os.ReadFile(self)
		if err == nil {
			err = os.WriteFile(dst, b, 0o755)
		}
		testBinaryOnce.path, testBinaryOnce.err = dst, err
	})
	if testBinaryOnce.err != nil {
		t.Fatal(testBinaryOnce.err)
	}
	return testBinaryOnce.path
}

func mustContain(t *testing.T, text string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(text, w) {
			t.Errorf("console lacks %q:\n%s", w, text)
		}
	}
}

func TestSandboxExitStatus(t *testing.T) {
	w := newSandbox(t, []string{testBinary(t), "report", "3"})
	cmd, con := w.start(t, "sandbox-init")
	code := wait(t, cmd, con)
	if code != 3 {
		t.Errorf("init exit status = %d, want 3", code)
	}
	if hb := <-w.heartbeats; hb != HeartbeatByte {
		t.Errorf("parent received 0x%02X", hb)
	}
	// Root gets exactly tester's groups (the primary included); without
	// privileges init keeps the groups it has, which differ at most in the
	// primary gid.
	groups, _ := unix.Getgroups()
	if os.Geteuid() == 0 {
		groups = append(groups, os.Getgid())
	}
	slices.Sort(groups)
	groups = slices.Compact(groups)
	out := con.text()
	if first := strings.SplitN(out, "\n", 2)[0]; first != "cloister-init: starting (world=sandbox)" {
		t.Errorf("first line = %q", first)
	}
	mustContain(t, out,
		"cloister-init: heartbeat sent to the parent ("+w.vsockDir+"/host/vsock_9000)\n",
		fmt.Sprintf("app: uid=%d gid=%d groups=%v cwd=/\n", os.Getuid(), os.Getgid(), groups),
		"app: session leader=true group leader=true\n",
		`app: args=["report" "3"]`,
		"app: CapInh: 0000000000000000\n",
		"app: CapPrm: 0000000000000000\n",
		"app: CapEff: 0000000000000000\n",
		"app: CapAmb: 0000000000000000\n",
		"app: NoNewPrivs: 1\n",
		"app: env GREETING=hello world\n",
		"app: env PATH="+DefaultPath+"\n",
		"app: env HOME=/home/tester\n",
		"app: env CLOISTER_WORLD=sandbox\n",
		"app: env CLOISTER_VSOCK_DIR="+w.vsockDir+"\n",
		"app: env CLOISTER_CID=7\n", // init's value wins over the image's 999
		"cloister-init: application exited with status 3\n",
	)
	if os.Geteuid() == 0 {
		mustContain(t, out, "app: CapBnd: 0000000000000000\n")
	}
	if strings.Count(out, "app: env ") != 7 {
		t.Errorf("the application's environment is not exactly the image's plus PATH, HOME and the CLOISTER_ variables:\n%s", out)
	}
}

func TestSandboxKilledBySignal(t *testing.T) {
	w := newSandbox(t, []string{testBinary(t), "kill"})
	cmd, con := w.start(t, "sandbox-init")
	if code := wait(t, cmd, con); code != 128+9 {
		t.Errorf("init exit status = %d, want 137", code)
	}
	mustContain(t, con.text(), "cloister-init: application killed by signal 9 (killed)\n")
}

func TestSandboxSignalForwarding(t *testing.T) {
	w := newSandbox(t, []string{testBinary(t), "signals"})
	cmd, con := w.start(t, "sandbox-init")
	con.waitFor(t, "app: ready")
	for _, s := range []struct {
		sig  syscall.Signal
		line string
	}{
		{unix.SIGUSR1, "app: got user defined signal 1"},
		{unix.SIGHUP, "app: got hangup"},
		{unix.SIGINT, "app: got interrupt"},
		{unix.SIGUSR2, "app: got user defined signal 2"},
	} {
		if err := cmd.Process.Signal(s.sig); err != nil {
			t.Fatal(err)
		}
		con.waitFor(t, s.line)
	}
	if err := cmd.Process.Signal(unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := wait(t, cmd, con); code != 7 {
		t.Errorf("init exit status = %d, want 7", code)
	}
	mustContain(t, con.text(), "app: got terminated\n", "cloister-init: application exited with status 7\n")
}

func TestSandboxSignalDefaultAction(t *testing.T) {
	w := newSandbox(t, []string{testBinary(t), "sleep"})
	cmd, con := w.start(t, "sandbox-init")
	con.waitFor(t, "app: ready")
	if err := cmd.Process.Signal(unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := wait(t, cmd, con); code != 128+15 {
		t.Errorf("init exit status = %d, want 143", code)
	}
	mustContain(t, con.text(), "cloister-init: application killed by signal 15 (terminated)\n")
}

func TestSandboxReapsOrphans(t *testing.T) {
	w := newSandbox(t, []string{testBinary(t), "orphan"})
	cmd, con := w.start(t, "sandbox-init")
	if code := wait(t, cmd, con); code != 0 {
		t.Errorf("init exit status = %d, want 0", code)
	}
	mustContain(t, con.text(), "app: orphan reaped\n", "cloister-init: application exited with status 0\n")
}

func TestSandboxFailures(t *testing.T) {
	tests := []struct {
		name     string
		cmd      []string
		setup    func(w *sandboxWorld)
		wantCode int
		wantLine string
	}{
		{"heartbeat answered wrongly", []string{"/bin/true"}, func(w *sandboxWorld) { w.parentReply.Store(0) },
			1, "cloister-init: error: initproc: heartbeat failed: the parent answered 0x00, want 0xB7"},
		{"command not found", []string{"no-such-program"}, nil,
			127, `cloister-init: initproc: cannot start the application: "no-such-program" not found in PATH=` + DefaultPath},
		{"exec fails", []string{"/no/such/file"}, nil,
			127, "cloister-init: initproc: cannot start the application: exec /no/such/file: no such file or directory"},
		{"not executable", []string{"/bin/true"}, func(w *sandboxWorld) {
			writeFiles(t, w.root, map[string]string{"data": "not a program", ".cloister/cmd": w.root + "/data\n"})
		}, 126, "/data: permission denied"},
		{"unknown user", []string{"/bin/true"}, func(w *sandboxWorld) {
			writeFiles(t, w.root, map[string]string{".cloister/user": "ghost\n"})
		}, 1, `cloister-init: error: initproc: unknown user: "ghost"`},
		{"bad working directory", []string{"/bin/true"}, func(w *sandboxWorld) {
			writeFiles(t, w.root, map[string]string{".cloister/workdir": "/proc/self/fd/nonexistent\n"})
		}, 126, "cannot start the application: working directory /proc/self/fd/nonexistent"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := newSandbox(t, tc.cmd)
			if tc.setup != nil {
				tc.setup(w)
			}
			cmd, con := w.start(t, "sandbox-init")
			if code := wait(t, cmd, con); code != tc.wantCode {
				t.Errorf("init exit status = %d, want %d\n%s", code, tc.wantCode, con.text())
			}
			mustContain(t, con.text(), tc.wantLine)
			if strings.Contains(con.text(), "application exited") {
				t.Errorf("init reported an application exit:\n%s", con.text())
			}
		})
	}
}

func TestSandboxSwitchesUser(t *testing.T) {
	testenv.RequireRoot(t)
	for _, tc := range []struct {
		user, want, home string
	}{
		{"app", "app: uid=1000 gid=1000 groups=[1000 2000] cwd=/", "/home/app"},
		{"1000:2000", "app: uid=1000 gid=2000 groups=[2000] cwd=/", "/home/app"},
		{"", "app: uid=0 gid=0 groups=[0] cwd=/", "/"},
	} {
		t.Run(tc.user, func(t *testing.T) {
			w := newSandbox(t, []string{testBinary(t), "report", "0"})
			writeFiles(t, w.root, map[string]string{
				".cloister/user": tc.user + "\n",
				"etc/passwd":     "app:x:1000:1000::/home/app:/bin/sh\n", // no entry for uid 0
			})
			cmd, con := w.start(t, "sandbox-init")
			if code := wait(t, cmd, con); code != 0 {
				t.Errorf("init exit status = %d, want 0\n%s", code, con.text())
			}
			mustContain(t, con.text(), tc.want+"\n",
				"app: CapPrm: 0000000000000000\n",
				"app: CapEff: 0000000000000000\n",
				"app: CapBnd: 0000000000000000\n",
				"app: NoNewPrivs: 1\n",
				"app: env HOME="+tc.home+"\n",
			)
		})
	}
}

// TestVMRunWithFakes runs the whole VM flow of Run, with fake system calls,
// in a child process: the application really runs and exits 3, and init
// ends by "rebooting".
func TestVMRunWithFakes(t *testing.T) {
	w := newSandbox(t, nil)
	root := w.root // used as the ramdisk root
	writeFiles(t, root, map[string]string{
		"proc/cmdline":      "reboot=k console=ttyS0\n",
		"modules/order":     "vsock.ko\n",
		"modules/vsock.ko":  "VSOCK",
		"cmd":               testBinary(t) + "\nreport\n3\n",
		"env":               roleEnv + "=app\nGREETING=vm\n",
		"workdir":           "/\n",
		"user":              "tester\n",
		"rootfs/etc/passwd": fmt.Sprintf("tester:x:%d:%d::/home/tester:/bin/sh\n", os.Getuid(), os.Getgid()),
	})
	writeAccounts(t, filepath.Join(root, "rootfs"))
	cmd, con := w.start(t, "vm-init")
	code := wait(t, cmd, con)
	if code != 3 {
		t.Errorf("init returned %d after the fake reboot, want 3", code)
	}
	out := con.text()
	mustContain(t, out,
		"cloister-init: starting (world=vm)\nfakesys: mount devtmpfs /dev\nfakesys: console /dev/console\n",
		"fakesys: load vsock.ko (VSOCK)\ncloister-init: loaded kernel module vsock.ko\n",
		"cloister-init: heartbeat sent to the parent (vsock 3:9000)\n",
		"fakesys: switchroot /rootfs\n",
		"app: env GREETING=vm\n",
		"app: env PATH="+DefaultPath+"\n",
		"app: CapEff: ", // printed; a VM keeps the capabilities of the image's user
		"cloister-init: application exited with status 3\ncloister-init: powering off (status 3)\nfakesys: sync\nfakesys: reboot\n",
	)
	if strings.Contains(out, "CLOISTER_") {
		t.Errorf("the VM application got CLOISTER_ variables:\n%s", out)
	}
	if os.Geteuid() == 0 && strings.Contains(out, "app: CapEff: 0000000000000000") {
		t.Errorf("a root application in a VM lost its capabilities:\n%s", out)
	}
}

// BenchmarkSupervise measures starting an application through the exec
// stage (re-executing this binary, dropping capabilities) and reaping it.
func BenchmarkSupervise(b *testing.B) {
	groups, err := unix.Getgroups()
	if err != nil {
		b.Fatal(err)
	}
	cred := Credential{UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}
	for _, g := range groups {
		cred.Groups = append(cred.Groups, uint32(g))
	}
	l := Launch{Path: "/bin/true", Args: []string{"true"}, Dir: "/", Cred: cred, DropCaps: true}
	for b.Loop() {
		st, err := Supervise(context.Background(), l, nil)
		if err != nil || st.ExitCode() != 0 {
			b.Fatalf("Supervise = %v, %v", st, err)
		}
	}
}
