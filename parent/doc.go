// Package parent is the parent-instance side of Cloister: a client for the
// Cloister daemon (run, describe and terminate enclaves, read their console,
// connect to their vsock ports) and the JSON types of the daemon's API, which
// keep nitro-cli's field names so scripts written for nitro-cli keep working.
//
// The daemon itself lives in parent/daemon; its backends in parent/sandbox,
// parent/qemu and parent/nitro.
package parent
