//go:build linux

package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cloister/cloister/internal/cgroups"
	"github.com/cloister/cloister/internal/wellknown"
	"github.com/cloister/cloister/parent/backend"
)

// uid ranges: slot s maps ids 0–65535 inside to uidBase+s*65536… outside.
const (
	uidBase  = 1_000_000
	idsPer   = 65536
	maxSlots = 1024
)

// SlotDir holds one lock file per uid range. Every enclave has its own
// monitor process, so the ranges must be allocated across processes: a
// slot is taken by holding an exclusive flock on its file, which the kernel
// releases when the holder exits, however it exits.
var SlotDir = "/run/cloister/uid-slots"

var slots struct {
	sync.Mutex
	held [maxSlots]*os.File
}

func takeSlot() (int, error) {
	slots.Lock()
	defer slots.Unlock()
	if err := os.MkdirAll(SlotDir, 0o700); err != nil {
		return 0, fmt.Errorf("sandbox: uid slot directory: %w", err)
	}
	for i := range slots.held {
		if slots.held[i] != nil {
			continue
		}
		f, err := os.OpenFile(filepath.Join(SlotDir, fmt.Sprintf("%d.lock", i)), os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return 0, fmt.Errorf("sandbox: uid slot: %w", err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			continue // held by another process
		}
		slots.held[i] = f
		return i, nil
	}
	return 0, fmt.Errorf("%w: %d sandboxes running", ErrNoSlot, maxSlots)
}

func releaseSlot(s int) {
	slots.Lock()
	if f := slots.held[s]; f != nil {
		f.Close()
		slots.held[s] = nil
	}
	slots.Unlock()
}

// Process is a running sandbox.
type Process struct {
	cmd     *exec.Cmd
	group   *cgroups.Group
	slot    int
	hostID  int          // first host uid/gid of the sandbox
	guest   *os.File     // the listener directory's tmpfs (detached mount)
	console *consolePump // drains init's standard output and error
	sup     *supervisor  // Spec.Nitro's supervisor, or nil

	waitOnce sync.Once
	status   ExitStatus
	waitErr  error
}

// Pid returns init's process id in the host's PID namespace.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// GuestDir returns a descriptor of the sandbox's listener directory
// (/run/cloister/vsock/guest inside), a private tmpfs with no host path:
// reach its sockets with hybrid.UnixConnector{Root: p.GuestDir()}. It is
// closed when Wait returns.
func (p *Process) GuestDir() *os.File { return p.guest }

// HostUID returns the host uid (and gid) that is root inside the sandbox;
// ids 0–65535 inside map to HostUID()+id outside.
func (p *Process) HostUID() int { return p.hostID }

// Signal sends sig to init (PID 1 inside), which forwards SIGTERM,
// SIGINT, SIGHUP, SIGUSR1 and SIGUSR2 to the application.
func (p *Process) Signal(sig os.Signal) error {
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("sandbox: signal %v: %w", sig, err)
	}
	return nil
}

// Kill kills every process of the sandbox: SIGKILL to init (which ends
// its PID namespace) and to everything left in its cgroup.
func (p *Process) Kill() error {
	err := p.cmd.Process.Kill()
	if err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("sandbox: kill: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return p.group.KillAll(ctx)
}

// Wait waits for init to exit, then kills anything left in the cgroup,
// reads its OOM count, removes the cgroup and frees the uid range. It
// returns init's exit status; calling it again returns the same result.
func (p *Process) Wait() (ExitStatus, error) {
	p.waitOnce.Do(func() { p.status, p.waitErr = p.wait() })
	return p.status, p.waitErr
}

func (p *Process) wait() (ExitStatus, error) {
	var st ExitStatus
	err := p.cmd.Wait()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		ws := ee.Sys().(syscall.WaitStatus)
		if ws.Signaled() {
			st.Signal = ws.Signal()
		} else {
			st.Code = ws.ExitStatus()
		}
		err = nil
	default:
		err = fmt.Errorf("sandbox: wait: %w", err)
	}
	if s, serr := p.group.Stats(); serr == nil {
		st.OOMKills = s.OOMKills
	}
	if rerr := backend.RemoveCgroup(p.group); rerr != nil {
		err = errors.Join(err, rerr)
	}
	// Every process of the sandbox is gone: the supervisor has nothing
	// left to answer.
	p.sup.stop()
	// Every process of the sandbox is gone, so the console pipe is at end
	// of stream: let the last output reach the console first.
	p.console.finish(consoleDrainTimeout)
	p.guest.Close()
	releaseSlot(p.slot)
	if err != nil {
		return ExitStatus{}, err
	}
	return st, nil
}

