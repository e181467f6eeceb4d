package seccomp

import (
	"encoding/binary"
	"errors"
	"syscall"
	"testing"

	"golang.org/x/net/bpf"
)

// seccompData builds a synthetic struct seccomp_data for the x/net/bpf VM.
// The kernel loads 32-bit words from seccomp_data in native (little-endian)
// order; the VM loads them big-endian. Writing every 32-bit word big-endian
// at the kernel's offset therefore makes the VM see exactly the values the
// kernel's BPF interpreter sees: nr at 0, arch at 4, the low half of
// args[i] at 16+8i and its high half at 20+8i.
func seccompData(audit, nr uint32, args ...uint64) []byte {
	b := make([]byte, 64)
	binary.BigEndian.PutUint32(b[0:], nr)
	binary.BigEndian.PutUint32(b[4:], audit)
	for i, a := range args {
		binary.BigEndian.PutUint32(b[16+8*i:], uint32(a))
		binary.BigEndian.PutUint32(b[20+8*i:], uint32(a>>32))
	}
	return b
}

// runVM runs the assembled program (disassembled again, so the bytes the
// kernel would get are what is tested) on data.
func runVM(t *testing.T, raw []bpf.RawInstruction, data []byte) Action {
	t.Helper()
	prog, ok := bpf.Disassemble(raw)
	if !ok {
		t.Fatalf("program does not disassemble")
	}
	vm, err := bpf.NewVM(prog)
	if err != nil {
		t.Fatalf("NewVM: %v", err)
	}
	out, err := vm.Run(data)
	if err != nil {
		t.Fatalf("vm.Run: %v", err)
	}
	return Action(uint32(out))
}

func TestSandboxPolicyVM(t *testing.T) {
	eperm, enosys := Errno(syscall.EPERM), Errno(syscall.ENOSYS)
	const (
		afInet, afInet6, afNetlink, afPacket, afVsock = 2, 10, 16, 17, 40
		cloneThread                                   = 0x003d0f00 // CLONE_VM|FS|FILES|SIGHAND|SYSVSEM|THREAD|SETTLS|PARENT_SETTID|CHILD_CLEARTID
		cloneNewUser                                  = 0x10000000
		cloneNewNet                                   = 0x40000000
		sigchld                                       = 17
		addrNoRandomize                               = 0x0040000
	)
	type call struct {
		name string
		args []uint64
		want Action
	}
	calls := []call{
		{"socket", []uint64{afUnix, 1, 0}, ActAllow},
		{"socket", []uint64{afInet, 1, 0}, eperm},
		{"socket", []uint64{afInet6, 2, 0}, eperm},
		{"socket", []uint64{afVsock, 1, 0}, eperm},
		{"socket", []uint64{afNetlink, 3, 0}, eperm},
		{"socket", []uint64{afPacket, 3, 0}, eperm},
		{"socket", []uint64{0, 1, 0}, eperm},
		// The kernel reads the domain as an int: the high half is ignored
		// by both the kernel and the filter.
		{"socket", []uint64{1<<32 | afUnix, 1, 0}, ActAllow},
		{"socket", []uint64{1<<32 | afVsock, 1, 0}, eperm},
		{"socketpair", []uint64{afUnix, 1, 0, 0}, ActAllow},
		{"socketpair", []uint64{afInet, 1, 0, 0}, eperm},
		{"clone", []uint64{cloneThread}, ActAllow},
		{"clone", []uint64{sigchld}, ActAllow},
		{"clone", []uint64{sigchld | cloneNewUser}, eperm},
		{"clone", []uint64{sigchld | cloneNewNet}, eperm},
		{"clone", []uint64{sigchld | cloneNewNS}, eperm},
		{"clone", []uint64{cloneNewMask}, eperm},
		{"clone3", []uint64{0, 88}, enosys},
		{"io_uring_setup", []uint64{8, 0}, enosys},
		{"io_uring_enter", nil, enosys},
		{"io_uring_register", nil, enosys},
		{"ioctl", []uint64{0, tiocsti, 0}, eperm},
		{"ioctl", []uint64{0, tioclinux, 0}, eperm},
		{"ioctl", []uint64{0, 0x5401 /* TCGETS */, 0}, ActAllow},
		{"ioctl", []uint64{0, 0xffffffff_00000000 | 0x5401, 0}, ActAllow},
		{"personality", []uint64{0xffffffff}, ActAllow},
		{"personality", []uint64{0}, ActAllow},
		{"personality", []uint64{0x8}, ActAllow},
		{"personality", []uint64{addrNoRandomize}, eperm},
		{"personality", []uint64{0x0400000 /* READ_IMPLIES_EXEC */}, eperm},
		{"mknodat", []uint64{0, 0, sIFCHR | 0o666, 0x0103}, eperm},
		{"mknodat", []uint64{0, 0, sIFBLK | 0o600, 0x0800}, eperm},
		{"mknodat", []uint64{0, 0, 0o010000 /* S_IFIFO */ | 0o644, 0}, ActAllow},
		{"mknodat", []uint64{0, 0, 0o100000 /* S_IFREG */ | 0o644, 0}, ActAllow},
		{"write", []uint64{1, 0, 0}, ActAllow},
		{"getpid", nil, ActAllow},
	}
	for _, name := range deniedSyscalls {
		calls = append(calls, call{name, nil, eperm})
	}
	for _, arch := range []*Arch{ArchAMD64, ArchARM64} {
		t.Run(arch.Name, func(t *testing.T) {
			raw, err := SandboxPolicy().Assemble(arch)
			if err != nil {
				t.Fatalf("Assemble: %v", err)
			}
			for _, c := range calls {
				nr, ok := arch.Syscall(c.name)
				if !ok {
					if !arch.absent[c.name] {
						t.Errorf("%s: no number for %q", arch.Name, c.name)
					}
					continue
				}
				if got := runVM(t, raw, seccompData(arch.Audit, nr, c.args...)); got != c.want {
					t.Errorf("%s%v = %v, want %v", c.name, c.args, got, c.want)
				}
			}
			// Syscall numbers the policy does not mention are allowed.
			if got := runVM(t, raw, seccompData(arch.Audit, 1000)); got != ActAllow {
				t.Errorf("unlisted syscall = %v, want allow", got)
			}
			// A foreign architecture kills the process, whatever the call.
			for _, audit := range []uint32{0x40000003 /* i386 */, 0, auditArchX86_64 ^ auditArchAARCH64 ^ arch.Audit} {
				if got := runVM(t, raw, seccompData(audit, 0)); got != ActKillProcess {
					t.Errorf("arch %#x = %v, want kill-process", audit, got)
				}
			}
			// x32 calls share x86_64's audit value and carry bit 30.
			if arch.X32 {
				for _, nr := range []uint32{x32SyscallBit | 41, x32SyscallBit | 1, 0xffffffff} {
					if got := runVM(t, raw, seccompData(arch.Audit, nr, afVsock)); got != enosys {
						t.Errorf("x32 nr %#x = %v, want ENOSYS", nr, got)
					}
				}
			}
		})
	}
}

