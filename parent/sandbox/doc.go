// Package sandbox runs an enclave image in Cloister's process sandbox: the
// "sandbox" world, for hosts without Nitro or KVM. It is pure Go (no cgo)
// and needs root on the host.
//
// [Start] re-executes the running binary (/proc/self/exe) as a child in new
// user, mount, PID, network, IPC and UTS namespaces; the binary's main (and
// the TestMain of any test that starts sandboxes) must call [IsChild] and
// [ChildMain] first. The parent attaches the child to the enclave's cgroup
// (internal/cgroups) while the child waits on a pipe, then releases it. The
// child, on one locked OS thread:
//
//  1. enters a new cgroup namespace rooted at the enclave's group;
//  2. makes "/" private and mounts a tmpfs of Spec.MemoryMiB as the new root;
//  3. unpacks the ramdisks (newc cpio) into it: entries under "rootfs/"
//     become "/", everything else (init, modules, cmd, env, workdir, user)
//     goes under "/.cloister/" — see [Spec.Ramdisks];
//  4. mounts proc, a minimal /dev (host null, zero, full, random, urandom
//     and tty bind-mounted, a private devpts, /dev/shm; with [Spec.Nitro]
//     also nsm and vsock, bind mounts of the host's null), tmpfs /tmp and
//     /run, binds the host vsock directory at /run/cloister/vsock/host
//     (read-only) and attaches the listener directory, a private tmpfs the
//     parent created (fsopen/fsmount, [GuestDirBytes], [GuestDirInodes]),
//     at /run/cloister/vsock/guest;
//  5. sets the host name "enclave" (the network namespace has only lo, down);
//  6. pivot_root, detaches and removes the old root;
//  7. sets rlimits, reduces the capability bounding, permitted and effective
//     sets to {CAP_SETUID, CAP_SETGID, CAP_SETPCAP} (init needs them to switch
//     to the image's user and to empty the bounding set before it execs the
//     application, which starts with no capabilities) and clears the ambient and
//     inheritable sets, sets no_new_privs, installs the seccomp filter of
//     internal/seccomp (which makes every socket family but AF_UNIX, and so
//     a real AF_VSOCK socket, impossible); with [Spec.Nitro] the filter is
//     SupervisedPolicy and its user-notification listener goes to the
//     parent over a socket pair, with O_PATH descriptors of /dev/nsm and
//     /dev/vsock, and the child closes its copies;
//  8. executes /.cloister/init with CLOISTER_WORLD=sandbox,
//     CLOISTER_VSOCK_DIR=/run/cloister/vsock, CLOISTER_CID and PATH.
//
// A failure in any step comes back from Start as a [*SetupError] naming the
// step. With [Spec.Nitro], Start then starts the supervisor
// (internal/unotify) in this process: it answers the calls the filter
// notifies for the sandbox's whole life, so that programs written for
// Nitro find AF_VSOCK sockets (Unix sockets of the sandbox's network
// namespace, connected to the parent's hybrid listeners or bound in the
// listener directory), /dev/nsm (Nitro.NSM, through nsmdev) and
// /dev/vsock (the enclave's CID). Backend.Launch sets it for every
// enclave (Backend.NoNitro leaves it out); its counters are
// [Process.SupervisorStats]. init's standard output and error are a pipe that the parent drains
// into Spec.Console without ever blocking the sandbox (see [Spec.Console]).
//
// Root inside the sandbox is an unprivileged host uid: each running sandbox
// gets its own range of 65536 ids starting at 1,000,000 + slot×65536.
// Files in Spec.VsockDir/host must be usable by those ids: the daemon must
// create the host-side sockets there with mode 0666 (or otherwise writable
// for the sandbox's ids) and keep that directory searchable. The listener
// directory belongs to the sandbox's root (mode 01777); it has no host
// path, and the parent reaches the enclave's listeners only through
// [Process.GuestDir], never following a link the enclave made there.
package sandbox
