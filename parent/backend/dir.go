package backend

import (
	"path/filepath"

	"github.com/cloister/cloister/internal/wellknown"
)

// Dir is an enclave's private directory on the parent,
// <state>/enclaves/<slot>/. It is the one owner of the directory's layout
// (docs/ARCHITECTURE.md, "Per-enclave directory"): every path in it is
// built by one of its methods. The names the enclave sees under its own
// mount point (host/, guest/, vsock_<port>) come from internal/wellknown.
type Dir string

// Path is the directory itself.
func (d Dir) Path() string { return string(d) }

func (d Dir) join(name ...string) string {
	return filepath.Join(append([]string{string(d)}, name...)...)
}

// Record is record.json: what the daemon knows about the enclave.
func (d Dir) Record() string { return d.join("record.json") }

// MonitorSpec is monitor.json: the daemon's job for the monitor.
func (d Dir) MonitorSpec() string { return d.join("monitor.json") }

// Exit is exit.json: how the enclave ended.
func (d Dir) Exit() string { return d.join("exit.json") }

// Console is console.log, the kept console output.
func (d Dir) Console() string { return d.join("console.log") }

// ConsoleRotated is console.log.1, the previous console log.
func (d Dir) ConsoleRotated() string { return d.join("console.log.1") }

// MonitorSock is monitor.sock, the monitor's control socket.
func (d Dir) MonitorSock() string { return d.join("monitor.sock") }

// MonitorLog is monitor.log, the monitor's own log.
func (d Dir) MonitorLog() string { return d.join("monitor.log") }

// VsockSock is vsock.sock, the hybrid CONNECT socket (host → enclave).
func (d Dir) VsockSock() string { return d.join("vsock.sock") }

// HostDir is host/, the host listeners' directory.
func (d Dir) HostDir() string { return d.join(wellknown.VsockHostDir) }

// HostListenerBase is the base of the host listeners' paths,
// host/vsock: the listener for port is HostListenerBase()+"_<port>"
// (hybrid.Listen's and the vsock device's convention).
func (d Dir) HostListenerBase() string {
	return d.join(wellknown.VsockHostDir, wellknown.VsockSocketPrefix)
}

// HostListener is host/vsock_<port>: where the enclave's connections to
// the parent's port arrive.
func (d Dir) HostListener(port uint32) string {
	return d.join(wellknown.VsockHostDir, wellknown.VsockSocketName(port))
}

// GuestDir is guest/: a leftover name from before the sandbox's listener
// directory became a detached tmpfs; cleaned up when an enclave ends.
func (d Dir) GuestDir() string { return d.join(wellknown.VsockGuestDir) }

// VM is the vm link: the microVM backend's link to QEMU's own files.
func (d Dir) VM() string { return d.join("vm") }