func (s *Spec) check() error {
	if err := cgroups.CheckID(s.ID); err != nil {
		return fmt.Errorf("%w: id: %w", ErrInvalidSpec, err)
	}
	if s.CID < 4 {
		return fmt.Errorf("%w: CID %d (enclave CIDs are ≥ 4)", ErrInvalidSpec, s.CID)
	}
	if s.MemoryMiB < 32 || s.MemoryMiB > 1<<24 {
		return fmt.Errorf("%w: memory %d MiB (at least 32)", ErrInvalidSpec, s.MemoryMiB)
	}
	if s.PidsMax < 0 {
		return fmt.Errorf("%w: pids max %d", ErrInvalidSpec, s.PidsMax)
	}
	n := len(s.Ramdisks) + len(s.RamdiskSections)
	if n == 0 {
		return fmt.Errorf("%w: no ramdisks", ErrInvalidSpec)
	}
	if len(s.Ramdisks) > 0 && len(s.RamdiskSections) > 0 {
		return fmt.Errorf("%w: both ramdisk paths and sections", ErrInvalidSpec)
	}
	if n > 64 {
		return fmt.Errorf("%w: %d ramdisks", ErrInvalidSpec, n)
	}
	for _, r := range s.RamdiskSections {
		if r.File == nil || r.Offset < 0 || r.Size < 0 {
			return fmt.Errorf("%w: ramdisk section %+v", ErrInvalidSpec, r)
		}
	}
	if s.VsockDir == "" {
		return fmt.Errorf("%w: no vsock directory", ErrInvalidSpec)
	}
	return nil
}

// Start builds the sandbox described by spec and executes its init. It
// returns once init has been executed, or fails with a
// [*backend.StepError] naming the failed step (see [starter.steps]) once
// what the earlier steps created is released; a failure the launcher
// reports wraps a [*SetupError]. ctx bounds only the start; use
// [Process.Kill] to end a running sandbox and [Process.Wait] to collect
// it. Requires root on the host.
func Start(ctx context.Context, spec Spec) (*Process, error) {
	if err := spec.check(); err != nil {
		return nil, err
	}
	if spec.PidsMax == 0 {
		spec.PidsMax = 1024
	}
	s := &starter{spec: spec, slot: -1}
	if err := backend.RunSteps(ctx, backend.KindSandbox, s.steps()); err != nil {
		return nil, err
	}
	closeFile(&s.statR)
	closeFile(&s.supR)
	return &Process{cmd: s.cmd, group: s.group, slot: s.slot, hostID: s.hostID, guest: s.guestDir, console: s.pump, sup: s.sup}, nil
}

// starter is one sandbox's start: what its steps have created so far.
type starter struct {
	spec     Spec
	hostDir  *os.File // detached bind mount of the host listeners' directory
	ramdisks []*os.File
	ranges   []ramdiskRange // where each ramdisk lies in its descriptor
	slot     int            // -1: none taken
	hostID   int
	guestDir *os.File
	group    *cgroups.Group
	// The launcher's configuration and status pipes, its standard
	// output and error, and the socket pair its seccomp listener comes
	// over.
	cfgR, cfgW, statR, statW, conR, conW, supR, supW *os.File
	cmd                                              *exec.Cmd
	pump                                             *consolePump
	sup                                              *supervisor
	reaped                                           bool
	reapErr                                          error
}

// steps are the start, in order. Everything the launcher needs from the
// host is opened by root before it runs: its ids cannot traverse the
// daemon's private directories.
func (s *starter) steps() []backend.Step {
	steps := []backend.Step{
		{Name: "open host directory", Do: s.openHostDir, Undo: func() { closeFile(&s.hostDir) }},
		{Name: "open ramdisks", Do: s.openRamdisks, Undo: s.closeRamdisks},
		{Name: "take uid range", Do: s.takeSlot, Undo: s.releaseSlot},
		{Name: "create listener directory", Do: s.createGuestDir, Undo: func() { closeFile(&s.guestDir) }},
		{Name: "create cgroup", Do: s.createCgroup, Undo: s.removeCgroup},
		{Name: "create pipes", Do: s.createPipes, Undo: s.closePipes},
		{Name: "start launcher", Do: s.startLauncher, Undo: s.stopLauncher},
		{Name: "release launcher", Do: s.releaseLauncher},
		{Name: "wait for init", Do: s.waitInit},
	}
	if s.spec.Nitro != nil {
		steps = append(steps, backend.Step{Name: "start supervisor", Do: s.startSupervisor, Undo: func() { s.sup.stop() }})
	}
	return steps
}

