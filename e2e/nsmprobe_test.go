package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloister/cloister/parent/parenttest"
)

// probeReport is the part of nsmprobe's output the tests read.
type probeReport struct {
	PCRs []struct {
		Index uint64 `json:"index"`
		Data  string `json:"data"`
	} `json:"pcrs"`
	Cases []probeCase `json:"cases"`
	Error string      `json:"error"`
}

type probeCase struct {
	Name             string  `json:"name"`
	Errno            int     `json:"errno"`
	ErrnoName        string  `json:"errno_name"`
	ResponseLen      *uint64 `json:"response_len"`
	Response         string  `json:"response"`
	ResponseWritten  *bool   `json:"response_written"`
	WrittenBeyondLen *bool   `json:"written_beyond_len"`
	Calls            int     `json:"calls"`
	Failures         *int    `json:"failures"`
	Consistent       *bool   `json:"consistent"`
}

// runProbe runs e2e/testdata/nsmprobe in world w and returns its report,
// also written to $CLOISTER_NSMPROBE_OUT/<world>.json when that is set
// (for comparing worlds).
func runProbe(t *testing.T, w existingWorld) (probeReport, string) {
	flags := w.flags(t)
	d := parenttest.StartDaemon(t, w.backend, w.config)
	dir := parenttest.ShortTemp(t)
	bin := parenttest.BuildProgram(t, dir, "nsmprobe", "./e2e/testdata/nsmprobe")
	img := parenttest.BuildImage(t, dir, parenttest.Image{
		Name: "nsmprobe", Files: map[string]string{"bin/nsmprobe": bin},
		Cmd: []string{"/bin/nsmprobe"}, Extra: flags,
	})
	res := d.Run(img, w.memMiB, false)
	d.WaitExit(res.EnclaveID, w.boot)
	console := strings.ReplaceAll(d.ConsoleUntil(res.EnclaveID, "", 0), "\r\n", "\n") // a serial console's line ends
	// The report is the indented JSON object between a line "{" and a line "}".
	start := strings.Index(console, "\n{\n")
	end := strings.LastIndex(console, "\n}\n")
	if start < 0 || end < start {
		t.Fatalf("no report on the console:\n%s", console)
	}
	js := console[start+1 : end+2]
	var r probeReport
	if err := json.Unmarshal([]byte(js), &r); err != nil {
		t.Fatalf("report: %v\n%s", err, js)
	}
	if out := os.Getenv("CLOISTER_NSMPROBE_OUT"); out != "" {
		if err := os.WriteFile(filepath.Join(out, w.name+".json"), []byte(js), 0o644); err != nil {
			t.Error(err)
		}
	}
	return r, img
}

// probeErrnos is the errno the Linux nsm driver gives in each case of
// nsmprobe (internal/nsm/nsmdev's table; "" is success). request_len_0 is
// EIO in the emulated worlds: the stream to the emulated module cannot
// carry an empty request, which the driver would pass to its device.
var probeErrnos = map[string]string{
	"ok_describe_nsm": "", "ok_describe_pcr0": "", "ok_response_len_huge": "",
	"cmd_other_nr": "EINVAL", "cmd_other_size": "EINVAL", "cmd_other_type": "EINVAL",
	"cmd_other_dir_read": "EINVAL", "cmd_other_dir_none": "EINVAL", "cmd_tcgets": "EINVAL",
	"cmd_fionread": "EINVAL", "cmd_high_bits": "",
	"arg_null": "EFAULT", "arg_unmapped": "EFAULT", "arg_kernel_address": "EFAULT",
	"arg_straddles_unmapped": "EFAULT", "arg_readonly": "EFAULT",
	"request_addr_null": "EFAULT", "request_addr_unmapped": "EFAULT", "request_straddles_unmapped": "EFAULT",
	"request_ends_at_unmapped": "", "request_addr_kernel": "EFAULT",
	"response_addr_null": "EFAULT", "response_addr_unmapped": "EFAULT", "response_straddles_unmapped": "EFAULT",
	"response_addr_readonly": "EFAULT",
	"request_len_0":          "EIO", "request_len_0_addr_null": "EIO",
	"request_len_4096": "", "request_len_4097": "EMSGSIZE", "request_len_4097_addr_unmapped": "EMSGSIZE",
	"request_len_huge": "EMSGSIZE", "request_len_longer_than_cbor": "",
	"response_len_0": "", "response_len_0_addr_null": "", "response_len_0_addr_unmapped": "",
	"response_len_10": "", "response_len_10_then_unmapped": "",
	"request_not_cbor": "", "request_text_not_cbor": "", "request_truncated_cbor": "",
	"request_unknown_operation": "", "request_unknown_operation_map": "", "request_describe_pcr_out_of_range": "",
	"concurrent_one_fd": "", "concurrent_eight_fds": "", "dup_fd_after_close": "",
	"open_rdonly": "", "open_wronly": "", "open_path_fd": "EBADF", "read_fd": "EINVAL", "write_fd": "EINVAL",
	"fork_child_inherited_fd": "", "exec_child_inherited_fd": "", "scm_rights_same_process": "", "scm_rights_child_process": "",
}

