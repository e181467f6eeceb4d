package cgroups

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// Start starts cmd as a member of g from its first instruction.
//
// On v1 (and hybrid) hosts a locked OS thread of this process joins g by
// writing 0 to each hierarchy's tasks file, starts cmd (a fork inherits
// the forking thread's cgroups, and cmd's files are opened under g's
// device rules), then returns to the cgroups it came from. Moving one
// thread that moves itself is the kernel's cheap path: moving a whole
// process (cgroup.procs, [Group.Attach]) write-locks the global
// threadgroup semaphore, whose RCU grace period makes each move cost
// 5–20 ms on a busy host; this costs about 1 ms (BenchmarkStart).
// The thread must go back rather than exit, because a child's
// parent-death signal (SysProcAttr.Pdeathsig) fires when the thread that
// forked it exits. If it cannot go back, it goes to each hierarchy's
// root, and failing that it stays locked and parked for good, rather
// than run other goroutines inside g.
//
// On v2 hosts cmd is started, then attached.
func (g *Group) Start(cmd *exec.Cmd) error {
	if g.m.v2() {
		if err := cmd.Start(); err != nil {
			return err
		}
		return g.Attach(cmd.Process.Pid)
	}
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		switch g.startOnThread(cmd, done) {
		case threadBack:
			runtime.UnlockOSThread()
		case threadStray:
			// Returning while locked ends the thread: nothing was forked.
		case threadStuck:
			select {} // see Start
		}
	}()
	return <-done
}

// Where startOnThread leaves its thread.
const (
	threadBack  = iota // in its own cgroups again
	threadStray        // not, but it forked nothing: it may exit
	threadStuck        // not, and a child's parent-death signal is tied to it
)

// startOnThread runs on a locked thread: it moves the thread into g,
// starts cmd, moves the thread back, sends Start's result on done (only
// once the thread is out of g: a caller may freeze or remove g next) and
// says where the thread is.
func (g *Group) startOnThread(cmd *exec.Cmd, done chan<- error) int {
	home, err := g.threadHome()
	if err != nil {
		done <- err
		return threadBack
	}
	var joined []string
	for _, c := range sortedKeys(g.dirs) {
		if err = g.m.writeFile(g.dirs[c], "tasks", "0"); err != nil {
			break
		}
		joined = append(joined, c)
	}
	if err == nil {
		err = cmd.Start()
	}
	started := err == nil
	back := g.moveThread(joined, home)
	if back != nil && !started {
		err = errors.Join(err, back)
	}
	done <- err
	switch {
	case back == nil:
		return threadBack
	case started:
		return threadStuck
	}
	return threadStray
}

// threadHome returns, for each of g's hierarchies, the directory of the
// cgroup the calling thread is in now.
func (g *Group) threadHome() (map[string]string, error) {
	b, err := os.ReadFile("/proc/thread-self/cgroup")
	if err != nil {
		return nil, fmt.Errorf("cgroups: this thread's cgroups: %w", err)
	}
	home := make(map[string]string, len(g.dirs))
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		// hierarchy-ID:controller-list:path
		f := strings.SplitN(sc.Text(), ":", 3)
		if len(f) != 3 {
			continue
		}
		for _, c := range strings.Split(f[1], ",") {
			if _, ok := g.dirs[c]; ok {
				home[c] = filepath.Join(g.m.root, c, f[2])
			}
		}
	}
	for c := range g.dirs {
		if home[c] == "" {
			return nil, fmt.Errorf("cgroups: this thread is in no %s cgroup (/proc/thread-self/cgroup)", c)
		}
	}
	return home, nil
}

// moveThread moves the calling thread, in each hierarchy of ctrls, back
// to home, or to the hierarchy's root if that fails.
func (g *Group) moveThread(ctrls []string, home map[string]string) error {
	var errs []error
	for _, c := range ctrls {
		if err := g.m.writeFile(home[c], "tasks", "0"); err != nil {
			if rerr := g.m.writeFile(filepath.Join(g.m.root, c), "tasks", "0"); rerr != nil {
				errs = append(errs, err, rerr)
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("cgroups: the starting thread could not leave %s: %v", g.id, errs)
	}
	return nil
}
