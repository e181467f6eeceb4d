package cgroups

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cloister/cloister/internal/testenv"
)

const allocEnv = "CLOISTER_CGROUPS_TEST_ALLOC_MIB"

func TestMain(m *testing.M) {
	if v := os.Getenv(allocEnv); v != "" {
		os.Exit(allocChild(v))
	}
	os.Exit(m.Run())
}

// allocChild waits for a line on stdin (sent once it is attached), then
// allocates and touches the given number of MiB.
func allocChild(mib string) int {
	var n int
	if _, err := fmt.Sscan(mib, &n); err != nil {
		return 2
	}
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		return 2
	}
	var keep [][]byte
	for i := 0; i < n; i++ {
		b := make([]byte, 1<<20)
		for j := range len(b) / 4096 {
			b[j*4096] = 1
		}
		keep = append(keep, b)
	}
	fmt.Println("allocated", len(keep), "MiB")
	return 0
}

// realManager returns a manager on the host's cgroups under a parent
// unique to this test process, removed at the end.
func realManager(t testing.TB) *Manager {
	t.Helper()
	testenv.RequireRoot(t)
	mode, err := DetectMode("/sys/fs/cgroup")
	testenv.Require(t, err == nil, "a cgroup file system at /sys/fs/cgroup", "mount cgroups (v1, hybrid or v2)")
	parent := fmt.Sprintf("cloister-test-%d", os.Getpid())
	m, err := New(Config{Parent: parent})
	if err != nil {
		t.Fatal(err)
	}
	if m.Mode() != mode {
		t.Fatalf("New detected %v, DetectMode %v", m.Mode(), mode)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := m.Cleanup(ctx, ""); err != nil {
			t.Errorf("Cleanup: %v", err)
		}
		var dirs []string
		if m.v2() {
			dirs = []string{filepath.Join(m.root, parent)}
		} else {
			for _, c := range append(v1Controllers, "cpu") {
				dirs = append(dirs, filepath.Join(m.root, c, parent))
			}
		}
		for _, d := range dirs {
			if err := syscall.Rmdir(d); err != nil && !errors.Is(err, syscall.ENOENT) {
				t.Errorf("rmdir %s: %v", d, err)
			}
		}
	})
	return m
}

// startBlocked starts cmd with a stdin pipe; the command is expected to
// wait for a line before doing anything.
func startBlocked(t *testing.T, cmd *exec.Cmd) (release func()) {
	t.Helper()
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return func() {
		if _, err := in.Write([]byte("go\n")); err != nil {
			t.Fatal(err)
		}
	}
}

func readOne(t *testing.T, dir, file string) string {
	t.Helper()
	v, err := readFile(dir, file)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestRealLimitsAndRemove(t *testing.T) {
	m := realManager(t)
	ctx := context.Background()
	g, err := m.Create(ctx, "limits", Limits{MemoryBytes: 64 << 20, CPUs: []int{0}, PidsMax: 32, CPUQuota: 50 * time.Millisecond})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	d := g.Dirs()
	if m.v2() {
		for file, want := range map[string]string{"memory.max": "67108864", "cpuset.cpus": "0", "pids.max": "32", "cpu.max": "50000 100000"} {
			if got := readOne(t, d[""], file); got != want {
				t.Errorf("%s = %q, want %q", file, got, want)
			}
		}
	} else {
		for _, c := range []struct{ ctrl, file, want string }{
			{"memory", "memory.limit_in_bytes", "67108864"},
			{"cpuset", "cpuset.cpus", "0"},
			{"pids", "pids.max", "32"},
			{"cpu", "cpu.cfs_quota_us", "50000"},
			{"cpu", "cpu.cfs_period_us", "100000"},
			{"devices", "devices.list", strings.Join([]string{"c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm", "c 5:0 rwm", "c 5:2 rwm", "c 136:* rwm"}, "\n")},
		} {
			if got := readOne(t, d[c.ctrl], c.file); got != c.want {
				t.Errorf("%s/%s = %q, want %q", c.ctrl, c.file, got, c.want)
			}
		}
		if exists(d["memory"], "memory.memsw.limit_in_bytes") {
			if got := readOne(t, d["memory"], "memory.memsw.limit_in_bytes"); got != "67108864" {
				t.Errorf("memsw limit = %q", got)
			}
		}
	}

	// A process attached to the group shows up in it and in /proc.
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if err := g.Attach(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	procs, err := g.Procs()
	if err != nil || len(procs) != 1 || procs[0] != cmd.Process.Pid {
		t.Fatalf("Procs = %v, %v; want [%d]", procs, err, cmd.Process.Pid)
	}
	own, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", cmd.Process.Pid))
	if !strings.Contains(string(own), "/"+m.parent+"/limits") {
		t.Errorf("/proc/pid/cgroup does not name the group:\n%s", own)
	}
	st, err := g.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Pids != 1 {
		t.Errorf("Stats.Pids = %d, want 1", st.Pids)
	}

	// Remove kills the process and removes every directory.
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := g.Remove(rctx); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Errorf("sleep ended with %v, want SIGKILL", err)
	}
	for k, dir := range d {
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s directory %s still exists (%v)", k, dir, err)
		}
	}
}