// TestSupervisedPolicyVM checks the supervised policy's decisions on both
// ABIs: notified calls, the domains and ioctls it separates, and that
// every rule of the sandbox policy it does not replace decides as before.
func TestSupervisedPolicyVM(t *testing.T) {
	eperm, enosys := Errno(syscall.EPERM), Errno(syscall.ENOSYS)
	const (
		afInet, afInet6, afNetlink, afPacket = 2, 10, 16, 17
		solSocketLevel, soType               = 1, 3
	)
	type call struct {
		name string
		args []uint64
		want Action
	}
	calls := []call{
		{"socket", []uint64{afUnix, 1, 0}, ActAllow},
		{"socket", []uint64{afVsock, 1, 0}, ActNotify},
		{"socket", []uint64{1<<32 | afVsock, 1, 0}, ActNotify},
		{"socket", []uint64{afInet, 1, 0}, eperm},
		{"socket", []uint64{afInet6, 2, 0}, eperm},
		{"socket", []uint64{afNetlink, 3, 0}, eperm},
		{"socket", []uint64{afPacket, 3, 0}, eperm},
		{"socket", []uint64{0, 1, 0}, eperm},
		{"socketpair", []uint64{afUnix, 1, 0, 0}, ActAllow},
		{"socketpair", []uint64{afVsock, 1, 0, 0}, Errno(syscall.EOPNOTSUPP)},
		{"socketpair", []uint64{afInet, 1, 0, 0}, eperm},
		{"ioctl", []uint64{3, NSMIoctlRaw, 0}, ActNotify},
		{"ioctl", []uint64{3, 0xffffffff_00000000 | NSMIoctlRaw, 0}, ActNotify},
		{"ioctl", []uint64{3, 0x7b9 /* IOCTL_VM_SOCKETS_GET_LOCAL_CID */, 0}, ActNotify},
		{"ioctl", []uint64{0, tiocsti, 0}, eperm},
		{"ioctl", []uint64{0, 1<<32 | tiocsti, 0}, eperm},
		{"ioctl", []uint64{0, tioclinux, 0}, eperm},
		{"ioctl", []uint64{0, 0x5401 /* TCGETS */, 0}, ActNotify},
		{"getsockopt", []uint64{3, afVsock, 0}, ActNotify},
		{"getsockopt", []uint64{3, solSocketLevel, soDomain}, ActNotify},
		{"getsockopt", []uint64{3, solSocketLevel, soType}, ActAllow},
		{"getsockopt", []uint64{3, 6 /* IPPROTO_TCP */, soDomain}, ActAllow},
		{"setsockopt", []uint64{3, afVsock, 0}, ActNotify},
		{"setsockopt", []uint64{3, solSocketLevel, soDomain}, ActAllow},
		{"seccomp", []uint64{filterSetModeArg, seccompFlagNewListenerArg, 0}, eperm},
		{"seccomp", []uint64{filterSetModeArg, 0x19, 0}, eperm},
		{"seccomp", []uint64{filterSetModeArg, 1, 0}, ActAllow},
		{"seccomp", []uint64{0 /* SET_MODE_STRICT */, seccompFlagNewListenerArg, 0}, ActAllow},
		{"seccomp", []uint64{3 /* GET_NOTIF_SIZES */, 0, 0}, ActAllow},
		{"clone3", nil, enosys},
		{"io_uring_setup", nil, enosys},
		{"write", []uint64{1, 0, 0}, ActAllow},
	}
	for _, name := range NotifiedSocketCalls {
		calls = append(calls, call{name, []uint64{3, 0, 0}, ActNotify})
	}
	for _, name := range deniedSyscalls {
		calls = append(calls, call{name, nil, eperm})
	}
	for _, arch := range []*Arch{ArchAMD64, ArchARM64} {
		t.Run(arch.Name, func(t *testing.T) {
			raw, err := SupervisedPolicy().Assemble(arch)
			if err != nil {
				t.Fatalf("Assemble: %v", err)
			}
			base, err := SandboxPolicy().Assemble(arch)
			if err != nil {
				t.Fatalf("Assemble: %v", err)
			}
			for _, c := range calls {
				nr, ok := arch.Syscall(c.name)
				if !ok {
					if !arch.absent[c.name] {
						t.Errorf("%s: no number for %q", arch.Name, c.name)
					}
					continue
				}
				if got := runVM(t, raw, seccompData(arch.Audit, nr, c.args...)); got != c.want {
					t.Errorf("%s%v = %v, want %v", c.name, c.args, got, c.want)
				}
			}
			// Rules the supervised policy keeps decide as in the sandbox
			// policy, for a spread of argument values.
			kept := map[string]bool{"socket": false, "socketpair": false, "ioctl": false}
			for _, r := range SandboxPolicy().Rules {
				if _, replaced := kept[r.Syscall]; replaced {
					continue
				}
				nr, ok := arch.Syscall(r.Syscall)
				if !ok {
					continue
				}
				for _, a := range []uint64{0, 1, 0x8, 0x20000, cloneNewNS, sIFCHR | 0o600, sIFBLK, 0o010644, 0xffffffff} {
					data := seccompData(arch.Audit, nr, a, a, a, a)
					if got, want := runVM(t, raw, data), runVM(t, base, data); got != want {
						t.Errorf("%s(%#x) = %v, sandbox policy says %v", r.Syscall, a, got, want)
					}
				}
			}
			if got := runVM(t, raw, seccompData(arch.Audit, 1000)); got != ActAllow {
				t.Errorf("unlisted syscall = %v, want allow", got)
			}
			if got := runVM(t, raw, seccompData(0x40000003, 0)); got != ActKillProcess {
				t.Errorf("i386 call = %v, want kill-process", got)
			}
		})
	}
}

