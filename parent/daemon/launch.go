package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/cloister/cloister/parent"
	"github.com/cloister/cloister/parent/backend"
)

// launch creates the enclave's directory, starts its monitor and waits until
// the enclave runs (heartbeat received) or the launch fails.
func (d *Daemon) launch(ctx context.Context, e *enclave, img *image) error {
	launchBegan := time.Now()
	if err := os.MkdirAll(e.dir.Path(), 0o700); err != nil {
		return fmt.Errorf("daemon: create enclave directory: %w", err)
	}
	// The one check of the Spec: backends rely on it.
	spec := e.rec.spec(e.dir, img.file)
	if err := backend.ValidateSpec(spec); err != nil {
		return newErr("E03", parent.ErrInvalidArgument, "%v", err)
	}
	hbTimeout := d.heartbeatTimeout(e.rec.EIFSize, e.rec.MemoryMiB)
	ms := e.rec.newMonitorSpec(spec, d.cfg, hbTimeout, img.info.pcrs, d.issuerRef)
	if err := writeMonitorSpec(e.dir, ms); err != nil {
		return fmt.Errorf("daemon: write monitor spec: %w", err)
	}

	// A spare monitor, already running, takes the job; otherwise one is
	// started for this enclave.
	var proc *os.Process
	if d.spares {
		proc = d.takeSpare(e.dir, img.file)
		defer func() { go d.spawnSpare() }()
	}
	if proc == nil {
		logf, err := os.OpenFile(e.dir.MonitorLog(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return fmt.Errorf("daemon: monitor log: %w", err)
		}
		cmd := d.opts.MonitorCommand(e.dir.Path())
		cmd.Stdout, cmd.Stderr = logf, logf
		// The image goes to the monitor as descriptor ImageFD (3).
		cmd.ExtraFiles = []*os.File{img.file}
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		err = cmd.Start()
		logf.Close()
		if err != nil {
			return fmt.Errorf("daemon: start monitor: %w", err)
		}
		// Reap the monitor whenever it ends; its exit is reported via exit.json.
		go func() { _ = cmd.Wait() }()
		proc = cmd.Process
		d.opts.Events.MonitorStarted(false)
	}
	monitorStarted := time.Now()
	e.rec.MonitorPID = proc.Pid
	if err := writeRecord(e.dir, e.rec); err != nil {
		_ = proc.Kill()
		return fmt.Errorf("daemon: write enclave record: %w", err)
	}

	// Wait for the monitor's verdict: heartbeat (RUNNING) or failure.
	deadline := hbTimeout + 60*time.Second
	wctx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	st, err := d.awaitMonitorState(wctx, e.dir, proc.Pid)
	if err != nil {
		_ = proc.Kill()
		_ = monitorTerminate(context.Background(), e.dir)
		return newErr("E39", parent.ErrBoot, "enclave monitor did not report: %v (see %s)", err, e.dir.MonitorLog())
	}
	if st.State != StateRunning && !st.Booted {
		msg := st.Error
		if msg == "" && st.Exit != nil {
			msg = st.Exit.Reason
		}
		code := st.Code
		if code == "" {
			code = "E36"
		}
		if st.Cause == causeHeartbeatTimeout {
			d.opts.Events.HeartbeatTimeout()
		}
		return newErr(code, parent.ErrBoot, "enclave %s did not start: %s%s", e.rec.ID, msg, consoleHint(e.dir))
	}
	d.mu.Lock()
	e.rec.EnclavePID = st.EnclavePID
	e.state = StateRunning
	rec := e.rec
	d.mu.Unlock()
	if err := writeRecord(e.dir, rec); err != nil {
		d.log.Warn("updating enclave record", "err", err)
	}
	d.log.Debug("launch timing", "enclave", e.rec.ID, "monitor_exec", monitorStarted.Sub(launchBegan), "until_running", time.Since(monitorStarted))
	d.watch(e)
	return nil
}

// consoleHint returns the last lines of the enclave's console for error
// messages about failed launches.
func consoleHint(dir backend.Dir) string {
	b, err := os.ReadFile(dir.Console())
	if err != nil || len(b) == 0 {
		return ""
	}
	const tail = 2048
	if len(b) > tail {
		b = b[len(b)-tail:]
	}
	return "\n--- enclave console (last lines) ---\n" + string(b)
}

// awaitMonitorState polls the monitor until it leaves STARTING.
func (d *Daemon) awaitMonitorState(ctx context.Context, dir backend.Dir, pid int) (monitorStatus, error) {
	// The monitor's socket appears a few milliseconds after it starts:
	// poll quickly at first, then back off.
	delay := time.Millisecond
	for {
		st, err := monitorCall(ctx, dir, "GET", "/wait?state="+StateStarting.String())
		if err == nil && st.State != StateStarting {
			return st, nil
		}
		// Not up yet, or gone: a recorded exit is authoritative.
		if x, rerr := readExit(dir); rerr == nil {
			return x, nil
		}
		if pid > 0 && !processAlive(pid) {
			return monitorStatus{}, errors.New("the monitor process exited without recording a result")
		}
		select {
		case <-ctx.Done():
			return monitorStatus{}, ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, 50*time.Millisecond)
	}
}

// watch follows a running enclave until it ends.
func (d *Daemon) watch(e *enclave) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() {
			select {
			case <-d.closed:
				cancel()
			case <-e.done:
			}
		}()
		for {
			st, err := monitorCall(ctx, e.dir, "GET", "/wait")
			if ctx.Err() != nil {
				return // daemon shutting down; the monitor carries on
			}
			if err == nil && st.State == StateExited && st.Exit != nil {
				d.ended(e, *st.Exit)
				return
			}
			if x, rerr := readExit(e.dir); rerr == nil && x.Exit != nil {
				d.ended(e, *x.Exit)
				return
			}
			if !processAlive(e.rec.MonitorPID) {
				d.opts.Events.MonitorLost()
				d.reapLost(context.Background(), e, "lost: its monitor process died")
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
}

// reapLost cleans up after an enclave whose monitor is gone: it kills what
// is left of the enclave, lets the backend remove its leftovers and records
// the enclave as exited.
func (d *Daemon) reapLost(ctx context.Context, e *enclave, reason string) {
	// The monitor is only killed when its pid still runs our monitor for
	// this directory (pids get reused); the enclave's own processes are the
	// backend's to clean up.
	if isMonitorOf(e.rec.MonitorPID, e.dir) {
		_ = syscall.Kill(e.rec.MonitorPID, syscall.SIGKILL)
	}
	if c, ok := d.opts.Backend.(backend.Cleaner); ok {
		if err := c.Cleanup(ctx, e.rec.spec(e.dir, nil)); err != nil {
			d.log.Warn("backend cleanup", "enclave", e.rec.ID, "err", err)
		}
	}
	x := parent.ExitStatus{Code: -1, Reason: reason, Time: d.now().UTC()}
	_ = writeExit(e.dir, monitorStatus{State: StateExited, EnclavePID: e.rec.EnclavePID, Exit: &x})
	d.ended(e, x)
}

// isMonitorOf reports whether process pid is a monitor for dir: a
// "__monitor" process with dir on its command line, or (a spare that took
// the job) as its working directory.
func isMonitorOf(pid int, dir backend.Dir) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	args := bytes.Split(b, []byte{0})
	if len(args) < 2 || string(args[1]) != monitorArg {
		return false
	}
	for _, arg := range args {
		if string(arg) == dir.Path() {
			return true
		}
	}
	cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
	return err == nil && cwd == dir.Path()
}

// recover finds the enclaves of a previous daemon: running ones are adopted,
// exited ones listed, and ones whose monitor is gone cleaned up.
func (d *Daemon) recover(ctx context.Context) error {
	root := filepath.Join(d.cfg.StateDir, "enclaves")
	ents, err := os.ReadDir(root)
	if err != nil {
		return fmt.Errorf("daemon: read %s: %w", root, err)
	}
	// Every record is read before anything is adopted: a record of a newer
	// daemon stops the start, as it may hold resources this daemon would
	// otherwise hand out again.
	type found struct {
		dir backend.Dir
		rec record
	}
	var all []found
	for _, de := range ents {
		if !de.IsDir() {
			continue
		}
		dir := backend.Dir(filepath.Join(root, de.Name()))
		rec, err := readRecord(dir)
		if errors.Is(err, errStateVersion) {
			return err
		}
		if err != nil {
			d.log.Warn("removing enclave directory without a readable record", "dir", dir, "err", err)
			_ = os.RemoveAll(dir.Path())
			continue
		}
		all = append(all, found{dir, rec})
	}
	for _, f := range all {
		dir, rec := f.dir, f.rec
		e := &enclave{rec: rec, dir: dir, state: StateRunning, done: make(chan struct{})}
		d.mu.Lock()
		d.enclaves[rec.ID] = e
		d.mu.Unlock()
		if x, err := readExit(dir); err == nil && x.Exit != nil {
			e.state = StateExited
			e.exit = x.Exit
			close(e.done)
			continue
		}
		d.pool.claim(rec.ID, rec.CPUs, rec.MemoryMiB)
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := monitorCall(cctx, dir, "GET", "/status")
		cancel()
		switch {
		case err == nil && st.State == StateRunning:
			d.log.Info("found running enclave", "enclave", rec.ID, "name", rec.Name)
			d.opts.Events.EnclaveAdopted()
			d.watch(e)
		case err == nil && st.State == StateStarting:
			// A launch that was under way when the daemon stopped: its
			// client is gone, so stop it.
			d.log.Warn("terminating an enclave whose launch was interrupted", "enclave", rec.ID)
			e.state = StateTerminating
			if terr := monitorTerminate(ctx, dir); terr != nil {
				d.reapLost(ctx, e, "launch interrupted by a daemon restart")
			} else {
				d.watch(e)
			}
		case err == nil && st.State == StateExited && st.Exit != nil:
			d.ended(e, *st.Exit)
		default:
			d.log.Warn("cleaning up an enclave whose monitor is gone", "enclave", rec.ID, "err", err)
			d.opts.Events.MonitorLost()
			d.reapLost(ctx, e, "lost: its monitor process was gone when the daemon started")
		}
	}
	return nil
}
