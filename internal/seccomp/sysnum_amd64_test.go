//go:build linux

package seccomp

import "golang.org/x/sys/unix"

// nativeNums are x/sys/unix's numbers for the syscalls in ArchAMD64, to
// cross-check the hand-written table on this architecture.
var nativeArch, nativeNums = ArchAMD64, map[string]uint32{
	"accept": unix.SYS_ACCEPT, "accept4": unix.SYS_ACCEPT4, "bind": unix.SYS_BIND, "connect": unix.SYS_CONNECT,
	"getpeername": unix.SYS_GETPEERNAME, "getsockname": unix.SYS_GETSOCKNAME, "getsockopt": unix.SYS_GETSOCKOPT,
	"listen": unix.SYS_LISTEN, "seccomp": unix.SYS_SECCOMP, "setsockopt": unix.SYS_SETSOCKOPT, "shutdown": unix.SYS_SHUTDOWN,
	"acct": unix.SYS_ACCT, "add_key": unix.SYS_ADD_KEY, "bpf": unix.SYS_BPF, "chroot": unix.SYS_CHROOT,
	"clone": unix.SYS_CLONE, "clone3": unix.SYS_CLONE3, "delete_module": unix.SYS_DELETE_MODULE,
	"finit_module": unix.SYS_FINIT_MODULE, "fsconfig": unix.SYS_FSCONFIG, "fsmount": unix.SYS_FSMOUNT,
	"fsopen": unix.SYS_FSOPEN, "fspick": unix.SYS_FSPICK, "getpid": unix.SYS_GETPID,
	"init_module": unix.SYS_INIT_MODULE, "io_uring_enter": unix.SYS_IO_URING_ENTER,
	"io_uring_register": unix.SYS_IO_URING_REGISTER, "io_uring_setup": unix.SYS_IO_URING_SETUP,
	"ioctl": unix.SYS_IOCTL, "ioperm": unix.SYS_IOPERM, "iopl": unix.SYS_IOPL, "kcmp": unix.SYS_KCMP,
	"kexec_file_load": unix.SYS_KEXEC_FILE_LOAD, "kexec_load": unix.SYS_KEXEC_LOAD, "keyctl": unix.SYS_KEYCTL,
	"lookup_dcookie": unix.SYS_LOOKUP_DCOOKIE, "mknod": unix.SYS_MKNOD, "mknodat": unix.SYS_MKNODAT,
	"mount": unix.SYS_MOUNT, "mount_setattr": unix.SYS_MOUNT_SETATTR, "move_mount": unix.SYS_MOVE_MOUNT,
	"name_to_handle_at": unix.SYS_NAME_TO_HANDLE_AT, "open_by_handle_at": unix.SYS_OPEN_BY_HANDLE_AT,
	"open_tree": unix.SYS_OPEN_TREE, "open_tree_attr": unix.SYS_OPEN_TREE_ATTR,
	"perf_event_open": unix.SYS_PERF_EVENT_OPEN, "personality": unix.SYS_PERSONALITY,
	"pidfd_getfd": unix.SYS_PIDFD_GETFD, "pivot_root": unix.SYS_PIVOT_ROOT,
	"process_madvise": unix.SYS_PROCESS_MADVISE, "process_vm_readv": unix.SYS_PROCESS_VM_READV,
	"process_vm_writev": unix.SYS_PROCESS_VM_WRITEV, "ptrace": unix.SYS_PTRACE, "quotactl": unix.SYS_QUOTACTL,
	"quotactl_fd": unix.SYS_QUOTACTL_FD, "reboot": unix.SYS_REBOOT, "request_key": unix.SYS_REQUEST_KEY,
	"setns": unix.SYS_SETNS, "socket": unix.SYS_SOCKET, "socketpair": unix.SYS_SOCKETPAIR,
	"swapoff": unix.SYS_SWAPOFF, "swapon": unix.SYS_SWAPON, "syslog": unix.SYS_SYSLOG,
	"umount2": unix.SYS_UMOUNT2, "unshare": unix.SYS_UNSHARE, "uselib": unix.SYS_USELIB,
	"userfaultfd": unix.SYS_USERFAULTFD, "write": unix.SYS_WRITE,
}
