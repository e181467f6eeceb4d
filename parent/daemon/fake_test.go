package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/cloister/cloister/internal/hybrid"
	"github.com/cloister/cloister/internal/wellknown"
	"github.com/cloister/cloister/parent/backend"
)

// fakeBackend stands in for a real backend in the control-plane tests: its
// "enclave" is a goroutine inside the monitor process that speaks the same
// hybrid-vsock protocol a sandboxed init would. Its behaviour is chosen by
// the enclave name:
//
//	crash-N    heartbeat, print to the console, then exit with status N
//	silent     never send the heartbeat
//	anything   heartbeat, then serve an echo service on port 5000 until terminated
type fakeBackend struct{}

func (fakeBackend) Kind() backend.Kind { return backend.KindSandbox }
func (fakeBackend) Capabilities() backend.Capabilities {
	return backend.Capabilities{NoKernel: true, EmulatedNSM: true, HostSockets: true}
}
func (fakeBackend) Check(ctx context.Context) error { return nil }

func (fakeBackend) HostListen(ctx context.Context, spec backend.Spec, port uint32) (net.Listener, error) {
	return hybrid.Listen(spec.Dir.HostListenerBase(), port)
}

func (fakeBackend) Launch(ctx context.Context, spec backend.Spec) (backend.Instance, error) {
	// The fake enclave's listeners go in D/guest, as the sandbox's once did.
	if err := os.MkdirAll(spec.Dir.GuestDir(), 0o700); err != nil {
		return nil, err
	}
	f := &fakeInstance{spec: spec, done: make(chan struct{}), stop: make(chan struct{})}
	go f.run()
	return f, nil
}

type fakeInstance struct {
	spec     backend.Spec
	done     chan struct{}
	stop     chan struct{}
	stopOnce sync.Once
	exit     backend.Exit
}

func (f *fakeInstance) Pid() int              { return os.Getpid() }
func (f *fakeInstance) Done() <-chan struct{} { return f.done }
func (f *fakeInstance) Exit() backend.Exit    { return f.exit }

func (f *fakeInstance) Terminate(ctx context.Context) error {
	f.stopOnce.Do(func() { close(f.stop) })
	select {
	case <-f.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (f *fakeInstance) Dial(ctx context.Context, port uint32) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "unix", filepath.Join(f.spec.Dir.GuestDir(), wellknown.VsockSocketName(port)))
}

func (f *fakeInstance) console(format string, args ...any) {
	fmt.Fprintf(f.spec.Console, format+"\n", args...)
}

func (f *fakeInstance) run() {
	defer close(f.done)
	f.exit = backend.Exit{Code: 0, Reason: "exited with status 0"}
	f.console("fake init: starting %s", f.spec.Name)
	if f.spec.Name == "silent" {
		<-f.stop
		f.exit = backend.Exit{Code: -1, Signal: "SIGKILL", Reason: "terminated"}
		return
	}
	if err := f.heartbeat(); err != nil {
		f.console("fake init: heartbeat: %v", err)
		f.exit = backend.Exit{Code: 1, Reason: "exited with status 1"}
		return
	}
	if strings.HasPrefix(f.spec.Name, "crash-") {
		var code int
		fmt.Sscanf(f.spec.Name, "crash-%d", &code)
		f.console("fake app: crashing with %d", code)
		f.exit = backend.Exit{Code: code, Reason: fmt.Sprintf("exited with status %d", code)}
		return
	}
	l, err := net.Listen("unix", filepath.Join(f.spec.Dir.GuestDir(), wellknown.VsockSocketName(5000)))
	if err != nil {
		f.exit = backend.Exit{Code: 1, Reason: err.Error()}
		return
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	f.console("fake app: echo service ready")
	<-f.stop
	f.exit = backend.Exit{Code: -1, Signal: "SIGKILL", Reason: "terminated"}
}

func (f *fakeInstance) heartbeat() error {
	path := f.spec.Dir.HostListener(wellknown.HeartbeatPort)
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write([]byte{wellknown.HeartbeatByte}); err != nil {
		return err
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return err
	}
	if b[0] != wellknown.HeartbeatByte {
		return errors.New("bad heartbeat echo")
	}
	return nil
}
