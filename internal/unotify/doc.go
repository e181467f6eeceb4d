// Package unotify is the supervisor of Cloister's process sandbox: it
// answers, from outside the sandbox, the system calls that the sandbox's
// seccomp filter (internal/seccomp's SupervisedPolicy) hands to it with
// SECCOMP_RET_USER_NOTIF, so that unmodified Nitro programs find AF_VSOCK
// sockets, /dev/nsm and /dev/vsock as in an enclave.
//
// # Mechanism
//
// [Listener] wraps the filter's listener descriptor: receive
// (SECCOMP_IOCTL_NOTIF_RECV, with the kernel's own structure sizes),
// answer with a value or an errno, let the call run
// (SECCOMP_USER_NOTIF_FLAG_CONTINUE), install a descriptor in the caller
// and answer in one step (SECCOMP_IOCTL_NOTIF_ADDFD with
// SECCOMP_ADDFD_FLAG_SEND), and check that a call still waits
// (SECCOMP_IOCTL_NOTIF_ID_VALID). [Caller] reaches the calling thread
// following seccomp_unotify(2): whatever is opened for it (a pidfd, its
// /proc/<tid>/mem and maps) is opened first and checked valid afterwards,
// so a thread id reused by another process is never touched; memory is
// read and written only where the kernel's own user copies would succeed
// (the mapping's permissions are checked, EFAULT otherwise), and the call
// is checked valid again after every read. A caller's descriptor is
// duplicated into the supervisor (pidfd_getfd) and the handler acts on
// that file, whatever the caller does with the descriptor number
// meanwhile.
//
// [Supervisor] runs one goroutine per notification, at most MaxInFlight at
// once (further calls wait in the kernel); a handler that waits (a blocking
// accept) registers with one shared epoll instance rather than holding a
// thread (a connect to a full backlog sleeps in the kernel in 100 ms
// steps), and checks every 100 ms that its caller still waits: a signal
// interrupts the call, and a connection accepted for a caller that went
// away is put back in the listener's queue.
//
// # What is emulated
//
// An emulated AF_VSOCK socket is a Unix stream socket that the supervisor
// creates in the sandbox's network namespace ([NetNS]) and installs in the
// caller; it is known by its socket cookie, which the kernel never
// reuses. Because it is a real descriptor, dup, fork, SCM_RIGHTS, poll,
// epoll, read, write, send and recv work on it unchanged. The filter
// notifies connect, bind, listen, accept, accept4, getsockname,
// getpeername and shutdown on every descriptor (a filter cannot tell the
// emulated sockets apart), and getsockopt and setsockopt at level AF_VSOCK
// and for SO_DOMAIN; the supervisor emulates them on its sockets, with
// Linux's vsock checks and errors, and lets them run unchanged on any other
// descriptor. That is safe even when the sandbox swaps descriptors between
// the check and the call: an emulated socket lives in the sandbox's own
// network namespace, so a socket call that runs on it can do nothing that
// the same call on the sandbox's own Unix sockets could not.
//
// socket(AF_VSOCK) is never let run (it would make a real vsock socket;
// the host's /dev/vsock may reach a real hypervisor). Other domains are
// refused by the filter itself.
//
//   - connect to CID 3 (the parent; 2, VMADDR_CID_HOST, is an alias as in
//     the microVM world) and a port: the socket is connected to the
//     parent's hybrid-vsock listener for the port (Config.ParentDir's
//     vsock_<port>), where the daemon's services and `cloister`'s host
//     listeners are. Nobody listening, or any other CID, is ECONNRESET,
//     the reset a Nitro enclave's virtio-vsock connect gets. A Unix
//     connect completes at once: a non-blocking connect returns 0, not
//     EINPROGRESS. When the parent's backlog is full, a non-blocking
//     connect fails with EAGAIN and a blocking one waits at most the
//     socket's SO_VM_SOCKETS_CONNECT_TIMEOUT (ETIMEDOUT), in steps of
//     100 ms between which the supervisor checks that the caller still
//     waits (a Unix connect left to sleep in the kernel would hold a
//     thread of the monitor for as long as the parent does not accept).
//     The connect runs with the caller's ids as the thread's effective
//     ids, so the parent's listener sees the sandbox's uid and gid
//     (SO_PEERCRED), never the supervisor's root.
//   - bind to VMADDR_CID_ANY or the enclave's CID, and a port
//     (VMADDR_PORT_ANY picks one above 1023): the socket is bound as
//     vsock_<port> in the enclave's listener directory, with the caller's
//     file-system ids, where the monitor's host → enclave connections
//     (`cloister connect`, parent.Client.Connect) reach it; listen; accept
//     reads the hybrid marker of each connection (a handed-off socket, or
//     the connection itself) and installs the stream, with the address
//     (3, port). The marker is never seen by the program.
//   - getsockname and getpeername return struct sockaddr_vm; shutdown,
//     SO_VM_SOCKETS_BUFFER_{SIZE,MIN_SIZE,MAX_SIZE} and
//     SO_VM_SOCKETS_CONNECT_TIMEOUT as Linux's vsock; SO_DOMAIN is
//     AF_VSOCK.
//   - ioctl(IOCTL_VM_SOCKETS_GET_LOCAL_CID) on the sandbox's /dev/vsock
//     returns the enclave's CID; ioctl(NSM_IOCTL_RAW) on its /dev/nsm is
//     Config.NSM (nsmdev.Ioctl with the daemon's emulated security
//     module). Each is recognised by device, inode and mount; the same
//     ioctl on any other file runs as it is.
//   - network device ioctls (0x8900–0x89ff but those the socket answers
//     for itself, and the wireless 0x8b00–0x8bff) are never let run: on a
//     socket the kernel answers them for that socket's network namespace,
//     and the sandbox holds sockets of the host's: host programs'
//     connections handed off to its listeners, and the accepted end of
//     every connection the monitor makes to them (an accepted Unix socket
//     belongs to the namespace of the side that connected). The supervisor answers
//     the ones that only read (SIOCGIFCONF, SIOCGIFINDEX, SIOCGIFFLAGS …)
//     on a socket of its own in the sandbox's namespace, refuses the
//     others with EPERM, and answers ENOTTY for a descriptor that is not
//     a socket.
//
// # Limits and differences from Linux's vsock
//
// A supervisor handles at most [DefaultMaxInFlight] calls at once and
// keeps at most [DefaultMaxSockets] emulated sockets alive (socket fails
// with ENOBUFS beyond, accept with EMFILE leaving the connection queued);
// sockets the sandbox closed are swept out of a full table with
// NETLINK_SOCK_DIAG. The remaining differences: SOCK_SEQPACKET sockets
// are refused (ESOCKTNOSUPPORT), SOCK_DGRAM fails with ENODEV as in an
// enclave; the source port of a connection from the parent is reported as
// the listener's port (hybrid vsock carries none); ports up to 1023 need
// no privilege; recvfrom and recvmsg report the Unix peer's address
// rather than none; connecting to the enclave's own CID (loopback) is a
// reset.
package unotify