func TestRealOOMKill(t *testing.T) {
	m := realManager(t)
	g, err := m.Create(context.Background(), "oom", Limits{MemoryBytes: 32 << 20, PidsMax: 64})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), allocEnv+"=256")
	release := startBlocked(t, cmd)
	if err := g.Attach(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	release()
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("allocating 256 MiB under a 32 MiB limit ended with %v, want SIGKILL by the OOM killer", err)
	}
	st, err := g.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.OOMKills < 1 {
		t.Errorf("Stats = %+v, want OOMKills ≥ 1", st)
	}
	// Charges are page-granular and may overshoot the limit slightly.
	if st.MemoryPeak > 33<<20 {
		t.Errorf("MemoryPeak = %d, well above the 32 MiB limit", st.MemoryPeak)
	}
}

func TestRealPidsLimitAndKillAll(t *testing.T) {
	m := realManager(t)
	g, err := m.Create(context.Background(), "pids", Limits{PidsMax: 8})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	// A shell that tries to start 30 background sleeps.
	cmd := exec.Command("sh", "-c", `read x; i=0; while [ $i -lt 30 ]; do sleep 60 >/dev/null & i=$((i+1)); done; echo started; sleep 60`)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	release := startBlocked(t, cmd)
	if err := g.Attach(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	release()
	// Wait until the shell is done trying (it prints "started" or dies).
	line, _ := bufio.NewReader(out).ReadString('\n')
	procs, err := g.Procs()
	if err != nil {
		t.Fatal(err)
	}
	if len(procs) > 8 {
		t.Errorf("%d processes in the group, pids.max is 8", len(procs))
	}
	st, err := g.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.PidsLimitHits == 0 {
		t.Errorf("Stats = %+v (shell said %q), want PidsLimitHits > 0", st, line)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := g.KillAll(ctx); err != nil {
		t.Fatalf("KillAll: %v", err)
	}
	if procs, err := g.Procs(); err != nil || len(procs) != 0 {
		t.Fatalf("after KillAll Procs = %v, %v", procs, err)
	}
	for _, p := range procs {
		if err := syscall.Kill(p, 0); err == nil {
			// Zombies of the shell's children are reaped by init; the
			// shell itself is our child and is reaped by cmd.Wait.
			if p != cmd.Process.Pid && !isZombie(p) {
				t.Errorf("process %d still alive after KillAll", p)
			}
		}
	}
}

func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] == 'Z'
}

func TestRealCleanupLeftovers(t *testing.T) {
	m := realManager(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, err := m.Create(ctx, "leak-a", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Create(ctx, "leak-b", Limits{CPUQuota: 10 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	keep, err := m.Create(ctx, "keep", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if err := a.Attach(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	// Creating a group that exists and has processes is refused.
	if _, err := m.Create(ctx, "leak-a", Limits{}); !errors.Is(err, ErrExists) {
		t.Errorf("Create of a busy group = %v, want ErrExists", err)
	}
	removed, err := m.Cleanup(ctx, "leak-")
	if err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	if strings.Join(removed, ",") != "leak-a,leak-b" {
		t.Errorf("Cleanup removed %v, want [leak-a leak-b]", removed)
	}
	_ = cmd.Wait()
	if _, err := m.Open("leak-a"); err == nil {
		t.Errorf("leak-a still opens after Cleanup")
	}
	if _, err := m.Open("keep"); err != nil {
		t.Errorf("Cleanup removed a group without the prefix: %v", err)
	}
	if err := keep.Remove(ctx); err != nil {
		t.Fatal(err)
	}
}
