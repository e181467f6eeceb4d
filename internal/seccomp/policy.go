package seccomp

import (
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/net/bpf"
)

// Errors returned by this package.
var (
	// ErrUnsupportedArch reports an architecture without a syscall table here.
	ErrUnsupportedArch = errors.New("seccomp: unsupported architecture")
	// ErrInvalidPolicy reports a policy that cannot be compiled (unknown
	// syscall, duplicate rule, bad argument index, empty value list).
	ErrInvalidPolicy = errors.New("seccomp: invalid policy")
	// ErrInstall reports a failure of prctl/seccomp while loading a filter.
	ErrInstall = errors.New("seccomp: install failed")
)

// Action is a seccomp filter return value (SECCOMP_RET_*).
type Action uint32

// Actions used by the sandbox. Build others with [Errno].
const (
	// ActAllow lets the system call run (SECCOMP_RET_ALLOW).
	ActAllow Action = 0x7fff0000
	// ActKillProcess kills the whole process (SECCOMP_RET_KILL_PROCESS).
	ActKillProcess Action = 0x80000000
)

// retErrno is SECCOMP_RET_ERRNO; the low 16 bits carry the errno.
const retErrno = 0x00050000

// Errno returns the action that fails the system call with errno e
// (SECCOMP_RET_ERRNO | e).
func Errno(e syscall.Errno) Action { return retErrno | Action(uint32(e)&0xffff) }

// String names the action ("allow", "kill-process", "errno(EPERM)").
func (a Action) String() string {
	switch {
	case a == ActAllow:
		return "allow"
	case a == ActKillProcess:
		return "kill-process"
	case a&0xffff0000 == retErrno:
		return fmt.Sprintf("errno(%d %v)", uint32(a&0xffff), syscall.Errno(a&0xffff))
	}
	return fmt.Sprintf("action(%#x)", uint32(a))
}

// Op is the comparison a [Cond] performs on the low 32 bits of an argument.
type Op int

// Comparisons.
const (
	// OpIn holds when the argument equals one of Values.
	OpIn Op = iota + 1
	// OpNotIn holds when the argument equals none of Values.
	OpNotIn
	// OpAnyBits holds when argument & Mask != 0.
	OpAnyBits
	// OpMaskedIn holds when argument & Mask equals one of Values.
	OpMaskedIn
)

// Cond restricts a [Rule] to calls whose argument Arg (0–5) satisfies Op.
// Only the low 32 bits of the argument are compared.
type Cond struct {
	Arg    int
	Op     Op
	Values []uint32
	Mask   uint32
}

// Rule applies Action to calls of the system call named Syscall; with a
// non-nil Cond only to calls satisfying it (other calls are allowed).
type Rule struct {
	Syscall string
	Action  Action
	Cond    *Cond
}

// Policy is a default-allow deny list: every listed rule, at most one per
// syscall, is checked after the architecture; anything else is allowed.
type Policy struct {
	Rules []Rule
}

// Linux constants the sandbox policy compares arguments with (identical on
// amd64 and arm64).
const (
	afUnix     = 1
	tiocsti    = 0x5412
	tioclinux  = 0x541C
	sIFMT      = 0o170000
	sIFCHR     = 0o020000
	sIFBLK     = 0o060000
	cloneNewNS = 0x00020000
	// CLONE_NEWCGROUP|CLONE_NEWUTS|CLONE_NEWIPC|CLONE_NEWUSER|CLONE_NEWPID|CLONE_NEWNET
	cloneNewMask = cloneNewNS | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
)

// Personality values accepted by the sandbox: PER_LINUX, PER_LINUX32,
// UNAME26, UNAME26|PER_LINUX32 and 0xffffffff (query the current value).
var allowedPersonalities = []uint32{0x0, 0x8, 0x20000, 0x20008, 0xffffffff}

