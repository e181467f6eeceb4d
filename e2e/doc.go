// Package e2e holds Cloister's end-to-end tests: they build the real
// cloister and cloister-init binaries, build enclave images with the
// builder, start the daemon as a separate process and drive it through its
// API and CLI, with real enclaves (process sandboxes, and QEMU microVMs
// where the test says so). They need root; under CI=true a missing
// prerequisite fails them.
package e2e
