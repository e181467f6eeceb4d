package transport

import (
	"fmt"
	"os"
)

// World is the kind of environment an enclave runs in.
type World int

// The worlds. WorldAuto (the zero value) asks for detection.
const (
	WorldAuto    World = iota // detect with Detect
	WorldNitro                // real Nitro enclave: AF_VSOCK, the kernel's /dev/nsm
	WorldMicroVM              // QEMU microVM: AF_VSOCK, /dev/nsm served by cloister-init (CUSE)
	WorldSandbox              // process sandbox: vsock emulated over Unix sockets
)

// Environment variables set by the sandbox launcher (conventions.md).
const (
	EnvWorld    = "CLOISTER_WORLD"     // forces a world: nitro, microvm or sandbox
	EnvVsockDir = "CLOISTER_VSOCK_DIR" // sandbox: the vsock directory (host/, guest/)
	EnvCID      = "CLOISTER_CID"       // sandbox: this enclave's CID, decimal
)

// DefaultVsockDir is where the sandbox launcher mounts the vsock directory;
// used when $CLOISTER_VSOCK_DIR is unset.
const DefaultVsockDir = "/run/cloister/vsock"

// nsmDevice is the security module's device. It is the kernel's misc
// device (character major 10) only in a Nitro enclave (or a VM with the
// Linux nsm driver); in a microVM cloister-init serves it through CUSE,
// whose devices never get major 10.
const nsmDevice = "/dev/nsm"

// miscMajor is MISC_MAJOR, the major number of misc devices such as the
// nsm driver's /dev/nsm.
const miscMajor = 10

// String returns "auto", "nitro", "microvm" or "sandbox".
func (w World) String() string {
	switch w {
	case WorldAuto:
		return "auto"
	case WorldNitro:
		return "nitro"
	case WorldMicroVM:
		return "microvm"
	case WorldSandbox:
		return "sandbox"
	}
	return fmt.Sprintf("World(%d)", int(w))
}

// ParseWorld parses "nitro", "microvm", "sandbox" or "auto" (exact,
// lower-case).
func ParseWorld(s string) (World, error) {
	for _, w := range []World{WorldAuto, WorldNitro, WorldMicroVM, WorldSandbox} {
		if s == w.String() {
			return w, nil
		}
	}
	return 0, fmt.Errorf("transport: unknown world %q (want nitro, microvm, sandbox or auto)", s)
}

// Detect returns the world this process runs in, checking in order:
//  1. $CLOISTER_WORLD names a world (nitro, microvm, sandbox): that world
//     (an unknown value or "auto" is ignored);
//  2. $CLOISTER_VSOCK_DIR is set (non-empty): sandbox;
//  3. /dev/nsm is the kernel's misc device (character major 10): nitro;
//  4. otherwise: microvm (AF_VSOCK, and a /dev/nsm served by cloister-init
//     through CUSE, or none).
func Detect() World {
	return detect(os.Getenv, kernelDevice)
}

func detect(getenv func(string) string, kernelNSM func(string) bool) World {
	if w, err := ParseWorld(getenv(EnvWorld)); err == nil && w != WorldAuto {
		return w
	}
	if getenv(EnvVsockDir) != "" {
		return WorldSandbox
	}
	if kernelNSM(nsmDevice) {
		return WorldNitro
	}
	return WorldMicroVM
}
