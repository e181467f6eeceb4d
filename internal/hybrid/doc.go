// Package hybrid implements "hybrid vsock": vsock connections carried over
// Unix-domain sockets, the protocol Firecracker introduced and
// cloud-hypervisor and rust-vmm's vhost-device-vsock copied. It is the host
// side of every Cloister world that has no kernel AF_VSOCK between parent and
// enclave (the process sandbox, and the QEMU microVM whose vsock device the
// daemon serves), and it also talks to a real Firecracker or cloud-hypervisor
// VMM.
//
// Per enclave the daemon owns a directory D:
//
//   - D/vsock.sock is the CONNECT socket (host → enclave). A client connects,
//     writes "CONNECT <port>\n", and reads "OK <n>\n"; the stream that follows
//     is the connection to the enclave's port. [Dial] is the client, [Server]
//     the server (a [Connector] reaches the enclave side).
//   - D/host/vsock_<port> are host listeners for connections the enclave opens
//     to (CID 3, port): Firecracker's "<uds_path>_<port>" naming. [Listen]
//     creates one and [Registry] manages the set for one enclave.
//   - vsock_<port> in the enclave's listener directory (sandbox world only;
//     a private tmpfs the sandbox backend reaches by descriptor) are the
//     enclave's own listeners ([ListenGuest]); [UnixConnector] dials them
//     for the [Server], never following a link the enclave made there.
//
// # Handoff in the sandbox world
//
// Every connection to an enclave's vsock_<port> listener starts with one marker
// byte from the connecting side:
//
//   - 'F' ([MarkerHandoff]) with exactly one SCM_RIGHTS descriptor: the
//     host client's own socket, already past "OK <n>\n". [Server] does this
//     when its Connector implements [Handoff] ([UnixConnector] does): it
//     connects to the listener, writes "OK <n>\n" to the client first (so
//     the enclave can never race the OK line), then sends 'F' and the
//     descriptor and closes its own copies. No relay remains; if the
//     handoff fails after OK, the client reads end of stream.
//   - 'R' ([MarkerRelay]): the connection itself is the stream from the
//     next byte on ([UnixConnector.ConnectGuest], [SendRelay]); the Server
//     relays it when the Connector cannot hand off.
//
// A [ListenGuest] listener's Accept reads the marker (bounded by
// MarkerTimeout) and returns either the received socket or the connection
// itself; connections that send anything else are closed.
//
// # Compatibility with existing VMMs
//
// The implementation handles these quirks of the reference implementations
// (nitro-reference §8.1–8.3):
//
//   - Firecracker reads the request from a non-blocking socket, so a request
//     split over several writes can be dropped: [Dial] sends the whole
//     "CONNECT <port>\n" line in one write. [Server] is more tolerant and
//     assembles the line from partial writes until its handshake deadline.
//   - Firecracker and cloud-hypervisor never consume bytes after the '\n' of
//     the request, and the guest may start sending right after "OK": both
//     [Dial] (for the reply) and [Server] (for the request) read the line one
//     byte at a time, so no stream byte is ever swallowed by a buffer.
//     (vhost-device-vsock loses bytes sent after the request in the same
//     segment; [Dial] never sends data before "OK", so it is safe there too.)
//   - The number in "OK <n>\n" is the host-side port on Firecracker and
//     cloud-hypervisor (allocated round-robin from 1<<30) and the guest port
//     on vhost-device-vsock. [Dial] accepts any u32 and reports it as the
//     port of LocalAddr; [Server] allocates host ports like Firecracker.
//   - "Nobody listening on the guest port" is signalled by closing the Unix
//     connection without a single byte, and a request sent before the guest's
//     vsock driver is up is answered late or not at all (firecracker#1253):
//     [Dial] retries EOF, resets and timeouts with backoff until its context
//     ends, and reports the class of the last failure.
//   - Firecracker accepts and immediately closes connections beyond 1023;
//     [Server] does the same beyond MaxConns.
//
// Errors are classified with the sentinels [ErrNoListener], [ErrTimeout],
// [ErrReset] and [ErrProtocol] (match with errors.Is); failed operations
// return a *net.OpError on network "vsock" whose Err is an [*Error].
package hybrid
