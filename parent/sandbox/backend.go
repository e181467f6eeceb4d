package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"

	"github.com/cloister/cloister/internal/cgroups"
	"github.com/cloister/cloister/internal/hybrid"
	"github.com/cloister/cloister/internal/ratelimit"
	"github.com/cloister/cloister/internal/unotify"
	"github.com/cloister/cloister/parent/backend"
)

// Backend runs enclaves as process sandboxes. It implements
// backend.Backend and backend.Cleaner for the daemon.
type Backend struct {
	// CgroupParent is the cgroup under which enclave groups are created
	// ("" means "cloister").
	CgroupParent string
	// PidsMax bounds the processes of one enclave (0 means 1024).
	PidsMax int
	// NoNitro leaves out the emulation of a Nitro enclave's AF_VSOCK,
	// /dev/nsm and /dev/vsock for programs that do not use the SDK
	// (Spec.Nitro); by default every enclave has it.
	NoNitro bool
}

var (
	_ backend.Backend = (*Backend)(nil)
	_ backend.Cleaner = (*Backend)(nil)
)

// Kind returns backend.KindSandbox.
func (*Backend) Kind() backend.Kind { return backend.KindSandbox }

// Capabilities: the sandbox runs no-kernel images, its security module is
// the daemon's emulator and its host listeners are Unix sockets.
func (*Backend) Capabilities() backend.Capabilities {
	return backend.Capabilities{NoKernel: true, EmulatedNSM: true, HostSockets: true}
}

// Check reports whether this host can run sandboxes: root, user namespaces,
// the cgroup controllers the sandbox needs, and (unless NoNitro) what the
// seccomp supervisor needs (unotify.CheckHost).
func (b *Backend) Check(ctx context.Context) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: the sandbox backend needs root (run the daemon with sudo)", backend.ErrUnavailable)
	}
	if _, err := os.Stat("/proc/self/ns/user"); err != nil {
		return fmt.Errorf("%w: user namespaces are not available: %v (see cloister doctor)", backend.ErrUnavailable, err)
	}
	if _, err := cgroups.New(cgroups.Config{Parent: b.CgroupParent}); err != nil {
		return fmt.Errorf("%w: %v (see cloister doctor)", backend.ErrUnavailable, err)
	}
	if !b.NoNitro {
		// The emulation of /dev/nsm and AF_VSOCK needs it; without it
		// they would silently answer as /dev/null.
		if err := unotify.CheckHost(); err != nil {
			return fmt.Errorf("%w: %v", backend.ErrUnavailable, err)
		}
	}
	return nil
}

