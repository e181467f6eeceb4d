package unotify

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"github.com/cloister/cloister/internal/seccomp"
	"golang.org/x/net/bpf"
)

// checkHostChildEnv makes the test binary (see TestMain) refuse
// pidfd_getfd with a seccomp filter of its own, as a container's may, and
// print what CheckHost says.
const checkHostChildEnv = "CLOISTER_UNOTIFY_CHECKHOST_CHILD"

func checkHostChild() int {
	runtime.LockOSThread()
	arch, err := seccomp.NativeArch()
	if err == nil {
		err = seccomp.SetNoNewPrivs()
	}
	if err == nil {
		var prog []bpf.RawInstruction
		prog, err = seccomp.Policy{Rules: []seccomp.Rule{{Syscall: "pidfd_getfd", Action: seccomp.Errno(syscall.EPERM)}}}.Assemble(arch)
		if err == nil {
			err = seccomp.Install(prog)
		}
	}
	if err != nil {
		fmt.Println("setup:", err)
		return 2
	}
	err = CheckHost()
	fmt.Printf("errhost=%v\n%v\n", errors.Is(err, ErrHost), err)
	return 0
}

// TestCheckHost: this process can supervise; one whose seccomp filter
// refuses pidfd_getfd (systemd-nspawn 252's default filter does) is told
// so, with what to allow, instead of letting every supervised call fall
// through to the file underneath.
func TestCheckHost(t *testing.T) {
	if err := CheckHost(); err != nil {
		t.Fatalf("CheckHost here: %v", err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), checkHostChildEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if !strings.HasPrefix(string(out), "errhost=true\n") || !strings.Contains(string(out), "pidfd_getfd") || !strings.Contains(string(out), "--system-call-filter=pidfd_getfd") {
		t.Errorf("CheckHost under a filter refusing pidfd_getfd:\n%s", out)
	}
}
