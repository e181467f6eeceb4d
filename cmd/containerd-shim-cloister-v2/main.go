// Command containerd-shim-cloister-v2 is containerd's runtime v2 shim for
// Cloister (runtime type io.containerd.cloister.v2): it runs each
// container as an enclave through the local Cloister daemon. containerd
// starts it; see docs/fleet.md.
package main

import (
	"os"

	"github.com/cloister/cloister/parent/shim"
)

func main() { os.Exit(shim.Main(os.Args[1:], os.Stdout, os.Stderr)) }