// HostListen listens on the enclave's host-side socket for port
// (D/host/vsock_<port>). The socket is mode 0666 and D/host searchable,
// because the sandbox runs under unprivileged host uids; only the sandbox
// it is bind-mounted into can reach it.
func (*Backend) HostListen(ctx context.Context, spec backend.Spec, port uint32) (net.Listener, error) {
	dir := spec.Dir.HostDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	l, err := hybrid.Listen(spec.Dir.HostListenerBase(), port)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(spec.Dir.HostListener(port), 0o666); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// Launch starts the sandbox of spec in steps: "check image" (the image's
// layout and CRC, and its ramdisks: the bootstrap and the customer one at
// least), "create host directory", then [Start]'s (the ramdisks are read in place from the image). A
// failure is a [*backend.StepError] naming the step, returned once what
// the earlier steps created is released.
func (b *Backend) Launch(ctx context.Context, spec backend.Spec) (backend.Instance, error) {
	var ramdisks []Section
	err := backend.RunSteps(ctx, backend.KindSandbox, []backend.Step{
		{Name: "check image", Do: func(context.Context) error {
			secs, err := backend.ImageSections(spec.Image, spec.EIFPath, spec.ImageVerified)
			if err != nil {
				return err
			}
			if len(secs.Ramdisks) < 2 {
				return fmt.Errorf("%w: %s has %d ramdisk(s); the sandbox needs the bootstrap and the customer ramdisk that build-enclave writes", backend.ErrUnsupportedImage, spec.EIFPath, len(secs.Ramdisks))
			}
			// The launcher reads the ramdisks in place, from the sealed
			// image: nothing of the image is copied or touches the disk.
			for _, rd := range secs.Ramdisks {
				ramdisks = append(ramdisks, Section{File: spec.Image, Offset: rd.Offset, Size: rd.Size})
			}
			return nil
		}},
		{Name: "create host directory", Do: func(context.Context) error {
			return os.MkdirAll(spec.Dir.HostDir(), 0o755)
		}},
	})
	if err != nil {
		return nil, err
	}
	sspec := Spec{
		ID: spec.ID, CID: spec.CID, RamdiskSections: ramdisks, MemoryMiB: spec.MemoryMiB, CPUs: spec.CPUs,
		PidsMax: b.PidsMax, VsockDir: spec.Dir.Path(), Console: spec.Console, Debug: spec.Debug, CgroupParent: b.CgroupParent,
	}
	if !b.NoNitro {
		pace, err := notificationPace(len(spec.CPUs))
		if err != nil {
			return nil, err
		}
		sspec.Nitro = &Nitro{NSM: spec.NSM, Limiter: pace}
	}
	p, err := Start(ctx, sspec)
	if err != nil {
		return nil, err
	}
	inst := &instance{p: p, done: make(chan struct{})}
	go inst.wait()
	return inst, nil
}

// The supervisor's work for a sandbox is done in the monitor, outside the
// sandbox's cgroup (about 15 µs of CPU for a notified call that it lets
// run, on the development machine): the calls it receives are paced per
// vCPU of the enclave, so that a sandbox flooding it costs the host at
// most about a third of a core per vCPU. Ordinary programs make a few
// such calls per connection.
const (
	NotificationsPerSecondPerCPU = 20000
	NotificationBurstPerCPU      = 2000
)

// notificationPace returns the supervisor's pacing for an enclave with
// cpus vCPUs.
func notificationPace(cpus int) (*ratelimit.Bucket, error) {
	cpus = max(cpus, 1)
	return ratelimit.New(ratelimit.Config{
		Rate:  float64(NotificationsPerSecondPerCPU * cpus),
		Burst: NotificationBurstPerCPU * cpus,
	})
}

// Cleanup kills and removes what is left of an enclave whose monitor died:
// its cgroup (and every process in it).
func (b *Backend) Cleanup(ctx context.Context, spec backend.Spec) error {
	return backend.CleanupCgroup(ctx, b.CgroupParent, spec.ID)
}

type instance struct {
	p    *Process
	done chan struct{}

	mu   sync.Mutex
	exit backend.Exit
}

func (i *instance) wait() {
	st, err := i.p.Wait()
	x := backend.Exit{Code: st.ExitCode(), Reason: st.String()}
	if st.Signal != 0 {
		x.Signal = st.Signal.String()
	}
	if st.OOMKills > 0 {
		x.Reason += ": out of memory"
	}
	if err != nil {
		x.Reason = fmt.Sprintf("%s (wait: %v)", x.Reason, err)
	}
	i.mu.Lock()
	i.exit = x
	i.mu.Unlock()
	close(i.done)
}

func (i *instance) Pid() int              { return i.p.Pid() }
func (i *instance) Done() <-chan struct{} { return i.done }

func (i *instance) Exit() backend.Exit {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.exit
}

// Terminate asks init to stop the application (SIGTERM, forwarded to it),
// and kills the sandbox if it has not ended after backend.TerminateGrace.
func (i *instance) Terminate(ctx context.Context) error {
	return backend.TerminateProcess(ctx, i.done, backend.TerminateGrace,
		func() error { return i.p.Signal(syscall.SIGTERM) },
		func() error {
			if err := i.p.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
				return err
			}
			return nil
		})
}

// Dial connects to the enclave's listener for port (vsock_<port> in its
// listener directory, see [Process.GuestDir]) and sends the relay marker, so the enclave reads this connection itself as
// the stream (see hybrid.ListenGuest).
func (i *instance) Dial(ctx context.Context, port uint32) (net.Conn, error) {
	c, err := i.guest().ConnectGuest(ctx, port)
	if err != nil {
		return nil, fmt.Errorf("sandbox: nobody listening on port %d in the enclave: %w", port, err)
	}
	return c, nil
}

// Handoff passes the host client's socket to the enclave's listener for
// port instead of relaying (hybrid.Handoff; see hybrid.UnixConnector.Handoff):
// it writes ok to client once the enclave's listener is connected.
func (i *instance) Handoff(ctx context.Context, port uint32, client *net.UnixConn, ok []byte) error {
	if err := i.guest().Handoff(ctx, port, client, ok); err != nil {
		return fmt.Errorf("sandbox: handing a connection to port %d of the enclave: %w", port, err)
	}
	return nil
}

var _ hybrid.Handoff = (*instance)(nil)

// guest reaches the enclave's listeners in its private listener directory,
// by descriptor and without following links (hybrid.UnixConnector).
func (i *instance) guest() hybrid.UnixConnector {
	return hybrid.UnixConnector{Root: i.p.GuestDir()}
}
