package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cloister/cloister/parent/parenttest"
)

// worldProbeAllowed lists, per world and case, the fields of nsmprobe's
// output allowed to differ from the real driver's (realDriverReference),
// and why; the differences every world has (probeAllowed) come on top.
// Each entry is a known, documented limit of that world's mechanism
// (docs/concepts.md, "/dev/nsm in every world").
var worldProbeAllowed = map[string]map[string]map[string]string{
	"sandbox": {
		"read_fd":  {"errno": "/dev/nsm is a bind of /dev/null in the sandbox and read(2) is not notified: it returns 0 where the driver, which has no read, gives EINVAL"},
		"write_fd": {"errno": "as read_fd: write(2) on /dev/null succeeds"},
	},
	// CUSE's retry protocol (internal/nsm/nsmcuse): the kernel writes the
	// final answer to the out ranges in order, struct first, after the
	// module has answered; the driver writes the response, then the struct.
	"microvm": {
		"arg_readonly":                {"response_written": "CUSE: the read-only struct is the first out range, so the kernel fails before it writes the response, which the driver writes first"},
		"response_addr_null":          {"response_len": "CUSE: response.len in the struct is written (first out range) before the kernel fails on the response buffer; the driver leaves it"},
		"response_addr_unmapped":      {"response_len": "as response_addr_null"},
		"response_addr_readonly":      {"response_len": "as response_addr_null"},
		"response_straddles_unmapped": {"response_len": "as response_addr_null"},
	},
}

// TestNSMProbe runs the ioctl edge-case probe (e2e/testdata/nsmprobe,
// golang.org/x/sys only) against /dev/nsm in each emulated world, reads its
// report over AF_VSOCK with `cloister connect`'s client path, and compares
// it case by case with the real Linux nsm driver's (QEMU's nitro-enclave
// machine, TestNitroEnclaveCrossCheck): the errno of every edge case,
// response lengths and truncation, the answers that reach the caller,
// concurrent callers, forked and exec'd children and descriptors passed
// over Unix sockets. PCRs are checked against describe-eif. With
// $CLOISTER_NSMPROBE_OUT set, each world's report is kept there.
func TestNSMProbe(t *testing.T) {
	for _, w := range existingWorlds {
		t.Run(w.name, func(t *testing.T) {
			out, img := runProbe(t, w)
			got, err := parseProbe(out)
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			if got.Error != "" {
				t.Fatalf("nsmprobe: %s", got.Error)
			}
			desc := describeEIF(t, img)
			want := []string{desc.PCR0, desc.PCR1, desc.PCR2}
			if len(got.PCRs) != 3 {
				t.Fatalf("probe PCRs %+v", got.PCRs)
			}
			for i, p := range got.PCRs {
				if p.Data != want[i] || !p.Lock {
					t.Errorf("PCR%d through /dev/nsm: %s (lock %v), describe-eif %s", i, p.Data, p.Lock, want[i])
				}
			}
			if d := diffWithRealDriver(t, maskProbe(t, out, worldProbeAllowed[w.name])); d != "" {
				t.Errorf("/dev/nsm in the %s world differs from the real driver (-driver +%s):\n%s", w.name, w.name, d)
			}
		})
	}
}

// runProbe runs nsmprobe in world w, serving its report on a vsock port,
// and returns the report and the image.
func runProbe(t *testing.T, w existingWorld) ([]byte, string) {
	d := parenttest.StartDaemon(t, w.backend, w.config)
	dir := parenttest.ShortTemp(t)
	bin := parenttest.BuildProgram(t, dir, "nsmprobe", "./e2e/testdata/nsmprobe")
	img := parenttest.BuildImage(t, dir, parenttest.Image{
		Name: "nsmprobe", Files: map[string]string{"bin/nsmprobe": bin},
		Cmd:   []string{"/bin/nsmprobe", "-listen-vsock", fmt.Sprint(probePort)},
		Extra: w.flags(t),
	})
	res := d.Run(img, w.memMiB, false)
	d.ConsoleUntil(res.EnclaveID, "NSMPROBE READY", w.boot)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := d.Client.Connect(ctx, res.EnclaveID, probePort)
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(c)
	c.Close()
	if err != nil {
		t.Fatal(err)
	}
	if dir := os.Getenv("CLOISTER_NSMPROBE_OUT"); dir != "" {
		if err := os.WriteFile(filepath.Join(dir, w.name+".json"), out, 0o644); err != nil {
			t.Error(err)
		}
	}
	return out, img
}

// maskProbe replaces, in the probe output b, each allowed field of each
// named case with the real driver's value, so that the comparison ignores
// exactly those.
func maskProbe(t *testing.T, b []byte, allowed map[string]map[string]string) []byte {
	t.Helper()
	if len(allowed) == 0 {
		return b
	}
	ref, err := os.ReadFile(realDriverReference)
	if err != nil {
		t.Fatal(err)
	}
	r, err := parseProbe(ref)
	if err != nil {
		t.Fatal(err)
	}
	got, err := parseProbe(b)
	if err != nil {
		t.Fatal(err)
	}
	refCase := map[string]probeCase{}
	for _, c := range r.Cases {
		refCase[c.Name] = c
	}
	for i, c := range got.Cases {
		rc, ok := refCase[c.Name]
		if !ok {
			continue
		}
		for field := range allowed[c.Name] {
			switch field {
			case "errno":
				c.Errno, c.ErrnoName = rc.Errno, rc.ErrnoName
			case "response_len":
				c.ResponseLen = rc.ResponseLen
			case "response":
				c.Response = rc.Response
			case "response_written":
				c.ResponseWritten = rc.ResponseWritten
			default:
				t.Fatalf("worldProbeAllowed: unknown field %q", field)
			}
		}
		got.Cases[i] = c
	}
	out, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