// probeResponses pins what reaches the caller in the cases where the
// driver's truncation and the module's answer are observable.
var probeResponses = map[string]string{
	"ok_describe_nsm": "DescribeNSM", "ok_response_len_huge": "DescribeNSM", "ok_describe_pcr0": "DescribePCR",
	"request_not_cbor": "Error:InvalidOperation", "request_unknown_operation": "Error:InvalidOperation",
	"request_describe_pcr_out_of_range": "Error:InvalidIndex", "request_ends_at_unmapped": "DescribeNSM",
}

// TestNSMProbe runs the ioctl edge-case probe (which uses golang.org/x/sys
// only) against /dev/nsm in each world and checks every case against the
// driver's errno, the answers that reach the caller, the truncation of the
// response to response.len, concurrent callers, forked and exec'd children
// and descriptors passed over Unix sockets, and the PCRs against
// describe-eif. With $CLOISTER_NSMPROBE_OUT set the reports are kept there
// for comparison with the real driver (QEMU's nitro-enclave machine).
func TestNSMProbe(t *testing.T) {
	for _, w := range existingWorlds {
		t.Run(w.name, func(t *testing.T) {
			r, img := runProbe(t, w)
			if r.Error != "" {
				t.Errorf("probe error: %s", r.Error)
			}
			seen := map[string]bool{}
			for _, c := range r.Cases {
				seen[c.Name] = true
				want, known := probeErrnos[c.Name]
				if !known {
					t.Logf("case %s (errno %q) has no expectation here", c.Name, c.ErrnoName)
					continue
				}
				if c.ErrnoName != want {
					t.Errorf("%s: errno %q, want %q", c.Name, c.ErrnoName, want)
				}
				if resp, ok := probeResponses[c.Name]; ok && c.Response != resp {
					t.Errorf("%s: response %q, want %q", c.Name, c.Response, resp)
				}
				if c.Failures != nil && *c.Failures != 0 || c.Consistent != nil && !*c.Consistent {
					t.Errorf("%s: %d calls, %v failures, consistent %v", c.Name, c.Calls, *c.Failures, c.Consistent)
				}
				if c.WrittenBeyondLen != nil && *c.WrittenBeyondLen {
					t.Errorf("%s: bytes after response.len were written", c.Name)
				}
			}
			for name := range probeErrnos {
				if !seen[name] {
					t.Errorf("the probe has no case %s", name)
				}
			}
			if n := r.lenOf("response_len_10"); n != 10 {
				t.Errorf("response_len_10: response.len %d, want 10 (truncated)", n)
			}
			if n, full := r.lenOf("ok_response_len_huge"), r.lenOf("ok_describe_nsm"); n != full || n == 0 {
				t.Errorf("response.len %d with a huge buffer, %d with a full one: want the answer's length", n, full)
			}
			desc := describeEIF(t, img)
			want := []string{desc.PCR0, desc.PCR1, desc.PCR2}
			if len(r.PCRs) != 3 {
				t.Fatalf("probe PCRs %+v", r.PCRs)
			}
			for i, p := range r.PCRs {
				if p.Data != want[i] {
					t.Errorf("PCR%d %s, describe-eif %s", i, p.Data, want[i])
				}
			}
		})
	}
}

// lenOf returns the response.len of the named case (0 when absent).
func (r probeReport) lenOf(name string) uint64 {
	for _, c := range r.Cases {
		if c.Name == name && c.ResponseLen != nil {
			return *c.ResponseLen
		}
	}
	return 0
}
