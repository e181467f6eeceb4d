// Package kmod resolves Linux kernel modules to the .ko files that must be
// loaded, in load order, from a Debian-style /lib/modules/<version>/ tree.
//
// The enclave image builder uses it to put the modules a stock distribution
// kernel needs in a microVM (virtio-mmio and virtio-vsock) into the bootstrap
// ramdisk, and cloister-init loads them in the order returned here. Only the
// modules.dep and modules.builtin text files are read; nothing is loaded.
package kmod