// deniedSyscalls fail with EPERM unconditionally in the sandbox policy.
var deniedSyscalls = []string{
	// mounts and namespaces
	"mount", "umount2", "pivot_root", "chroot", "unshare", "setns",
	"move_mount", "fsopen", "fsmount", "fsconfig", "fspick", "open_tree", "open_tree_attr", "mount_setattr",
	// other processes
	"ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "pidfd_getfd", "kcmp",
	// kernel attack surface
	"keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd", "lookup_dcookie",
	// the kernel itself and the machine
	"kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
	"iopl", "ioperm", "swapon", "swapoff", "reboot", "syslog", "acct", "quotactl", "quotactl_fd", "uselib",
	// escaping through file handles
	"open_by_handle_at", "name_to_handle_at",
}

// SandboxPolicy returns the policy of Cloister's process sandbox (see the
// package documentation for the list and the reasons).
func SandboxPolicy() Policy {
	eperm := Errno(syscall.EPERM)
	enosys := Errno(syscall.ENOSYS)
	var rules []Rule
	for _, name := range deniedSyscalls {
		rules = append(rules, Rule{Syscall: name, Action: eperm})
	}
	for _, name := range []string{"clone3", "io_uring_setup", "io_uring_enter", "io_uring_register"} {
		rules = append(rules, Rule{Syscall: name, Action: enosys})
	}
	rules = append(rules,
		Rule{Syscall: "socket", Action: eperm, Cond: &Cond{Arg: 0, Op: OpNotIn, Values: []uint32{afUnix}}},
		Rule{Syscall: "socketpair", Action: eperm, Cond: &Cond{Arg: 0, Op: OpNotIn, Values: []uint32{afUnix}}},
		Rule{Syscall: "clone", Action: eperm, Cond: &Cond{Arg: 0, Op: OpAnyBits, Mask: cloneNewMask}},
		Rule{Syscall: "ioctl", Action: eperm, Cond: &Cond{Arg: 1, Op: OpIn, Values: []uint32{tiocsti, tioclinux}}},
		Rule{Syscall: "personality", Action: eperm, Cond: &Cond{Arg: 0, Op: OpNotIn, Values: allowedPersonalities}},
		Rule{Syscall: "mknod", Action: eperm, Cond: &Cond{Arg: 1, Op: OpMaskedIn, Mask: sIFMT, Values: []uint32{sIFCHR, sIFBLK}}},
		Rule{Syscall: "mknodat", Action: eperm, Cond: &Cond{Arg: 2, Op: OpMaskedIn, Mask: sIFMT, Values: []uint32{sIFCHR, sIFBLK}}},
	)
	return Policy{Rules: rules}
}

// seccomp_data offsets (linux/seccomp.h): nr, arch, instruction_pointer,
// args[6]. Both supported ABIs are little-endian, so the low 32 bits of
// args[i] are at 16+8*i.
const (
	offNr   = 0
	offArch = 4
	offArgs = 16
)

// Compile translates p into a classic BPF program for arch: check the
// architecture (kill on mismatch), on x86_64 refuse x32 numbers with
// ENOSYS, then one block per rule, then allow. It checks that every
// syscall is known for arch (rules for syscalls the ABI lacks are
// skipped), that no syscall has two rules, that argument indexes are 0–5
// and that value lists are not empty.
func (p Policy) Compile(arch *Arch) ([]bpf.Instruction, error) {
	if arch == nil {
		return nil, fmt.Errorf("%w: nil architecture", ErrUnsupportedArch)
	}
	prog := []bpf.Instruction{
		bpf.LoadAbsolute{Off: offArch, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: arch.Audit, SkipTrue: 1},
		bpf.RetConstant{Val: uint32(ActKillProcess)},
		bpf.LoadAbsolute{Off: offNr, Size: 4},
	}
	if arch.X32 {
		prog = append(prog,
			bpf.JumpIf{Cond: bpf.JumpGreaterOrEqual, Val: x32SyscallBit, SkipFalse: 1},
			bpf.RetConstant{Val: uint32(Errno(syscall.ENOSYS))},
		)
	}
	seen := make(map[string]bool)
	for _, r := range p.Rules {
		nr, ok := arch.nums[r.Syscall]
		if !ok {
			if arch.absent[r.Syscall] {
				continue
			}
			return nil, fmt.Errorf("%w: syscall %q unknown on %s", ErrInvalidPolicy, r.Syscall, arch.Name)
		}
		if seen[r.Syscall] {
			return nil, fmt.Errorf("%w: two rules for %q", ErrInvalidPolicy, r.Syscall)
		}
		seen[r.Syscall] = true
		block, err := ruleBlock(r)
		if err != nil {
			return nil, err
		}
		if len(block) > 255 {
			return nil, fmt.Errorf("%w: rule for %q too long", ErrInvalidPolicy, r.Syscall)
		}
		// A holds the syscall number here; every block ends in a return,
		// so the next comparison is only reached when this one is false.
		prog = append(prog, bpf.JumpIf{Cond: bpf.JumpEqual, Val: nr, SkipFalse: uint8(len(block))})
		prog = append(prog, block...)
	}
	prog = append(prog, bpf.RetConstant{Val: uint32(ActAllow)})
	return prog, nil
}