// TestCasesLongJump checks a rule with Cases whose block is too long for
// an 8-bit skip: the syscall match and every failed condition must still
// land on the next case.
func TestCasesLongJump(t *testing.T) {
	var many []uint32
	for i := range 64 {
		many = append(many, uint32(1000+i))
	}
	var cases []Case
	for i := range 6 {
		cases = append(cases, Case{If: []Cond{{Arg: 0, Op: OpIn, Values: many}, {Arg: 1, Op: OpIn, Values: []uint32{uint32(i)}}}, Action: Errno(syscall.Errno(i + 1))})
	}
	p := Policy{Rules: []Rule{
		{Syscall: "ioctl", Cases: cases, Default: Errno(syscall.E2BIG)},
		{Syscall: "write", Action: Errno(syscall.EIO)},
	}}
	raw, err := p.Assemble(ArchAMD64)
	if err != nil {
		t.Fatal(err)
	}
	ioctl, _ := ArchAMD64.Syscall("ioctl")
	write, _ := ArchAMD64.Syscall("write")
	for _, tc := range []struct {
		nr   uint32
		args []uint64
		want Action
	}{
		{ioctl, []uint64{1000, 0}, Errno(1)},
		{ioctl, []uint64{1063, 5}, Errno(6)},
		{ioctl, []uint64{1063, 6}, Errno(syscall.E2BIG)},
		{ioctl, []uint64{999, 0}, Errno(syscall.E2BIG)},
		{write, nil, Errno(syscall.EIO)},
		{1000, nil, ActAllow},
	} {
		if got := runVM(t, raw, seccompData(ArchAMD64.Audit, tc.nr, tc.args...)); got != tc.want {
			t.Errorf("nr %d %v = %v, want %v", tc.nr, tc.args, got, tc.want)
		}
	}
}

func TestCompileErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		p    Policy
	}{
		{"unknown syscall", Policy{Rules: []Rule{{Syscall: "no_such_call", Action: ActKillProcess}}}},
		{"duplicate", Policy{Rules: []Rule{{Syscall: "mount", Action: ActKillProcess}, {Syscall: "mount", Action: ActAllow}}}},
		{"bad arg", Policy{Rules: []Rule{{Syscall: "socket", Action: ActKillProcess, Cond: &Cond{Arg: 6, Op: OpIn, Values: []uint32{1}}}}}},
		{"no values", Policy{Rules: []Rule{{Syscall: "socket", Action: ActKillProcess, Cond: &Cond{Arg: 0, Op: OpNotIn}}}}},
		{"no mask", Policy{Rules: []Rule{{Syscall: "clone", Action: ActKillProcess, Cond: &Cond{Arg: 0, Op: OpAnyBits}}}}},
		{"bad op", Policy{Rules: []Rule{{Syscall: "clone", Action: ActKillProcess, Cond: &Cond{Arg: 0, Op: 99, Mask: 1}}}}},
		{"cases without default", Policy{Rules: []Rule{{Syscall: "socket", Cases: []Case{{Action: ActAllow}}}}}},
		{"cases and cond", Policy{Rules: []Rule{{Syscall: "socket", Default: ActAllow, Cond: &Cond{Arg: 0, Op: OpIn, Values: []uint32{1}}, Cases: []Case{{Action: ActAllow}}}}}},
		{"case without action", Policy{Rules: []Rule{{Syscall: "socket", Default: ActAllow, Cases: []Case{{}}}}}},
		{"case bad arg", Policy{Rules: []Rule{{Syscall: "socket", Default: ActAllow, Cases: []Case{{If: []Cond{{Arg: 7, Op: OpIn, Values: []uint32{1}}}, Action: ActNotify}}}}}},
		{"case no values", Policy{Rules: []Rule{{Syscall: "socket", Default: ActAllow, Cases: []Case{{If: []Cond{{Arg: 0, Op: OpIn}}, Action: ActNotify}}}}}},
		{"case no mask", Policy{Rules: []Rule{{Syscall: "socket", Default: ActAllow, Cases: []Case{{If: []Cond{{Arg: 0, Op: OpAnyBits}}, Action: ActNotify}}}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := tc.p.Assemble(ArchAMD64); !errors.Is(err, ErrInvalidPolicy) {
				t.Fatalf("Assemble error = %v, want ErrInvalidPolicy", err)
			}
		})
	}
	if _, err := (Policy{}).Compile(nil); !errors.Is(err, ErrUnsupportedArch) {
		t.Fatalf("Compile(nil) error = %v, want ErrUnsupportedArch", err)
	}
}

func TestActionString(t *testing.T) {
	for a, want := range map[Action]string{
		ActAllow:              "allow",
		ActKillProcess:        "kill-process",
		ActNotify:             "notify",
		Errno(syscall.EPERM):  "errno(1 operation not permitted)",
		Action(0x7ffc0000):    "action(0x7ffc0000)",
		Errno(syscall.ENOSYS): "errno(38 function not implemented)",
	} {
		if got := a.String(); got != want {
			t.Errorf("%#x.String() = %q, want %q", uint32(a), got, want)
		}
	}
}

func BenchmarkSandboxFilterVM(b *testing.B) {
	raw, err := SandboxProgram()
	if err != nil {
		b.Fatal(err)
	}
	prog, _ := bpf.Disassemble(raw)
	vm, err := bpf.NewVM(prog)
	if err != nil {
		b.Fatal(err)
	}
	arch, _ := NativeArch()
	nr, _ := arch.Syscall("write") // not listed: walks every comparison
	data := seccompData(arch.Audit, nr, 1)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := vm.Run(data); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSupervisedFilterVM runs the supervised policy on a call it does
// not list (the longest path) in x/net/bpf's VM.
func BenchmarkSupervisedFilterVM(b *testing.B) {
	raw, err := SupervisedProgram()
	if err != nil {
		b.Fatal(err)
	}
	prog, _ := bpf.Disassemble(raw)
	vm, err := bpf.NewVM(prog)
	if err != nil {
		b.Fatal(err)
	}
	arch, _ := NativeArch()
	data := seccompData(arch.Audit, 1000, 1)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := vm.Run(data); err != nil {
			b.Fatal(err)
		}
	}
}
