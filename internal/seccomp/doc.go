// Package seccomp builds and installs the classic-BPF seccomp filter that
// confines code in Cloister's process sandbox.
//
// The filter is assembled here (golang.org/x/net/bpf) from a small,
// declarative [Policy]; no C library is involved. The sandbox policy
// ([SandboxPolicy]) is a deny list on top of a default-allow:
//
//   - a syscall made with a foreign audit architecture (e.g. i386 int 0x80
//     on x86_64) kills the process; x32 system calls (bit 30 of the number
//     on x86_64) fail with ENOSYS;
//   - socket(2) and socketpair(2) with a domain other than AF_UNIX fail with
//     EPERM. This is what makes AF_VSOCK (and AF_INET, AF_NETLINK,
//     AF_PACKET, …) impossible inside the sandbox;
//   - io_uring_setup/enter/register fail with ENOSYS (io_uring can create
//     sockets with IORING_OP_SOCKET without passing through socket(2), and
//     ENOSYS is what libraries see on kernels without io_uring, so they fall
//     back to epoll); clone3 fails with ENOSYS so that libc falls back to
//     clone(2), whose flags the filter can inspect;
//   - clone(2) with any namespace flag, unshare, setns, mount and the new
//     mount API, pivot_root, chroot, ptrace and cross-process memory access,
//     keyrings, bpf, perf_event_open, userfaultfd, module and kexec loading,
//     file handles, iopl/ioperm, swap, reboot, syslog, acct, quotactl,
//     lookup_dcookie, ioctl(TIOCSTI/TIOCLINUX), mknod of device nodes and
//     personality values other than the harmless ones fail with EPERM.
//
// [SupervisedPolicy] is the same policy for a sandbox supervised from
// outside (parent/sandbox with internal/unotify): socket(AF_VSOCK),
// ioctl (for /dev/nsm and /dev/vsock), the socket calls that take or return addresses
// and AF_VSOCK-level socket options return SECCOMP_RET_USER_NOTIF, and the
// supervisor that holds the filter's listener ([InstallListener]) answers
// them; every other domain and dangerous call is refused exactly as by
// SandboxPolicy, and an application may not stack a filter of its own with
// a listener (its notifications would take precedence). With no supervisor
// (the listener closed) a notified call fails with ENOSYS: the policy
// fails closed. Rules may have several cases ([Case]), tried in order.
//
// EPERM rather than a kill keeps the failure diagnosable: applications see
// "operation not permitted" and can print it.
//
// Only the low 32 bits of an argument are compared; for every argument the
// policy inspects, the kernel itself truncates the value to 32 bits (int or
// unsigned int parameters, clone's lower_32_bits), so the high half cannot
// be used to slip past a check.
//
// [Install] loads a program with seccomp(SECCOMP_SET_MODE_FILTER,
// SECCOMP_FILTER_FLAG_TSYNC) so every thread of a Go program is covered.
package seccomp
