package parent

import (
	"encoding/json"
	"time"
)

// HashAlgorithm is the value nitro-cli prints for Measurements.HashAlgorithm.
const HashAlgorithm = "Sha384 { ... }"

// Measurements are an image's PCRs as nitro-cli prints them: lower-case hex.
type Measurements struct {
	HashAlgorithm string `json:"HashAlgorithm"`
	PCR0          string `json:"PCR0"`
	PCR1          string `json:"PCR1"`
	PCR2          string `json:"PCR2"`
	PCR8          string `json:"PCR8,omitempty"`
}

// RunRequest asks the daemon to launch an enclave. Exactly one of CPUCount
// and CPUIDs must be set. Field names follow nitro-cli's --config JSON.
type RunRequest struct {
	EIFPath    string `json:"eif_path"`
	MemoryMiB  int    `json:"memory_mib"`
	CPUCount   int    `json:"cpu_count,omitempty"`
	CPUIDs     []int  `json:"cpu_ids,omitempty"`
	EnclaveCID uint64 `json:"enclave_cid,omitempty"`
	DebugMode  bool   `json:"debug_mode,omitempty"`
	// AttachConsole is accepted for compatibility with nitro-cli's --config
	// files; the CLI, not the daemon, attaches the console.
	AttachConsole bool   `json:"attach_console,omitempty"`
	EnclaveName   string `json:"enclave_name,omitempty"`
	// Egress, when set, is the enclave's own egress allowlist (Cloister's
	// addition): its egress proxies reach a destination only when both the
	// daemon's allowlist and this one permit it. It can only narrow the
	// daemon's: an entry the daemon's allowlist does not cover fails the
	// launch (ErrInvalidArgument). Nil means the daemon's allowlist alone;
	// an empty list allows no destination.
	Egress *EgressPolicy `json:"egress,omitempty"`
}

// MaxEgressEntries bounds an enclave's own egress allowlist.
const MaxEgressEntries = 256

// EgressPolicy is an enclave's own egress allowlist, in the JSON form of
// vsock-proxy's allowlist file ({"allowlist": [{"address": …, "port": …}]}).
type EgressPolicy struct {
	Allowlist []EgressEntry `json:"allowlist"`
}

// EgressEntry is one destination of an egress allowlist: Address is a host
// name, an IP address or a CIDR prefix; Port is the TCP port.
type EgressEntry struct {
	Address string `json:"address"`
	Port    int    `json:"port"`
}

// RunResult is run-enclave's output, field for field as nitro-cli prints it.
type RunResult struct {
	EnclaveName  string `json:"EnclaveName"`
	EnclaveID    string `json:"EnclaveID"`
	ProcessID    int    `json:"ProcessID"`
	EnclaveCID   uint64 `json:"EnclaveCID"`
	NumberOfCPUs int    `json:"NumberOfCPUs"`
	CPUIDs       []int  `json:"CPUIDs"`
	MemoryMiB    int    `json:"MemoryMiB"`
}

// Enclave states. RUNNING and TERMINATING are nitro-cli's; STARTING and
// EXITED are Cloister's additions (describe-enclaves shows EXITED enclaves
// only when asked, with their exit status and kept console log).
const (
	StateStarting    = "STARTING"
	StateRunning     = "RUNNING"
	StateTerminating = "TERMINATING"
	StateExited      = "EXITED"
)

// Flags values.
const (
	FlagsDebug = "DEBUG_MODE"
	FlagsNone  = "NONE"
)

// ExitStatus says how an enclave ended.
type ExitStatus struct {
	Code   int       `json:"Code"`
	Signal string    `json:"Signal,omitempty"`
	Reason string    `json:"Reason"`
	Time   time.Time `json:"Time"`
}

// EnclaveDescription is one element of describe-enclaves' array. The fields
// up to Metadata are nitro-cli's; the rest are Cloister's additions.
type EnclaveDescription struct {
	EnclaveName  string          `json:"EnclaveName,omitempty"`
	EnclaveID    string          `json:"EnclaveID"`
	ProcessID    int             `json:"ProcessID"`
	EnclaveCID   uint64          `json:"EnclaveCID"`
	NumberOfCPUs int             `json:"NumberOfCPUs"`
	CPUIDs       []int           `json:"CPUIDs"`
	MemoryMiB    int             `json:"MemoryMiB"`
	State        string          `json:"State"`
	Flags        string          `json:"Flags"`
	Measurements Measurements    `json:"Measurements"`
	ImageName    string          `json:"ImageName,omitempty"`
	ImageVersion string          `json:"ImageVersion,omitempty"`
	Metadata     json.RawMessage `json:"Metadata,omitempty"`

	Backend    string      `json:"Backend,omitempty"`
	EIFPath    string      `json:"EIFPath,omitempty"`
	StartTime  time.Time   `json:"StartTime,omitzero"`
	ExitStatus *ExitStatus `json:"ExitStatus,omitempty"`
	// VsockSocket is the hybrid-vsock socket on the parent through which
	// host programs reach the enclave's ports ("CONNECT <port>\n").
	VsockSocket string `json:"VsockSocket,omitempty"`
	// HostListenerBase is where a host program listens for the enclave's
	// connections to the parent's port P: the Unix socket
	// "<HostListenerBase>_<P>" (sandbox and microVM worlds, while the
	// enclave runs; root only).
	HostListenerBase string `json:"HostListenerBase,omitempty"`
	// ConsoleLog is the enclave's kept console log on the parent (root only).
	ConsoleLog string `json:"ConsoleLog,omitempty"`
	// Egress is the enclave's own egress allowlist, which narrows the
	// daemon's (absent when the enclave has none: the daemon's applies).
	Egress *EgressPolicy `json:"Egress,omitempty"`
}

// TerminateResult is terminate-enclave's output.
type TerminateResult struct {
	EnclaveName string `json:"EnclaveName,omitempty"`
	EnclaveID   string `json:"EnclaveID"`
	Terminated  bool   `json:"Terminated"`
}

// Info describes the daemon.
type Info struct {
	Backend   string `json:"backend"`
	Version   string `json:"version"`
	CPUPool   []int  `json:"cpu_pool"`
	FreeCPUs  []int  `json:"free_cpus"`
	MemoryMiB int    `json:"memory_mib"`
	FreeMiB   int    `json:"free_memory_mib"`
	StateDir  string `json:"state_dir"`
	// DevRootPEM is the development root that signs attestation documents
	// of enclaves in the sandbox and microVM worlds (empty on Nitro).
	DevRootPEM string `json:"dev_root_pem,omitempty"`
}

// APIError is the body of every non-2xx response of the daemon's API.
type APIError struct {
	// Code is nitro-cli's error code where one applies (e.g. "E26"), else "".
	Code    string `json:"code,omitempty"`
	Kind    string `json:"kind"`
	Message string `json:"message"`
}