// ruleBlock returns the instructions run when the syscall number matched;
// they always end in a return.
func ruleBlock(r Rule) ([]bpf.Instruction, error) {
	act := bpf.RetConstant{Val: uint32(r.Action)}
	allow := bpf.RetConstant{Val: uint32(ActAllow)}
	c := r.Cond
	if c == nil {
		return []bpf.Instruction{act}, nil
	}
	if c.Arg < 0 || c.Arg > 5 {
		return nil, fmt.Errorf("%w: %q: argument index %d", ErrInvalidPolicy, r.Syscall, c.Arg)
	}
	load := bpf.LoadAbsolute{Off: uint32(offArgs + 8*c.Arg), Size: 4}
	switch c.Op {
	case OpAnyBits:
		if c.Mask == 0 {
			return nil, fmt.Errorf("%w: %q: empty mask", ErrInvalidPolicy, r.Syscall)
		}
		return []bpf.Instruction{load, bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: c.Mask, SkipFalse: 1}, act, allow}, nil
	case OpIn, OpNotIn, OpMaskedIn:
		n := len(c.Values)
		if n == 0 || n > 64 {
			return nil, fmt.Errorf("%w: %q: %d values", ErrInvalidPolicy, r.Syscall, n)
		}
		block := []bpf.Instruction{load}
		if c.Op == OpMaskedIn {
			if c.Mask == 0 {
				return nil, fmt.Errorf("%w: %q: empty mask", ErrInvalidPolicy, r.Syscall)
			}
			block = append(block, bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: c.Mask})
		}
		// Equal to values[i]: skip the remaining comparisons and the
		// first return, landing on the second one.
		for i, v := range c.Values {
			block = append(block, bpf.JumpIf{Cond: bpf.JumpEqual, Val: v, SkipTrue: uint8(n - i)})
		}
		if c.Op == OpNotIn {
			return append(block, act, allow), nil
		}
		return append(block, allow, act), nil
	}
	return nil, fmt.Errorf("%w: %q: unknown comparison %d", ErrInvalidPolicy, r.Syscall, c.Op)
}

// Assemble compiles p for arch and assembles it into the raw instructions
// the kernel loads.
func (p Policy) Assemble(arch *Arch) ([]bpf.RawInstruction, error) {
	prog, err := p.Compile(arch)
	if err != nil {
		return nil, err
	}
	raw, err := bpf.Assemble(prog)
	if err != nil {
		return nil, fmt.Errorf("%w: assemble: %w", ErrInvalidPolicy, err)
	}
	if len(raw) > 4096 { // BPF_MAXINSNS
		return nil, fmt.Errorf("%w: %d instructions (limit 4096)", ErrInvalidPolicy, len(raw))
	}
	return raw, nil
}

// SandboxProgram returns the sandbox policy assembled for the running
// program's architecture.
func SandboxProgram() ([]bpf.RawInstruction, error) {
	arch, err := NativeArch()
	if err != nil {
		return nil, err
	}
	return SandboxPolicy().Assemble(arch)
}
