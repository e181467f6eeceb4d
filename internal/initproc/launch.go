package initproc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// DefaultPath is the PATH the application gets when its environment sets
// none (the same as Nitro's init).
const DefaultPath = "/sbin:/usr/sbin:/bin:/usr/bin"

// Launch is everything needed to start the application.
type Launch struct {
	Path     string     // executable, as seen inside the application's root
	Args     []string   // argv, Args[0] as written in the image's cmd
	Env      []string   // complete environment
	Dir      string     // working directory
	Cred     Credential // identity to switch to before exec
	DropCaps bool       // set no_new_privs and drop every capability before exec
}

// ExitStatus is how the application ended.
type ExitStatus struct {
	Code   int            // exit status when Signal is 0
	Signal syscall.Signal // the signal that killed it, or 0
}

// String returns "exited with status N" or "killed by signal N (name)".
func (s ExitStatus) String() string {
	if s.Signal != 0 {
		return fmt.Sprintf("killed by signal %d (%v)", int(s.Signal), s.Signal)
	}
	return fmt.Sprintf("exited with status %d", s.Code)
}

// ExitCode is the status a shell would report: Code, or 128+signal.
func (s ExitStatus) ExitCode() int {
	if s.Signal != 0 {
		return 128 + int(s.Signal)
	}
	return s.Code
}

// StartError means the application could not be started; Code is the
// conventional shell status for it (127 not found, 126 anything else).
type StartError struct {
	Code int
	Msg  string
}

// Error returns the reason, prefixed "initproc: cannot start the application: ".
func (e *StartError) Error() string { return "initproc: cannot start the application: " + e.Msg }

// forwardedSignals are passed on to the application's process group.
var forwardedSignals = map[os.Signal]bool{
	unix.SIGTERM: true, unix.SIGINT: true, unix.SIGHUP: true, unix.SIGUSR1: true, unix.SIGUSR2: true,
}

// selfExe is the path init re-executes for the exec stage.
const selfExe = "/proc/self/exe"

// Supervise starts l (through init's exec stage, in a new session whose
// process group ID is the application's PID), forwards SIGTERM, SIGINT,
// SIGHUP, SIGUSR1 and SIGUSR2 received on sigs to that process group, reaps
// every child that exits (init is PID 1 or a subreaper, so orphans land
// here) and returns once the application itself has exited. When ctx is
// cancelled the process group is killed with SIGKILL. A failure to start is
// reported as a [*StartError].
//
// Supervise must be the only code in the process that waits for children.
func Supervise(ctx context.Context, l Launch, sigs <-chan os.Signal) (ExitStatus, error) {
	pid, startErr := start(l)
	if pid == 0 {
		return ExitStatus{}, startErr
	}
	done := make(chan struct{})
	fwdDone := make(chan struct{})
	go func() {
		defer close(fwdDone)
		forward(ctx, pid, sigs, done)
	}()
	st, err := reap(pid)
	close(done)
	<-fwdDone
	switch {
	case startErr != nil:
		return ExitStatus{}, startErr
	case err != nil:
		return ExitStatus{}, err
	}
	return st, nil
}

func forward(ctx context.Context, pgid int, sigs <-chan os.Signal, done <-chan struct{}) {
	for {
		select {
		case <-done:
			return
		case <-ctx.Done():
			_ = unix.Kill(-pgid, unix.SIGKILL)
			return
		case s, ok := <-sigs:
			if !ok {
				sigs = nil
				continue
			}
			if sig, isSys := s.(syscall.Signal); isSys && forwardedSignals[s] {
				_ = unix.Kill(-pgid, sig)
			}
		}
	}
}

// reap waits for any child until pid has exited.
func reap(pid int) (ExitStatus, error) {
	for {
		var ws unix.WaitStatus
		got, err := unix.Wait4(-1, &ws, 0, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return ExitStatus{}, fmt.Errorf("initproc: waiting for the application (pid %d): %w", pid, err)
		}
		if got != pid {
			continue // an orphan re-parented to init
		}
		switch {
		case ws.Exited():
			return ExitStatus{Code: ws.ExitStatus()}, nil
		case ws.Signaled():
			return ExitStatus{Signal: ws.Signal()}, nil
		}
	}
}

// execSpec is what init sends the exec stage on fd 3.
type execSpec struct {
	Path     string
	Args     []string
	Env      []string
	Dir      string
	UID, GID uint32
	Groups   []uint32
	DropCaps bool
}

