//go:build linux

package sandbox

import "syscall"

// noFollow refuses a symbolic link as the final path element.
const noFollow = syscall.O_NOFOLLOW
