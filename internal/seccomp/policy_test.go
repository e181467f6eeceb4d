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