// start runs the exec stage and waits until it has either exec'd the
// application (pid, nil) or failed (pid, *StartError; the process must
// still be reaped). pid is 0 when no process was created.
func start(l Launch) (int, error) {
	specR, specW, err := os.Pipe()
	if err != nil {
		return 0, &StartError{Code: 126, Msg: err.Error()}
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		specR.Close()
		specW.Close()
		return 0, &StartError{Code: 126, Msg: err.Error()}
	}
	defer errR.Close()
	p, err := os.StartProcess(selfExe, []string{execStageArg0}, &os.ProcAttr{
		Env:   []string{},
		Files: []*os.File{os.Stdin, os.Stdout, os.Stderr, specR, errW},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	})
	specR.Close()
	errW.Close()
	if err != nil {
		specW.Close()
		return 0, &StartError{Code: 126, Msg: fmt.Sprintf("running the exec stage %s: %v", selfExe, err)}
	}
	pid := p.Pid
	_ = p.Release()
	spec := execSpec{
		Path: l.Path, Args: l.Args, Env: l.Env, Dir: l.Dir,
		UID: l.Cred.UID, GID: l.Cred.GID, Groups: l.Cred.Groups, DropCaps: l.DropCaps,
	}
	// A write error means the stage died early; its message (if any) comes
	// through errR below.
	_ = json.NewEncoder(specW).Encode(spec)
	specW.Close()
	msg, _ := io.ReadAll(io.LimitReader(errR, 4096))
	if len(msg) > 0 {
		code := 126
		if msg[0] == '!' { // exec stage's marker for "not found"
			code, msg = 127, msg[1:]
		}
		return pid, &StartError{Code: code, Msg: string(msg)}
	}
	return pid, nil
}

// lookPath finds file the way execvp does, in the directories of pathEnv
// as seen under root, and returns the path inside root. A name containing
// '/' is returned unchanged.
func lookPath(root, file, pathEnv string) (string, error) {
	if strings.Contains(file, "/") {
		return file, nil
	}
	var denied error
	for _, dir := range strings.Split(pathEnv, ":") {
		if dir == "" {
			dir = "."
		}
		p := path.Join(dir, file)
		if !path.IsAbs(p) {
			continue // relative PATH entries depend on the working directory; skip them
		}
		fi, err := os.Stat(path.Join(root, p))
		if err != nil {
			continue
		}
		if fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			return p, nil
		}
		denied = fs.ErrPermission
	}
	if denied != nil {
		return "", &StartError{Code: 126, Msg: fmt.Sprintf("%q is in PATH=%s but is not an executable file", file, pathEnv)}
	}
	return "", &StartError{Code: 127, Msg: fmt.Sprintf("%q not found in PATH=%s", file, pathEnv)}
}

// envGet returns the value of name in env.
func envGet(env []string, name string) (string, bool) {
	for _, kv := range env {
		if k, v, _ := strings.Cut(kv, "="); k == name {
			return v, true
		}
	}
	return "", false
}

// envSet sets name=value in env, replacing an existing entry.
func envSet(env []string, name, value string) []string {
	for i, kv := range env {
		if k, _, _ := strings.Cut(kv, "="); k == name {
			env[i] = name + "=" + value
			return env
		}
	}
	return append(env, name+"="+value)
}

// buildLaunch turns the image configuration into a Launch; root is where the
// application's root directory is visible to init now.
func buildLaunch(root string, ic ImageConfig, pass map[string]string, dropCaps bool) (Launch, error) {
	cred, err := ResolveUser(root, ic.User)
	if err != nil {
		return Launch{}, err
	}
	env := append([]string(nil), ic.Env...)
	if _, ok := envGet(env, "PATH"); !ok {
		env = envSet(env, "PATH", DefaultPath)
	}
	if _, ok := envGet(env, "HOME"); !ok {
		env = envSet(env, "HOME", cred.Home)
	}
	for _, k := range []string{EnvWorld, EnvVsockDir, EnvCID} {
		if v, ok := pass[k]; ok {
			env = envSet(env, k, v)
		}
	}
	pathEnv, _ := envGet(env, "PATH")
	exe, err := lookPath(root, ic.Cmd[0], pathEnv)
	if err != nil {
		return Launch{}, err
	}
	// Like Docker, create a missing working directory; if that fails the
	// exec stage's chdir reports the problem.
	_ = os.MkdirAll(path.Join(root, ic.Workdir), 0o755)
	return Launch{
		Path:     exe,
		Args:     append([]string(nil), ic.Cmd...),
		Env:      env,
		Dir:      ic.Workdir,
		Cred:     cred,
		DropCaps: dropCaps,
	}, nil
}
