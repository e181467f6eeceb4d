package cgroups

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// fakeFS emulates the parts of cgroupfs the package relies on in a
// temporary directory: mkdir creates a group's interface files, and every
// write is recorded (subtree_control and devices writes accumulate as in
// the kernel, other files keep the last value).
type fakeFS struct {
	t      *testing.T
	root   string
	files  []string // interface files created in each new group
	mu     sync.Mutex
	writes []string // "relative/path=value" in order
}

func newFake(t *testing.T, mode Mode, files []string, rootFiles map[string]string) (*Manager, *fakeFS) {
	t.Helper()
	root := t.TempDir()
	for name, content := range rootFiles {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f := &fakeFS{t: t, root: root, files: files}
	m, err := New(Config{Root: root, Mode: mode})
	if err != nil {
		t.Fatal(err)
	}
	m.mkdir = f.mkdir
	m.write = f.write
	m.rmdir = func(p string) error {
		if _, err := os.Stat(p); err != nil {
			return err
		}
		return os.RemoveAll(p)
	}
	m.poll = time.Millisecond
	return m, f
}

func (f *fakeFS) mkdir(p string) error {
	if err := os.Mkdir(p, 0o755); err != nil {
		return err
	}
	for _, name := range f.files {
		if err := os.WriteFile(filepath.Join(p, name), nil, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeFS) write(p, value string) error {
	rel, err := filepath.Rel(f.root, p)
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.writes = append(f.writes, rel+"="+value)
	f.mu.Unlock()
	base := filepath.Base(p)
	if base == "cgroup.subtree_control" {
		old, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		value = strings.TrimSpace(string(old) + " " + strings.TrimPrefix(value, "+"))
	}
	fh, err := os.OpenFile(p, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, err = fh.WriteString(value)
	return errors.Join(err, fh.Close())
}

var v2Files = []string{
	"cgroup.procs", "cgroup.subtree_control", "cgroup.kill", "cgroup.freeze", "cgroup.events",
	"memory.max", "memory.swap.max", "memory.current", "memory.peak", "memory.events",
	"cpuset.cpus", "cpuset.mems", "pids.max", "pids.current", "pids.events", "cpu.max",
}

func TestCreateV2Fake(t *testing.T) {
	m, f := newFake(t, ModeV2, v2Files, map[string]string{
		"cgroup.controllers":     "cpuset cpu io memory hugetlb pids rdma misc\n",
		"cgroup.subtree_control": "memory",
	})
	ctx := context.Background()
	g, err := m.Create(ctx, "enc-1", Limits{MemoryBytes: 256 << 20, CPUs: []int{1, 2, 3}, PidsMax: 100,
		CPUQuota: 50 * time.Millisecond})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	want := []string{
		"cgroup.subtree_control=+pids",
		"cgroup.subtree_control=+cpuset",
		"cgroup.subtree_control=+cpu",
		"cloister/cgroup.subtree_control=+memory",
		"cloister/cgroup.subtree_control=+pids",
		"cloister/cgroup.subtree_control=+cpuset",
		"cloister/cgroup.subtree_control=+cpu",
		"cloister/enc-1/memory.max=268435456",
		"cloister/enc-1/memory.swap.max=0",
		"cloister/enc-1/cpuset.cpus=1-3",
		"cloister/enc-1/pids.max=100",
		"cloister/enc-1/cpu.max=50000 100000",
	}
	if diff := cmp.Diff(want, f.writes); diff != "" {
		t.Errorf("writes (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]string{"": filepath.Join(f.root, "cloister/enc-1")}, g.Dirs()); diff != "" {
		t.Errorf("Dirs (-want +got):\n%s", diff)
	}

	// Attach, stats.
	f.writes = nil
	if err := g.Attach(1234); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"cloister/enc-1/cgroup.procs=1234"}, f.writes); diff != "" {
		t.Errorf("Attach writes (-want +got):\n%s", diff)
	}
	d := g.Dirs()[""]
	for name, content := range map[string]string{
		"memory.current": "1000\n", "memory.peak": "2000\n",
		"memory.events": "low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\noom_group_kill 0\n",
		"pids.current":  "3\n", "pids.events": "max 5\n",
	} {
		if err := os.WriteFile(filepath.Join(d, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	st, err := g.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(Stats{MemoryUsage: 1000, MemoryPeak: 2000, MemoryLimitHits: 7, OOMKills: 1, Pids: 3, PidsLimitHits: 5}, st); diff != "" {
		t.Errorf("Stats (-want +got):\n%s", diff)
	}

	// KillAll through cgroup.kill; the fake kernel empties cgroup.procs.
	f.writes = nil
	if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := g.Remove(ctx); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if diff := cmp.Diff([]string{"cloister/enc-1/cgroup.kill=1"}, f.writes); diff != "" {
		t.Errorf("Remove writes (-want +got):\n%s", diff)
	}
	if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("group directory still there after Remove: %v", err)
	}
	if err := g.Remove(ctx); err != nil {
		t.Fatalf("Remove of a removed group: %v", err)
	}
}

func TestCreateV2MissingControllers(t *testing.T) {
	// The hybrid hosts' cgroup2 mount offers only hugetlb.
	m, _ := newFake(t, ModeV2, v2Files, map[string]string{
		"cgroup.controllers": "hugetlb\n", "cgroup.subtree_control": "",
	})
	_, err := m.Create(context.Background(), "enc-1", Limits{})
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "memory, pids, cpuset") {
		t.Fatalf("Create error = %v, want ErrUnavailable naming memory, pids, cpuset", err)
	}
}

func TestKillAllV2FreezeFallbackFake(t *testing.T) {
	files := []string{"cgroup.procs", "cgroup.subtree_control", "cgroup.freeze", "cgroup.events", "pids.max", "cpuset.cpus", "memory.max"}
	m, f := newFake(t, ModeV2, files, map[string]string{
		"cgroup.controllers": "cpuset memory pids", "cgroup.subtree_control": "",
	})
	g, err := m.Create(context.Background(), "enc-2", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	d := g.Dirs()[""]
	// An empty group needs no freezing.
	f.writes = nil
	if err := g.KillAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(f.writes) != 0 {
		t.Errorf("KillAll of an empty group wrote %q", f.writes)
	}
	// A group whose freeze never completes runs into the deadline.
	if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte("999999999\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := g.KillAll(ctx); !errors.Is(err, ErrBusy) {
		t.Fatalf("KillAll = %v, want ErrBusy", err)
	}
	if diff := cmp.Diff([]string{"cloister/enc-2/cgroup.freeze=1"}, f.writes); diff != "" {
		t.Errorf("writes (-want +got):\n%s", diff)
	}
}

func TestCreateV1Fake(t *testing.T) {
	v1Files := []string{
		"cgroup.procs", "memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.oom_control",
		"cpuset.cpus", "cpuset.mems", "pids.max", "devices.allow", "devices.deny", "freezer.state",
		"cpu.cfs_period_us", "cpu.cfs_quota_us",
	}
	rootFiles := map[string]string{"cpuset/cpuset.cpus": "0-7\n", "cpuset/cpuset.mems": "0\n"}
	for _, c := range []string{"memory", "pids", "devices", "freezer", "cpu"} {
		rootFiles[c+"/cgroup.procs"] = ""
	}
	m, f := newFake(t, ModeHybrid, v1Files, rootFiles)
	g, err := m.Create(context.Background(), "enc-3", Limits{MemoryBytes: 1 << 30, CPUs: []int{4, 5}, PidsMax: 64})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	want := []string{
		"cpuset/cloister/cpuset.cpus=0-7",
		"cpuset/cloister/cpuset.mems=0",
		"memory/cloister/enc-3/memory.limit_in_bytes=1073741824",
		"memory/cloister/enc-3/memory.memsw.limit_in_bytes=1073741824",
		"memory/cloister/enc-3/memory.oom_control=0",
		"cpuset/cloister/enc-3/cpuset.cpus=4-5",
		"cpuset/cloister/enc-3/cpuset.mems=0",
		"pids/cloister/enc-3/pids.max=64",
		"devices/cloister/enc-3/devices.deny=a",
	}
	for _, a := range allowedDevices {
		want = append(want, "devices/cloister/enc-3/devices.allow="+a)
	}
	if diff := cmp.Diff(want, f.writes); diff != "" {
		t.Errorf("writes (-want +got):\n%s", diff)
	}
	if got := len(g.Dirs()); got != len(v1Controllers) {
		t.Errorf("%d dirs, want %d (no cpu without a quota)", got, len(v1Controllers))
	}
	f.writes = nil
	if err := g.Attach(42); err != nil {
		t.Fatal(err)
	}
	if len(f.writes) != len(v1Controllers) {
		t.Errorf("Attach wrote %q, want one cgroup.procs per hierarchy", f.writes)
	}
}

func TestCreateInvalid(t *testing.T) {
	m, _ := newFake(t, ModeV2, v2Files, map[string]string{"cgroup.controllers": "cpuset memory pids", "cgroup.subtree_control": ""})
	for _, tc := range []struct {
		id  string
		lim Limits
	}{
		{"", Limits{}},
		{"..", Limits{}},
		{"a/b", Limits{}},
		{strings.Repeat("x", 129), Limits{}},
		{"ok", Limits{MemoryBytes: -1}},
		{"ok", Limits{CPUs: []int{-1}}},
		{"ok", Limits{CPUQuota: time.Microsecond}},
		{"ok", Limits{CPUQuota: time.Millisecond, CPUPeriod: 2 * time.Second}},
	} {
		if _, err := m.Create(context.Background(), tc.id, tc.lim); !errors.Is(err, ErrInvalid) {
			t.Errorf("Create(%q, %+v) = %v, want ErrInvalid", tc.id, tc.lim, err)
		}
	}
	if _, err := New(Config{Root: t.TempDir(), Parent: "../x", Mode: ModeV2}); !errors.Is(err, ErrInvalid) {
		t.Errorf("New with parent ../x = %v, want ErrInvalid", err)
	}
}

func TestDetectModeNotCgroup(t *testing.T) {
	if _, err := DetectMode(t.TempDir()); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("DetectMode(tempdir) = %v, want ErrUnavailable", err)
	}
}
