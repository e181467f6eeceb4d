package seccomp

import (
	"fmt"
	"runtime"
)

// Arch describes one system-call ABI the filter can be compiled for: its
// audit architecture value (seccomp_data.arch) and its syscall numbers.
type Arch struct {
	// Name is the GOARCH name ("amd64", "arm64").
	Name string
	// Audit is the AUDIT_ARCH_* value the kernel puts in seccomp_data.arch.
	Audit uint32
	// X32 reports whether the ABI shares its audit value with x32 system
	// calls, which carry bit 30 in the syscall number (x86_64 only).
	X32 bool
	// nums maps syscall names to numbers.
	nums map[string]uint32
	// absent lists syscalls that do not exist on this ABI; rules naming
	// them are skipped instead of being an error.
	absent map[string]bool
}

// Audit architecture values (linux/audit.h).
const (
	auditArchX86_64  = 0xC000003E // EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
	auditArchAARCH64 = 0xC00000B7 // EM_AARCH64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
)

// x32SyscallBit is __X32_SYSCALL_BIT: x32 system calls on x86_64 have it set.
const x32SyscallBit = 0x40000000

// ArchAMD64 is the x86_64 ABI. Numbers from arch/x86/entry/syscalls/syscall_64.tbl.
var ArchAMD64 = &Arch{
	Name:  "amd64",
	Audit: auditArchX86_64,
	X32:   true,
	nums: map[string]uint32{
		"accept": 43, "accept4": 288, "acct": 163, "add_key": 248, "bind": 49, "bpf": 321, "connect": 42,
		"getpeername": 52, "getsockname": 51, "getsockopt": 55, "listen": 50, "seccomp": 317, "setsockopt": 54,
		"shutdown": 48, "chroot": 161, "clone": 56, "clone3": 435,
		"delete_module": 176, "finit_module": 313, "fsconfig": 431, "fsmount": 432, "fsopen": 430,
		"fspick": 433, "getpid": 39, "init_module": 175, "io_uring_enter": 426, "io_uring_register": 427,
		"io_uring_setup": 425, "ioctl": 16, "ioperm": 173, "iopl": 172, "kcmp": 312, "kexec_file_load": 320,
		"kexec_load": 246, "keyctl": 250, "lookup_dcookie": 212, "mknod": 133, "mknodat": 259, "mount": 165,
		"mount_setattr": 442, "move_mount": 429, "name_to_handle_at": 303, "open_by_handle_at": 304,
		"open_tree": 428, "open_tree_attr": 467, "perf_event_open": 298, "personality": 135,
		"pidfd_getfd": 438, "pivot_root": 155, "process_madvise": 440, "process_vm_readv": 310,
		"process_vm_writev": 311, "ptrace": 101, "quotactl": 179, "quotactl_fd": 443, "reboot": 169,
		"request_key": 249, "setns": 308, "socket": 41, "socketpair": 53, "swapoff": 168, "swapon": 167,
		"syslog": 103, "umount2": 166, "unshare": 272, "uselib": 134, "userfaultfd": 323, "write": 1,
	},
}

// ArchARM64 is the aarch64 ABI (asm-generic numbers, include/uapi/asm-generic/unistd.h).
var ArchARM64 = &Arch{
	Name:  "arm64",
	Audit: auditArchAARCH64,
	nums: map[string]uint32{
		"accept": 202, "accept4": 242, "acct": 89, "add_key": 217, "bind": 200, "bpf": 280, "connect": 203,
		"getpeername": 205, "getsockname": 204, "getsockopt": 209, "listen": 201, "seccomp": 277, "setsockopt": 208,
		"shutdown": 210, "chroot": 51, "clone": 220, "clone3": 435,
		"delete_module": 106, "finit_module": 273, "fsconfig": 431, "fsmount": 432, "fsopen": 430,
		"fspick": 433, "getpid": 172, "init_module": 105, "io_uring_enter": 426, "io_uring_register": 427,
		"io_uring_setup": 425, "ioctl": 29, "kcmp": 272, "kexec_file_load": 294, "kexec_load": 104,
		"keyctl": 219, "lookup_dcookie": 18, "mknodat": 33, "mount": 40, "mount_setattr": 442,
		"move_mount": 429, "name_to_handle_at": 264, "open_by_handle_at": 265, "open_tree": 428,
		"open_tree_attr": 467, "perf_event_open": 241, "personality": 92, "pidfd_getfd": 438,
		"pivot_root": 41, "process_madvise": 440, "process_vm_readv": 270, "process_vm_writev": 271,
		"ptrace": 117, "quotactl": 60, "quotactl_fd": 443, "reboot": 142, "request_key": 218,
		"setns": 268, "socket": 198, "socketpair": 199, "swapoff": 225, "swapon": 224, "syslog": 116,
		"umount2": 39, "unshare": 97, "userfaultfd": 282, "write": 64,
	},
	absent: map[string]bool{"iopl": true, "ioperm": true, "mknod": true, "uselib": true},
}

// Syscall returns the number of the named system call on a and whether
// the ABI has it (known to this package).
func (a *Arch) Syscall(name string) (uint32, bool) {
	nr, ok := a.nums[name]
	return nr, ok
}

// NativeArch returns the ABI of the running program (runtime.GOARCH), or an
// error wrapping [ErrUnsupportedArch].
func NativeArch() (*Arch, error) {
	switch runtime.GOARCH {
	case "amd64":
		return ArchAMD64, nil
	case "arm64":
		return ArchARM64, nil
	}
	return nil, fmt.Errorf("%w: %s", ErrUnsupportedArch, runtime.GOARCH)
}
