package cgroups

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// cgroupsOf returns /proc/<tid>/cgroup as hierarchy → path, keyed by the
// controller list ("memory", "cpu,cpuacct", "" for v2).
func cgroupsOf(t testing.TB, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) == 3 {
			out[f[1]] = f[2]
		}
	}
	return out
}

// TestRealStartBornInGroup: a process started with Group.Start is in the
// group in every hierarchy before it runs its first instruction (it reads
// its own /proc/self/cgroup first thing), keeps a parent-death signal
// (the forking thread did not exit), and no thread of this process is
// left in the group.
func TestRealStartBornInGroup(t *testing.T) {
	m := realManager(t)
	g, err := m.Create(context.Background(), "born", Limits{PidsMax: 64, MemoryBytes: 64 << 20})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	before := cgroupsOf(t, "/proc/self/cgroup")
	for i := range 20 {
		cmd := exec.Command("sh", "-c", "cat /proc/self/cgroup; read x")
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		in, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := g.Start(cmd); err != nil {
			t.Fatalf("Start: %v", err)
		}
		// Start returns once its thread has left the group: no thread of
		// this process is in it.
		if !m.v2() {
			ours, err := os.ReadDir("/proc/self/task")
			if err != nil {
				t.Fatal(err)
			}
			for c, d := range g.dirs {
				in := strings.Fields(readOne(t, d, "tasks"))
				for _, task := range ours {
					if slices.Contains(in, task.Name()) {
						t.Errorf("start %d: thread %s of this process is in the %s group after Start", i, task.Name(), c)
					}
				}
			}
		}
		buf := make([]byte, 4096)
		n, _ := out.Read(buf)
		got := map[string]string{}
		for _, l := range strings.Split(strings.TrimSpace(string(buf[:n])), "\n") {
			if f := strings.SplitN(l, ":", 3); len(f) == 3 {
				got[f[1]] = f[2]
			}
		}
		want := "/" + m.parent + "/born"
		for ctrl := range g.dirs {
			found := false
			for list, path := range got {
				if strings.Contains(","+list+",", ","+ctrl+",") {
					found = true
					if m.v2() || path != want {
						t.Errorf("start %d: %s cgroup %q, want %q", i, ctrl, path, want)
					}
				}
			}
			if !found && !m.v2() {
				t.Errorf("start %d: no %s line in %q", i, ctrl, buf[:n])
			}
		}
		// Still alive: its parent-death signal did not fire.
		if err := syscall.Kill(cmd.Process.Pid, 0); err != nil {
			t.Errorf("start %d: the child died: %v", i, err)
		}
		if _, err := in.Write([]byte("\n")); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Wait(); err != nil {
			t.Errorf("start %d: %v", i, err)
		}
	}
	// Every thread of this process is where the process was.
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		now := cgroupsOf(t, fmt.Sprintf("/proc/self/task/%s/cgroup", task.Name()))
		for k, v := range before {
			if now[k] != v {
				t.Errorf("thread %s: %s cgroup %q, was %q", task.Name(), k, now[k], v)
			}
		}
	}
	if procs, err := g.Procs(); err != nil || len(procs) != 0 {
		t.Errorf("group processes after the children exited: %v %v", procs, err)
	}
}

// TestRealStartFailure: a command that cannot start leaves no thread in
// the group, and the error is exec's.
func TestRealStartFailure(t *testing.T) {
	m := realManager(t)
	g, err := m.Create(context.Background(), "nostart", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	err = g.Start(exec.Command("/nonexistent/program"))
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/program") {
		t.Fatalf("Start = %v, want exec's error", err)
	}
	for _, d := range g.dirs {
		if v, err := readFile(d, "tasks"); err == nil && strings.TrimSpace(v) != "" && !m.v2() {
			t.Errorf("%s/tasks = %q after a failed start", d, v)
		}
	}
}

// BenchmarkStart compares starting a process and then attaching it
// (Attach: moving a whole process) with Group.Start (moving one thread).
// Launches are spaced out: within an RCU grace period of the previous
// move, moving a process is cheap again, which a tight loop would
// measure instead of what a launch pays.
func BenchmarkStart(b *testing.B) {
	for _, mode := range []string{"attach-after-start", "born-in-group"} {
		b.Run(mode, func(b *testing.B) {
			m := realManager(b)
			for i := 0; b.Loop(); i++ {
				g, err := m.Create(context.Background(), fmt.Sprintf("bench-%d", i), Limits{PidsMax: 16})
				if err != nil {
					b.Fatal(err)
				}
				cmd := exec.Command("/bin/true")
				if mode == "born-in-group" {
					err = g.Start(cmd)
				} else if err = cmd.Start(); err == nil {
					err = g.Attach(cmd.Process.Pid)
				}
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				_ = cmd.Wait()
				if err := g.Remove(context.Background()); err != nil {
					b.Fatal(err)
				}
				time.Sleep(50 * time.Millisecond)
				b.StartTimer()
			}
		})
	}
}
