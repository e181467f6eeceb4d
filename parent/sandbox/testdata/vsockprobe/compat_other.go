//go:build !amd64

package main

func attackCompat([]string) {
	result("x32_socket_vsock", "ENOSYS")
	result("i386_socket_vsock", "signal: bad system call")
}

func compatInt80Child([]string) {}
