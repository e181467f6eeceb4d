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
	// ActNotify suspends the call and hands it to the supervisor holding
	// the filter's listener (SECCOMP_RET_USER_NOTIF; see
	// [InstallListener]). Without a listener the call fails with ENOSYS.
	ActNotify Action = 0x7fc00000
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
	case a == ActNotify:
		return "notify"
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

// Case is one alternative of a [Rule] with Cases: Action applies when
// every condition in If holds (an empty If always holds).
type Case struct {
	If     []Cond
	Action Action
}

// Rule applies Action to calls of the system call named Syscall; with a
// non-nil Cond only to calls satisfying it (other calls are allowed).
//
// A rule with Cases ignores Action and Cond: its cases are tried in order,
// the first whose conditions all hold decides, and Default decides when
// none does. Default must be set (its zero value would be
// SECCOMP_RET_KILL_THREAD).
type Rule struct {
	Syscall string
	Action  Action
	Cond    *Cond
	Cases   []Case
	Default Action
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
	afVsock    = 40
	solSocket  = 1
	soDomain   = 39
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

// Constants of the supervised policy (identical on amd64 and arm64).
const (
	// NSMIoctlRaw is NSM_IOCTL_RAW = _IOWR(0x0A, 0, struct nsm_raw), the
	// one ioctl of /dev/nsm.
	NSMIoctlRaw = 0xc0200a00
	// seccomp(2)'s SECCOMP_SET_MODE_FILTER and SECCOMP_FILTER_FLAG_NEW_LISTENER.
	filterSetModeArg          = 1
	seccompFlagNewListenerArg = 0x8
)

// NotifiedSocketCalls are the socket system calls the supervised policy
// hands to the supervisor on every descriptor: a filter cannot tell an
// emulated AF_VSOCK socket (a Unix socket the supervisor made) from any
// other, so the supervisor looks at the descriptor and lets the call
// continue when it is not one of its own.
var NotifiedSocketCalls = []string{
	"connect", "bind", "listen", "accept", "accept4", "getsockname", "getpeername", "shutdown",
}

// SupervisedPolicy is [SandboxPolicy] for a sandbox whose AF_VSOCK sockets,
// /dev/nsm and /dev/vsock are emulated by a supervisor outside it (the
// filter is installed with [InstallListener]). It differs only in these
// rules; everything else SandboxPolicy refuses stays refused:
//
//   - socket(2): AF_UNIX is allowed, AF_VSOCK is notified (the supervisor
//     answers with a Unix socket it made, never by letting the call run),
//     every other domain fails with EPERM;
//   - socketpair(2): AF_UNIX is allowed, AF_VSOCK fails with EOPNOTSUPP
//     (as Linux's vsock does), every other domain with EPERM;
//   - ioctl(2): TIOCSTI and TIOCLINUX fail with EPERM, every other
//     ioctl is notified: the supervisor recognises /dev/nsm and /dev/vsock
//     by the descriptor, and the real nsm driver answers EINVAL to every
//     command but NSM_IOCTL_RAW (TCGETS, FIONREAD …), which /dev/nsm must
//     do too; on any other descriptor the ioctl runs as it is;
//   - [NotifiedSocketCalls] are notified; getsockopt and setsockopt are
//     notified at level AF_VSOCK, and getsockopt(SOL_SOCKET, SO_DOMAIN);
//   - seccomp(SECCOMP_SET_MODE_FILTER) with SECCOMP_FILTER_FLAG_NEW_LISTENER
//     fails with EPERM: a filter stacked by the application and returning
//     SECCOMP_RET_USER_NOTIF would take precedence over the sandbox's
//     (the newest filter wins among equal actions), and its own
//     supervisor could let socket(AF_VSOCK) run. Without a listener such
//     a filter makes the call fail with ENOSYS.
func SupervisedPolicy() Policy {
	eperm := Errno(syscall.EPERM)
	base := SandboxPolicy()
	replaced := map[string]Rule{
		"socket": {Syscall: "socket", Default: eperm, Cases: []Case{
			{If: []Cond{{Arg: 0, Op: OpIn, Values: []uint32{afUnix}}}, Action: ActAllow},
			{If: []Cond{{Arg: 0, Op: OpIn, Values: []uint32{afVsock}}}, Action: ActNotify},
		}},
		"socketpair": {Syscall: "socketpair", Default: eperm, Cases: []Case{
			{If: []Cond{{Arg: 0, Op: OpIn, Values: []uint32{afUnix}}}, Action: ActAllow},
			{If: []Cond{{Arg: 0, Op: OpIn, Values: []uint32{afVsock}}}, Action: Errno(syscall.EOPNOTSUPP)},
		}},
		"ioctl": {Syscall: "ioctl", Default: ActNotify, Cases: []Case{
			{If: []Cond{{Arg: 1, Op: OpIn, Values: []uint32{tiocsti, tioclinux}}}, Action: eperm},
		}},
	}
	var rules []Rule
	for _, r := range base.Rules {
		if nr, ok := replaced[r.Syscall]; ok {
			r = nr
		}
		rules = append(rules, r)
	}
	for _, name := range NotifiedSocketCalls {
		rules = append(rules, Rule{Syscall: name, Action: ActNotify})
	}
	rules = append(rules,
		Rule{Syscall: "getsockopt", Default: ActAllow, Cases: []Case{
			{If: []Cond{{Arg: 1, Op: OpIn, Values: []uint32{afVsock}}}, Action: ActNotify},
			{If: []Cond{{Arg: 1, Op: OpIn, Values: []uint32{solSocket}}, {Arg: 2, Op: OpIn, Values: []uint32{soDomain}}}, Action: ActNotify},
		}},
		Rule{Syscall: "setsockopt", Action: ActNotify, Cond: &Cond{Arg: 1, Op: OpIn, Values: []uint32{afVsock}}},
		Rule{Syscall: "seccomp", Default: ActAllow, Cases: []Case{
			{If: []Cond{{Arg: 0, Op: OpIn, Values: []uint32{filterSetModeArg}}, {Arg: 1, Op: OpAnyBits, Mask: seccompFlagNewListenerArg}}, Action: eperm},
		}},
	)
	return Policy{Rules: rules}
}

// SupervisedProgram returns [SupervisedPolicy] assembled for the running
// program's architecture.
func SupervisedProgram() ([]bpf.RawInstruction, error) {
	arch, err := NativeArch()
	if err != nil {
		return nil, err
	}
	return SupervisedPolicy().Assemble(arch)
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
		var block []bpf.Instruction
		var err error
		if r.Cases != nil {
			block, err = casesBlock(r)
		} else {
			block, err = ruleBlock(r)
		}
		if err != nil {
			return nil, err
		}
		// A holds the syscall number here; every block ends in a return,
		// so the next comparison is only reached when this one is false.
		// A block too long for the 8-bit skip is jumped over with an
		// unconditional jump (32-bit offset).
		if len(block) <= 255 {
			prog = append(prog, bpf.JumpIf{Cond: bpf.JumpEqual, Val: nr, SkipFalse: uint8(len(block))})
		} else {
			prog = append(prog, bpf.JumpIf{Cond: bpf.JumpEqual, Val: nr, SkipTrue: 1}, bpf.Jump{Skip: uint32(len(block))})
		}
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

// casesBlock returns the instructions of a rule with Cases: each case
// tests its conditions in order and returns its action when all hold; a
// failed condition jumps (unconditionally, so the distance is not limited
// to 255) to the next case; the last instruction returns Default.
func casesBlock(r Rule) ([]bpf.Instruction, error) {
	if r.Default == 0 {
		return nil, fmt.Errorf("%w: %q: cases without a default action", ErrInvalidPolicy, r.Syscall)
	}
	if r.Cond != nil {
		return nil, fmt.Errorf("%w: %q: both Cond and Cases", ErrInvalidPolicy, r.Syscall)
	}
	block := []bpf.Instruction{bpf.RetConstant{Val: uint32(r.Default)}}
	for i := len(r.Cases) - 1; i >= 0; i-- {
		c := r.Cases[i]
		if c.Action == 0 {
			return nil, fmt.Errorf("%w: %q: case %d without an action", ErrInvalidPolicy, r.Syscall, i)
		}
		// tail is what follows a condition of this case when it holds:
		// the next conditions and the return; a condition that fails
		// skips tail and lands on the next case (block).
		tail := []bpf.Instruction{bpf.RetConstant{Val: uint32(c.Action)}}
		for j := len(c.If) - 1; j >= 0; j-- {
			cb, err := condBlock(r.Syscall, c.If[j], len(tail))
			if err != nil {
				return nil, err
			}
			tail = append(cb, tail...)
		}
		block = append(tail, block...)
	}
	return block, nil
}

// condBlock tests c; when it holds, execution falls through past the
// block; when it does not, the block's last instruction jumps forward
// over fail more instructions.
func condBlock(syscall string, c Cond, fail int) ([]bpf.Instruction, error) {
	if c.Arg < 0 || c.Arg > 5 {
		return nil, fmt.Errorf("%w: %q: argument index %d", ErrInvalidPolicy, syscall, c.Arg)
	}
	block := []bpf.Instruction{bpf.LoadAbsolute{Off: uint32(offArgs + 8*c.Arg), Size: 4}}
	failJump := bpf.Jump{Skip: uint32(fail)}
	switch c.Op {
	case OpAnyBits:
		if c.Mask == 0 {
			return nil, fmt.Errorf("%w: %q: empty mask", ErrInvalidPolicy, syscall)
		}
		return append(block, bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: c.Mask, SkipTrue: 1}, failJump), nil
	case OpIn, OpNotIn, OpMaskedIn:
		n := len(c.Values)
		if n == 0 || n > 64 {
			return nil, fmt.Errorf("%w: %q: %d values", ErrInvalidPolicy, syscall, n)
		}
		if c.Op == OpMaskedIn {
			if c.Mask == 0 {
				return nil, fmt.Errorf("%w: %q: empty mask", ErrInvalidPolicy, syscall)
			}
			block = append(block, bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: c.Mask})
		}
		// In: equal to values[i] skips the remaining comparisons and
		// the failure jump. NotIn: equal to values[i] skips the remaining
		// comparisons and the "holds" jump, landing on the failure jump.
		for i, v := range c.Values {
			block = append(block, bpf.JumpIf{Cond: bpf.JumpEqual, Val: v, SkipTrue: uint8(n - i)})
		}
		if c.Op == OpNotIn {
			block = append(block, bpf.Jump{Skip: 1})
		}
		return append(block, failJump), nil
	}
	return nil, fmt.Errorf("%w: %q: unknown comparison %d", ErrInvalidPolicy, syscall, c.Op)
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