func closeFile(f **os.File) {
	if *f != nil {
		(*f).Close()
		*f = nil
	}
}

func (s *starter) openHostDir(context.Context) error {
	var err error
	s.hostDir, err = openDir(backend.Dir(s.spec.VsockDir).HostDir())
	return err
}

func (s *starter) openRamdisks(context.Context) error {
	for _, r := range s.spec.Ramdisks {
		f, err := os.Open(r)
		if err != nil {
			return fmt.Errorf("%w: ramdisk: %w", ErrInvalidSpec, err)
		}
		s.ramdisks = append(s.ramdisks, f)
		s.ranges = append(s.ranges, ramdiskRange{Size: -1})
	}
	for _, r := range s.spec.RamdiskSections {
		// A descriptor of its own per section (the child closes each).
		fd, err := unix.FcntlInt(r.File.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("sandbox: ramdisk section: %w", err)
		}
		s.ramdisks = append(s.ramdisks, os.NewFile(uintptr(fd), "ramdisk"))
		s.ranges = append(s.ranges, ramdiskRange{Offset: r.Offset, Size: r.Size})
	}
	return nil
}

func (s *starter) closeRamdisks() {
	for i := range s.ramdisks {
		closeFile(&s.ramdisks[i])
	}
}

func (s *starter) takeSlot(context.Context) error {
	slot, err := takeSlot()
	if err != nil {
		return err
	}
	s.slot, s.hostID = slot, uidBase+slot*idsPer
	return nil
}

func (s *starter) releaseSlot() {
	if s.slot >= 0 {
		releaseSlot(s.slot)
	}
}

// createGuestDir creates the listener directory, which belongs to the
// sandbox's root: any sandbox user may create its listening sockets there.
func (s *starter) createGuestDir(context.Context) error {
	var err error
	s.guestDir, err = newGuestFS(s.hostID)
	return err
}

func (s *starter) createCgroup(ctx context.Context) error {
	mgr, err := cgroups.New(cgroups.Config{Parent: s.spec.CgroupParent})
	if err != nil {
		return err
	}
	s.group, err = mgr.Create(ctx, s.spec.ID, cgroups.Limits{
		MemoryBytes: int64(s.spec.MemoryMiB) << 20, CPUs: s.spec.CPUs, PidsMax: s.spec.PidsMax + wellknown.InitTaskReserve,
	})
	return err
}

func (s *starter) removeCgroup() {
	if s.group != nil {
		_ = backend.RemoveCgroup(s.group)
	}
}

// createPipes creates the configuration and status pipes and init's
// standard output and error: a pipe the launcher drains into
// spec.Console (see consolePump), never spec.Console itself.
func (s *starter) createPipes(context.Context) error {
	var err error
	if s.cfgR, s.cfgW, err = os.Pipe(); err != nil {
		return fmt.Errorf("pipe: %w", err)
	}
	if s.statR, s.statW, err = os.Pipe(); err != nil {
		return fmt.Errorf("pipe: %w", err)
	}
	if s.conR, s.conW, err = os.Pipe(); err != nil {
		return fmt.Errorf("pipe: %w", err)
	}
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socketpair: %w", err)
	}
	s.supR, s.supW = os.NewFile(uintptr(pair[0]), "supervisor"), os.NewFile(uintptr(pair[1]), "supervisor-child")
	return nil
}

func (s *starter) closePipes() {
	for _, f := range []**os.File{&s.cfgR, &s.cfgW, &s.statR, &s.statW, &s.conR, &s.conW, &s.supR, &s.supW} {
		closeFile(f)
	}
}

