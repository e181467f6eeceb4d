package main

import (
	"os"
	"os/exec"

	"golang.org/x/sys/unix"
)

// int80 makes a system call through the i386 compat entry (int $0x80).
func int80(trap, a1, a2, a3 uintptr) (r uintptr)

// i386 and x32 numbers of socket(2).
const (
	i386Socket = 359
	x32Bit     = 0x40000000
	x32Socket  = x32Bit | 41
)

// attackCompat asks for socket(AF_VSOCK) through the other ABIs of
// x86_64, which have other system call numbers: x32 (bit 30 set, same
// audit architecture) and i386 (int $0x80, audit architecture i386), the
// latter in a child (the filter kills a process that uses another
// architecture).
func attackCompat([]string) {
	fd, _, e := unix.RawSyscall(x32Socket, unix.AF_VSOCK, unix.SOCK_STREAM, 0)
	if e != 0 {
		result("x32_socket_vsock", errName(e))
	} else {
		result("x32_socket_vsock", "socket "+isUnixSocket(int(fd)))
	}
	cmd := exec.Command("/proc/self/exe", "compat-int80-child")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok && ee.ProcessState != nil {
		result("i386_socket_vsock", ee.ProcessState.String())
	} else {
		result("i386_socket_vsock", errName(err))
	}
}

// compatInt80Child is socket(AF_VSOCK, SOCK_STREAM, 0) by int $0x80.
func compatInt80Child([]string) {
	r := int80(i386Socket, unix.AF_VSOCK, unix.SOCK_STREAM, 0)
	if int32(r) >= 0 {
		result("int80", "socket")
	} else {
		result("int80", errName(unix.Errno(-int32(r))))
	}
	os.Exit(0)
}
