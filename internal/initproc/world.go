package initproc

import (
	"errors"
	"fmt"
)

// World is the environment init runs in.
type World string

const (
	// WorldVM is a Nitro enclave or a QEMU microVM: init is PID 1 of its own
	// kernel and CLOISTER_WORLD is unset.
	WorldVM World = "vm"
	// WorldSandbox is the OS-level process sandbox: the launcher sets
	// CLOISTER_WORLD=sandbox.
	WorldSandbox World = "sandbox"
)

// Environment variables of the sandbox world (see the conventions); init
// passes them through to the application.
const (
	EnvWorld    = "CLOISTER_WORLD"
	EnvVsockDir = "CLOISTER_VSOCK_DIR"
	EnvCID      = "CLOISTER_CID"
)

// ErrWorld means init cannot tell which world it runs in.
var ErrWorld = errors.New("initproc: unknown world")

// DetectWorld decides the world from init's process ID and environment:
// CLOISTER_WORLD=sandbox selects [WorldSandbox]; an unset (or empty)
// CLOISTER_WORLD selects [WorldVM] when pid is 1. Anything else — another
// CLOISTER_WORLD value, or CLOISTER_WORLD unset in a process that is not PID
// 1 — fails with [ErrWorld].
func DetectWorld(pid int, getenv func(string) string) (World, error) {
	switch v := getenv(EnvWorld); v {
	case string(WorldSandbox):
		return WorldSandbox, nil
	case "":
		if pid == 1 {
			return WorldVM, nil
		}
		return "", fmt.Errorf("%w: %s is unset and this is process %d, not PID 1; cloister-init runs as PID 1 of an enclave VM or under the sandbox launcher with %s=sandbox", ErrWorld, EnvWorld, pid, EnvWorld)
	default:
		return "", fmt.Errorf("%w: %s=%q (the only value init accepts is %q; leave it unset in a VM)", ErrWorld, EnvWorld, v, WorldSandbox)
	}
}