// startLauncher starts the launcher (this executable as childMarker) in
// its new namespaces and, from its first instruction, in its cgroup
// (cgroups.Group.Start), then closes this process's copies of its ends of
// the pipes and of the files it was handed.
func (s *starter) startLauncher(context.Context) error {
	s.cmd = &exec.Cmd{
		Path:       "/proc/self/exe",
		Args:       []string{childMarker},
		Env:        []string{},
		Dir:        "/",
		Stdout:     s.conW,
		Stderr:     s.conW,
		ExtraFiles: append([]*os.File{s.cfgR, s.statW, s.hostDir, s.guestDir, s.supW}, s.ramdisks...),
		SysProcAttr: &syscall.SysProcAttr{
			// The cgroup namespace is entered by the child once it is in
			// its cgroup, so that the group is the namespace's root.
			Cloneflags: unix.CLONE_NEWUSER | unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWNET |
				unix.CLONE_NEWIPC | unix.CLONE_NEWUTS,
			UidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: s.hostID, Size: idsPer}},
			GidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: s.hostID, Size: idsPer}},
			GidMappingsEnableSetgroups: true,
			// Become root of the new namespace (host uid hostID) before
			// execve, so the child keeps its capabilities there and
			// nothing it creates belongs to the host's root.
			Credential: &syscall.Credential{Uid: 0, Gid: 0},
			Pdeathsig:  syscall.SIGKILL,
			Setsid:     true,
		},
	}
	if err := s.group.Start(s.cmd); err != nil {
		if s.cmd.Process == nil {
			s.cmd = nil
		} else {
			_ = s.cmd.Process.Kill()
			_ = s.cmd.Wait()
			s.cmd = nil
		}
		return fmt.Errorf("%w: start child: %w", ErrSetup, err)
	}
	closeFile(&s.conW)
	s.pump = startConsolePump(s.conR, s.spec.Console, consoleStall)
	s.conR = nil // the pump's now
	closeFile(&s.cfgR)
	closeFile(&s.statW)
	closeFile(&s.supW)
	closeFile(&s.hostDir)
	s.closeRamdisks()
	return nil
}

// reap kills the launcher (or init) and collects it, once.
func (s *starter) reap() error {
	if !s.reaped {
		_ = s.cmd.Process.Kill()
		s.reapErr = s.cmd.Wait()
		s.reaped = true
	}
	return s.reapErr
}

func (s *starter) stopLauncher() {
	if s.cmd == nil {
		return
	}
	_ = s.reap()
	s.pump.finish(consoleDrainTimeout)
}

// releaseLauncher sends the launcher its configuration, which it waits
// for before it does anything.
func (s *starter) releaseLauncher(context.Context) error {
	cfg, _ := json.Marshal(childConfig{
		CID: s.spec.CID, MemoryMiB: s.spec.MemoryMiB, PidsMax: s.spec.PidsMax, Ramdisks: s.ranges, Debug: s.spec.Debug,
		Nitro: s.spec.Nitro != nil,
	})
	if _, err := s.cfgW.Write(cfg); err != nil {
		return fmt.Errorf("%w: release child: %w", ErrSetup, err)
	}
	closeFile(&s.cfgW)
	return nil
}

// waitInit waits for the status pipe to close (init executed:
// close-on-exec) or an error message; ctx cancels the start.
func (s *starter) waitInit(ctx context.Context) error {
	type result struct {
		b   []byte
		err error
	}
	res := make(chan result, 1)
	go func() {
		b, err := io.ReadAll(io.LimitReader(s.statR, 64<<10))
		res <- result{b, err}
	}()
	var r result
	select {
	case r = <-res:
	case <-ctx.Done():
		_ = s.cmd.Process.Kill()
		<-res
		return ctx.Err()
	}
	ready := len(r.b) > 0 && r.b[0] == statusReady
	if ready {
		r.b = r.b[1:]
	}
	switch {
	case r.err != nil:
		return fmt.Errorf("%w: read child status: %w", ErrSetup, r.err)
	case len(r.b) > 0 && r.b[0] == statusError:
		return &SetupError{Msg: strings.TrimSpace(string(r.b[1:]))}
	case !ready || len(r.b) > 0:
		// The child died before reaching execve (killed, e.g. by the OOM
		// killer while unpacking).
		werr := s.reap()
		var oom string
		if st, err := s.group.Stats(); err == nil && st.OOMKills > 0 {
			oom = fmt.Sprintf(" (OOM killer: the ramdisks do not fit in %d MiB)", s.spec.MemoryMiB)
		}
		return &SetupError{Msg: fmt.Sprintf("child ended during setup: %v%s", werr, oom)}
	}
	return nil
}

// consoleDrainTimeout bounds the wait for the last console output once the
// sandbox has ended (or failed to start).
const consoleDrainTimeout = 5 * time.Second

// openDir returns a detached bind mount of dir (open_tree with
// OPEN_TREE_CLONE) that the child attaches with move_mount. A path would
// not do: the sandbox's ids may not traverse the daemon's directories,
// and a bind mount's source must be in the caller's mount namespace.
func openDir(dir string) (*os.File, error) {
	fi, err := os.Stat(dir)
	if err == nil && !fi.IsDir() {
		err = fmt.Errorf("not a directory")
	}
	if err != nil {
		return nil, fmt.Errorf("%w: vsock directory %s: %w", ErrInvalidSpec, dir, err)
	}
	fd, err := unix.OpenTree(unix.AT_FDCWD, dir, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("sandbox: open_tree %s: %w", dir, err)
	}
	return os.NewFile(uintptr(fd), dir), nil
}
