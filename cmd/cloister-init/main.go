// Command cloister-init is PID 1 of every Cloister enclave: /init in the
// bootstrap ramdisk of a VM image (Nitro or QEMU microVM) and
// /.cloister/init in the process sandbox. It must be linked statically
// (CGO_ENABLED=0 go build ./cmd/cloister-init).
//
// All logic lives in internal/initproc; see that package for the contract.
package main

import (
	"os"

	"github.com/cloister/cloister/internal/initproc"
)

func main() { os.Exit(initproc.Main()) }
