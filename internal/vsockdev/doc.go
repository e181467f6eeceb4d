// Package vsockdev is a virtio-vsock device (virtio spec "Socket Device")
// served to a QEMU guest over vhost-user, routing the guest's stream
// connections to Unix sockets on the host the way Nitro routes them to the
// parent instance.
//
// Queue 0 carries packets to the guest (rx), queue 1 packets from the guest
// (tx); QEMU keeps the event queue. Every packet starts with the 44-byte
// little-endian Header. The device keeps one connection per (host port,
// guest port) pair:
//
//   - guest → host: a REQUEST to CID 2 or 3 (the parent; 2 is accepted as an
//     alias) and port P dials the Unix socket "<HostListenerBase>_<P>"
//     (the enclave directory's host/vsock_<P>), then answers RESPONSE, or
//     RST when nobody listens. Any other destination CID gets RST.
//   - host → guest: ConnectGuest sends a REQUEST from (3, port ≥ 1<<30) and
//     waits for the guest's RESPONSE or RST (hybrid.Server uses it).
//
// Data moves under virtio-vsock credit flow control in both directions: the
// device never sends the guest more than its advertised buffer space, sends
// CREDIT_UPDATE as the host consumes data, and bounds what it buffers for a
// connection by the credit it advertised (a guest that exceeds it is reset).
// The tx queue is always drained, even when the rx queue is full (the spec's
// deadlock rule). SHUTDOWN half-closes the host socket; a full shutdown ends
// with RST after the buffered data is flushed, or after ShutdownTimeout.
//
// The guest is untrusted: every header field is checked, malformed packets
// are answered with RST or dropped, chains with the wrong write flags are
// refused, and a malformed descriptor chain breaks the queue (package
// virtq) and resets every connection. Each pass of the event loop handles
// at most a batch of chains per queue, and what the guest can make the
// device hold (connections, buffered bytes, queued packets) is bounded
// whether or not it runs its rx queue.
package vsockdev
