package sandbox

// childConfig is what the parent sends the child over the release pipe
// (JSON), once the child is in its cgroup.
type childConfig struct {
	CID       uint32 `json:"cid"`
	MemoryMiB int    `json:"memory_mib"`
	PidsMax   int    `json:"pids_max"`
	// Ramdisks are the byte ranges of the ramdisk fds after the fixed ones,
	// in order (Size -1: the whole file).
	Ramdisks []ramdiskRange `json:"ramdisks"`
	Debug    bool           `json:"debug"`
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
	fdRamdisk0 = 7 // read: ramdisk archives
)

// Status-pipe messages: the child writes statusReady right before execve
// and statusError followed by a message when a step fails.
const (
	statusReady = 'R'
	statusError = 'E'
)
