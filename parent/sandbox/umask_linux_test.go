//go:build linux

package sandbox

import "syscall"

func umask(m int) int { return syscall.Umask(m) }
