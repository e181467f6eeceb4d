// Package wellknown holds the addresses and constants every Cloister
// component agrees on: the parent's CID, the reserved parent ports and the
// heartbeat byte. See docs/ARCHITECTURE.md ("Worlds and addresses").
package wellknown

import "strconv"

const (
	// ParentCID is the parent instance's vsock CID as seen from an enclave
	// (VMADDR_CID_PARENT on Nitro).
	ParentCID = 3
	// HostCID is VMADDR_CID_HOST; the microVM device treats it as an alias
	// of ParentCID.
	HostCID = 2
	// MinEnclaveCID and MaxEnclaveCID bound enclave CIDs (nitro-cli's rule).
	MinEnclaveCID = 4
	MaxEnclaveCID = 0xFFFFFFFE

	// HeartbeatPort is the parent port init sends the boot heartbeat to.
	HeartbeatPort = 9000
	// HeartbeatByte is the byte init sends and the parent echoes.
	HeartbeatByte = 0xB7

	// NSMPort is the parent port of the emulated security module ("NSM" in
	// ASCII) in the sandbox and microVM worlds.
	NSMPort = 0x4E534D
	// EgressPort is the parent port of the default egress proxy.
	EgressPort = 8000
)

// InitTaskReserve is how many tasks (processes and threads) the sandbox
// keeps for cloister-init beyond the enclave's pid limit: the launcher gives
// init a task limit (cgroup pids.max and RLIMIT_NPROC) this much higher than
// the enclave's, and init lowers RLIMIT_NPROC by it for the application, so a
// fork bomb exhausts the application's share, never the threads init needs
// to report the exit.
const InitTaskReserve = 32

// Names in an enclave's vsock directory, shared by the parent (which owns
// the per-enclave directory, parent/backend.Dir) and the enclave side
// (internal/transport, internal/initproc), which sees the same names under
// its mount point. See docs/ARCHITECTURE.md ("Per-enclave directory").
const (
	// VsockHostDir holds the host listeners, "<VsockHostDir>/vsock_<port>":
	// connections the enclave opens to the parent.
	VsockHostDir = "host"
	// VsockGuestDir holds the enclave's own listeners, "vsock_<port>"
	// (sandbox world only).
	VsockGuestDir = "guest"
	// VsockSocketPrefix starts every per-port socket name: "vsock_<port>"
	// (Firecracker's "<uds>_<port>" naming).
	VsockSocketPrefix = "vsock"
)

// VsockSocketName is the name of the socket for port in a host or guest
// listener directory: "vsock_<port>".
func VsockSocketName(port uint32) string {
	return VsockSocketPrefix + "_" + strconv.FormatUint(uint64(port), 10)
}
