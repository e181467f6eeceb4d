//go:build linux

package sandbox

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/cloister/cloister/attest"
	"github.com/cloister/cloister/parent/nsmemu"
)

// emulatorNSM is the daemon's emulated security module as /dev/nsm's
// transport (what the monitor gives Spec.Nitro.NSM).
type emulatorNSM struct{ emu *nsmemu.Emulator }

func (e emulatorNSM) RoundTrip(ctx context.Context, req []byte) ([]byte, error) {
	return e.emu.Handle(ctx, req), nil
}

// testPCRs are the boot PCRs the test emulator reports: PCRi is 48 bytes
// of i+1.
func testPCRs() map[int][]byte {
	m := map[int][]byte{}
	for i := range 3 {
		m[i] = bytes.Repeat([]byte{byte(i + 1)}, 48)
	}
	return m
}

func newEmulator(t testing.TB) *nsmemu.Emulator {
	t.Helper()
	iss, err := attest.NewIssuer(attest.IssuerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	emu, err := nsmemu.New(nsmemu.Config{ModuleID: "i-sandbox-test-enc0", Issuer: iss, PCRs: testPCRs()})
	if err != nil {
		t.Fatal(err)
	}
	return emu
}

// nsmReport is the part of nsmprobe's report the test checks.
type nsmReport struct {
	Device      string `json:"device"`
	DescribeNSM *struct {
		ModuleID string `json:"module_id"`
	} `json:"describe_nsm"`
	PCRs []struct {
		Index uint64 `json:"index"`
		Data  string `json:"data"`
	} `json:"pcrs"`
	Cases []struct {
		Name      string `json:"name"`
		ErrnoName string `json:"errno_name"`
		Response  string `json:"response"`
	} `json:"cases"`
	Error string `json:"error"`
}

// TestSandboxNSMProbe runs the ioctl edge-case probe (e2e/testdata/nsmprobe,
// the program run against the real driver in QEMU's nitro-enclave
// machine) on the sandbox's /dev/nsm, served by the supervisor with the
// daemon's emulator, and logs its report for the comparison between
// worlds.
func TestSandboxNSMProbe(t *testing.T) {
	pr := startProbe(t, probeOpts{nitro: &Nitro{NSM: emulatorNSM{newEmulator(t)}}, program: "/bin/nsmprobe"})
	select {
	case <-pr.done():
	case <-timeout(t):
	}
	// The process may end before the console pump has drained its output:
	// wait (a bound, not an assertion) for the report's last line.
	out := pr.console.String()
	for deadline := time.Now().Add(time.Minute); !strings.Contains(out, "\n}\n") && time.Now().Before(deadline); out = pr.console.String() {
		time.Sleep(10 * time.Millisecond)
	}
	start, end := strings.Index(out, "\n{\n"), strings.LastIndex(out, "\n}\n")
	if start < 0 || end < start {
		t.Fatalf("no JSON report on the console:\n%s", out)
	}
	js := out[start+1 : end+2]
	t.Logf("nsmprobe report in the sandbox:\n%s", js)
	var r nsmReport
	if err := json.Unmarshal([]byte(js), &r); err != nil {
		t.Fatal(err)
	}
	if r.Error != "" {
		t.Errorf("probe error: %s", r.Error)
	}
	if r.DescribeNSM == nil || r.DescribeNSM.ModuleID != "i-sandbox-test-enc0" {
		t.Errorf("DescribeNSM = %+v", r.DescribeNSM)
	}
	for _, p := range r.PCRs {
		if want := hex.EncodeToString(testPCRs()[int(p.Index)]); p.Index < 3 && p.Data != want {
			t.Errorf("PCR%d = %s, want %s", p.Index, p.Data, want)
		}
	}
	// What the Linux nsm driver does (drivers/misc/nsm.c): the cases
	// whose outcome does not depend on the module's answer.
	want := map[string]string{
		"ok_describe_nsm": "", "cmd_other_nr": "EINVAL", "cmd_other_size": "EINVAL", "cmd_other_type": "EINVAL",
		"cmd_tcgets": "EINVAL", "cmd_fionread": "EINVAL", "cmd_high_bits": "", "arg_null": "EFAULT",
		"arg_unmapped": "EFAULT", "arg_kernel_address": "EFAULT", "request_addr_unmapped": "EFAULT",
		"request_len_4097": "EMSGSIZE", "response_addr_readonly": "EFAULT", "response_addr_unmapped": "EFAULT",
		"open_path_fd": "EBADF",
	}
	for _, c := range r.Cases {
		if w, ok := want[c.Name]; ok && c.ErrnoName != w {
			t.Errorf("case %s: errno %q, want %q", c.Name, c.ErrnoName, w)
		}
		delete(want, c.Name)
	}
	for name := range want {
		t.Errorf("case %s missing from the report", name)
	}
}

// timeout fails t when a sandbox takes more than two minutes.
func timeout(t *testing.T) <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		<-time.After(2 * time.Minute)
		close(ch)
	}()
	t.Cleanup(func() {
		select {
		case <-ch:
			t.Errorf("the sandbox ran for more than two minutes")
		default:
		}
	})
	return ch
}
