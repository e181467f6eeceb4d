package sandbox

// childConfig is what the parent sends the child over the release pipe
// (JSON) once it has started it (in its cgroup from birth).
type childConfig struct {
	CID       uint32 `json:"cid"`
	MemoryMiB int    `json:"memory_mib"`
	PidsMax   int    `json:"pids_max"`
	// Ramdisks are the byte ranges of the ramdisk fds after the fixed ones,
	// in order (Size -1: the whole file).
	Ramdisks []ramdiskRange `json:"ramdisks"`
	Debug    bool           `json:"debug"`
	// Nitro: bind /dev/nsm and /dev/vsock, install the supervised seccomp
	// policy and send its listener (see Spec.Nitro).
	Nitro bool `json:"nitro,omitempty"`
}

// ramdiskRange is where a ramdisk lies in its descriptor.
type ramdiskRange struct {
	Offset int64 `json:"offset"`
	Size   int64 `json:"size"`
}

// File descriptors of the child (exec.Cmd.ExtraFiles start at 3).
const (
	fdConfig   = 3 // read: childConfig, then EOF
	fdStatus   = 4 // write: progress and errors; close-on-exec marks success
	fdHostDir  = 5 // open_tree clone of VsockDir/host
	fdGuestDir = 6 // the listener directory's tmpfs, a detached mount (fsmount)
	fdNotify   = 7 // Unix socket: the seccomp listener and the device files go to the parent
	fdRamdisk0 = 8 // read: ramdisk archives
)

// supervisorMessage is the one byte sent on fdNotify with the seccomp
// listener and O_PATH descriptors of /dev/nsm and /dev/vsock, in that
// order.
const supervisorMessage = 'S'

// Status-pipe messages: the child writes statusReady right before execve
// and statusError followed by a message when a step fails.
const (
	statusReady = 'R'
	statusError = 'E'
)
