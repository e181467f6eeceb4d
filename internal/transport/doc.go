// Package transport is the enclave side of vsock: it gives the enclave SDK
// one Listen/Dial API that works in every world an enclave runs in, so
// applications never see the difference.
//
//   - nitro and microvm: real AF_VSOCK sockets (github.com/mdlayher/vsock).
//   - sandbox: AF_VSOCK is forbidden, and vsock is emulated over Unix sockets
//     in the directory the launcher bind-mounts at $CLOISTER_VSOCK_DIR:
//     listening on port P creates "guest/vsock_P" there (the daemon's
//     hybrid-vsock server connects to it when the host dials the enclave),
//     and dialing (CID 3, P) connects to "host/vsock_P" (a host listener).
//
// Connections in the sandbox world report vsock addresses like real ones, and
// failures carry the same error classes as the host side
// ([ErrNoListener], [ErrTimeout], [ErrReset], shared with internal/hybrid).
package transport
