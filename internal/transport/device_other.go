//go:build !unix

package transport

// kernelDevice: there is no Nitro security module device here.
func kernelDevice(string) bool { return false }
