//go:build linux

package sandbox

import (
	"context"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/cloister/cloister/internal/nsm/nsmdev"
	"github.com/cloister/cloister/internal/unotify"
	"github.com/cloister/cloister/parent/backend"
)

// supervisor is a running Spec.Nitro supervisor and what it holds.
type supervisor struct {
	l       *unotify.Listener
	ns      *unotify.NetNS
	devs    []*os.File
	sup     *unotify.Supervisor
	done    chan struct{}
	stopped bool
}

// startSupervisor receives the launcher's seccomp listener and the
// descriptors of its /dev/nsm and /dev/vsock (sent before it executed
// init, so they are queued on the socket by now) and starts answering
// the sandbox's notified calls. init may already wait in such a call.
func (s *starter) startSupervisor(context.Context) error {
	buf := make([]byte, 1)
	oob := make([]byte, unix.CmsgSpace(3*4))
	n, oobn, flags, _, err := unix.Recvmsg(int(s.supR.Fd()), buf, oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		return fmt.Errorf("%w: the launcher sent no seccomp listener: %w", ErrSetup, err)
	}
	var fds []int
	if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
		for _, m := range msgs {
			if r, err := unix.ParseUnixRights(&m); err == nil {
				fds = append(fds, r...)
			}
		}
	}
	if n != 1 || buf[0] != supervisorMessage || len(fds) != 3 || flags&unix.MSG_CTRUNC != 0 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return fmt.Errorf("%w: the launcher's seccomp listener message is malformed", ErrSetup)
	}
	sv := &supervisor{done: make(chan struct{})}
	sv.devs = []*os.File{os.NewFile(uintptr(fds[1]), "/dev/nsm"), os.NewFile(uintptr(fds[2]), "/dev/vsock")}
	if sv.l, err = unotify.NewListener(fds[0]); err != nil {
		unix.Close(fds[0])
		sv.release()
		return err
	}
	pidfd, err := unix.PidfdOpen(s.cmd.Process.Pid, 0)
	if err != nil {
		sv.release()
		return fmt.Errorf("sandbox: pidfd of init: %w", err)
	}
	sv.ns, err = unotify.EnterNetNS(pidfd)
	unix.Close(pidfd)
	if err != nil {
		sv.release()
		return err
	}
	nitro := s.spec.Nitro
	cfg := unotify.Config{
		CID: s.spec.CID, ParentDir: backend.Dir(s.spec.VsockDir).HostDir(), GuestDir: s.guestDir, NetNS: sv.ns,
		HostUID: s.hostID, IDs: idsPer, NSMDevice: sv.devs[0], VsockDevice: sv.devs[1],
		MaxInFlight: nitro.MaxInFlight, MaxSockets: nitro.MaxSockets, Logger: nitro.Logger,
	}
	if nitro.Limiter != nil {
		cfg.Limiter = nitro.Limiter
	}
	if rt := nitro.NSM; rt != nil {
		cfg.NSM = func(ctx context.Context, mem unotify.Memory, cmd uint32, arg uint64) syscall.Errno {
			return nsmdev.Ioctl(ctx, mem, cmd, arg, rt)
		}
	}
	if sv.sup, err = unotify.New(sv.l, cfg); err != nil {
		sv.release()
		return err
	}
	go func() {
		defer close(sv.done)
		if err := sv.sup.Run(context.Background()); err != nil && nitro.Logger != nil {
			nitro.Logger.Error("sandbox: the supervisor stopped", "err", err)
		}
	}()
	s.sup = sv
	return nil
}

// stop closes the listener (calls still waiting fail, and the sandbox's
// later notified calls fail with ENOSYS), waits for the supervisor and
// releases what it holds. It is safe on nil and more than once.
func (sv *supervisor) stop() {
	if sv == nil || sv.stopped {
		return
	}
	sv.stopped = true
	_ = sv.l.Close()
	if sv.sup != nil {
		<-sv.done
	}
	sv.release()
}

func (sv *supervisor) release() {
	if sv.l != nil {
		_ = sv.l.Close()
	}
	if sv.ns != nil {
		sv.ns.Close()
	}
	for _, f := range sv.devs {
		f.Close()
	}
}

// SupervisorStats returns the counters of the sandbox's supervisor, or
// false when it has none (no Spec.Nitro).
func (p *Process) SupervisorStats() (unotify.Stats, bool) {
	if p.sup == nil || p.sup.sup == nil {
		return unotify.Stats{}, false
	}
	return p.sup.sup.Stats(), true
}

// SupervisorStats returns the counters of the enclave's supervisor (see
// Process.SupervisorStats), for the monitor's GET /stats.
func (i *instance) SupervisorStats() (unotify.Stats, bool) { return i.p.SupervisorStats() }
