package initproc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"

	"github.com/cloister/cloister/internal/wellknown"
	"golang.org/x/sys/unix"
)

// Config describes one run of init. The zero value is the real thing: world
// detected from the process, root "/", console on stdout, real system calls.
type Config struct {
	// World selects the flow; "" means [DetectWorld] on this process.
	World World
	// Root is the directory init treats as "/" when it looks for its files
	// (/cmd, /modules, /rootfs in a VM; /.cloister and /etc in the sandbox)
	// and mounts file systems; "" means "/". Tests point it at a temporary
	// tree. The application itself is executed by path as the process sees
	// the file system.
	Root string
	// Console receives init's messages; nil means os.Stdout.
	Console io.Writer
	// Sys makes the privileged system calls of the VM flow; nil means
	// [RealSys].
	Sys Sys
	// Dial opens the heartbeat connection; nil means vsock (CID 3, port
	// 9000) in a VM and $CLOISTER_VSOCK_DIR/host/vsock_9000 in the sandbox.
	Dial Dialer
	// Heartbeat bounds the heartbeat.
	Heartbeat HeartbeatConfig
	// Getenv reads init's own environment; nil means os.Getenv.
	Getenv func(string) string
	// Signals delivers the signals init receives; nil means Run subscribes
	// to every signal itself (so none of them kills init).
	Signals <-chan os.Signal
	// OpenCUSE opens the CUSE channel through which a VM without a security
	// module device gets /dev/nsm; nil opens <Root>/dev/cuse when it exists.
	OpenCUSE func() (io.ReadWriteCloser, error)
	// DialNSM connects /dev/nsm to the parent's emulated security module;
	// nil means [DialNSM] (vsock CID 3, port 0x4E534D).
	DialNSM Dialer
}

func (c *Config) root() string {
	if c.Root == "" {
		return "/"
	}
	return c.Root
}

func (c *Config) sys() Sys {
	if c.Sys == nil {
		return RealSys{}
	}
	return c.Sys
}

func (c *Config) getenv(k string) string {
	if c.Getenv == nil {
		return os.Getenv(k)
	}
	return c.Getenv(k)
}

type logFunc func(format string, args ...any)

// Main is cloister-init's main function: it runs [ExecStage] when this
// process is the exec stage and [Run] with the zero Config otherwise, and
// returns the process exit status. In a VM Run does not return unless the
// reboot fails.
func Main() int {
	if IsExecStage() {
		return ExecStage()
	}
	return Run(context.Background(), Config{})
}

// Run is init. It prints "cloister-init: starting (world=W)", runs the
// world's flow and the application, and prints
// "cloister-init: application exited with status N" or
// "cloister-init: application killed by signal N (name)".
//
// In a VM it then prints "cloister-init: powering off (status N)", syncs
// and reboots through cfg.Sys (which ends the VM; see [Sys.Reboot]); any
// failure before the application ran is printed and also ends in the
// reboot, with status 1. In the sandbox it returns the application's exit
// status (128+signal when killed), 126 or 127 when the application could
// not be started, or 1 when init failed before that.
func Run(ctx context.Context, cfg Config) int {
	console := cfg.Console
	if console == nil {
		console = os.Stdout
	}
	log := func(format string, args ...any) {
		fmt.Fprintf(console, "cloister-init: "+format+"\n", args...)
	}
	world := cfg.World
	if world == "" {
		w, err := DetectWorld(os.Getpid(), cfg.getenv)
		if err != nil {
			log("starting (world=unknown)")
			log("error: %v", err)
			return 1
		}
		world = w
	}
	log("starting (world=%s)", world)

	sigs := cfg.Signals
	if sigs == nil {
		ch := make(chan os.Signal, 32)
		signal.Notify(ch)
		defer signal.Stop(ch)
		sigs = ch
	}
	// Signals that arrive before the application exists have no one to go
	// to; Supervise forwards only what arrives while it runs.
	drain(sigs)

	switch world {
	case WorldVM:
		l, err := prepareVM(ctx, &cfg, log)
		code := 1
		if err == nil {
			drain(sigs)
			code = runApp(ctx, l, sigs, log)
		} else if se := (*StartError)(nil); errors.As(err, &se) {
			log("%v", err)
			code = se.Code
		} else {
			log("error: %v", err)
		}
		return powerOff(cfg.sys(), code, log)
	case WorldSandbox:
		if os.Getpid() != 1 {
			// Orphans of the application come to init, as they would to PID 1.
			_ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
		}
		l, err := prepareSandbox(ctx, &cfg, log)
		if se := (*StartError)(nil); errors.As(err, &se) {
			log("%v", err)
			return se.Code
		}
		if err != nil {
			log("error: %v", err)
			return 1
		}
		drain(sigs)
		return runApp(ctx, l, sigs, log)
	default:
		log("error: %v: %q", ErrWorld, world)
		return 1
	}
}

func drain(sigs <-chan os.Signal) {
	for {
		select {
		case <-sigs:
		default:
			return
		}
	}
}

// runApp supervises the application and reports how it ended.
func runApp(ctx context.Context, l Launch, sigs <-chan os.Signal, log logFunc) int {
	st, err := Supervise(ctx, l, sigs)
	if se := (*StartError)(nil); errors.As(err, &se) {
		log("%v", err)
		return se.Code
	}
	if err != nil {
		log("error: %v", err)
		return 1
	}
	log("application %s", st)
	return st.ExitCode()
}

// powerOff syncs and reboots; it returns code only if the reboot fails
// (or is fake).
func powerOff(sys Sys, code int, log logFunc) int {
	log("powering off (status %d)", code)
	sys.Sync()
	if err := sys.Reboot(); err != nil {
		log("error: reboot: %v", err)
	}
	return code
}

// prepareSandbox runs the sandbox flow up to the point where the
// application can be started.
func prepareSandbox(ctx context.Context, cfg *Config, log logFunc) (Launch, error) {
	vsockDir := cfg.getenv(EnvVsockDir)
	if vsockDir == "" {
		return Launch{}, fmt.Errorf("initproc: %s is unset; the sandbox launcher sets it to the directory of the emulated vsock sockets", EnvVsockDir)
	}
	dial := cfg.Dial
	if dial == nil {
		sock := filepath.Join(vsockDir, wellknown.VsockHostDir, wellknown.VsockSocketName(HeartbeatPort))
		dial = func(ctx context.Context) (Conn, error) { return DialUnix(ctx, sock) }
	}
	if err := Heartbeat(ctx, dial, cfg.Heartbeat); err != nil {
		return Launch{}, fmt.Errorf("%w (parent socket %s/host/vsock_%d)", err, vsockDir, HeartbeatPort)
	}
	log("heartbeat sent to the parent (%s/host/vsock_%d)", vsockDir, HeartbeatPort)

	root := cfg.root()
	ic, err := ReadImageConfig(filepath.Join(root, ".cloister"), false)
	if err != nil {
		return Launch{}, err
	}
	pass := map[string]string{}
	for _, k := range []string{EnvWorld, EnvVsockDir, EnvCID} {
		if v := cfg.getenv(k); v != "" {
			pass[k] = v
		}
	}
	return buildLaunch(root, ic, pass, true)
}
