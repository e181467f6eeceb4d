package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// The output of e2e/testdata/nsmprobe, the ioctl edge-case probe of
// /dev/nsm (that program owns the schema; these types decode it strictly,
// so a field added there must be added here).
type (
	probeReport struct {
		Device      string            `json:"device"`
		IoctlRaw    string            `json:"ioctl_raw"`
		DescribeNSM *probeDescribeNSM `json:"describe_nsm,omitempty"`
		PCRs        []probePCR        `json:"pcrs"`
		Cases       []probeCase       `json:"cases"`
		Skipped     []string          `json:"skipped,omitempty"`
		Error       string            `json:"error,omitempty"`
	}
	probeDescribeNSM struct {
		Digest     string   `json:"digest"`
		MaxPCRs    uint64   `json:"max_pcrs"`
		ModuleID   string   `json:"module_id"`
		Version    string   `json:"version"`
		LockedPCRs []uint64 `json:"locked_pcrs"`
	}
	probePCR struct {
		Index uint64 `json:"index"`
		Lock  bool   `json:"lock"`
		Data  string `json:"data"`
	}
	probeCase struct {
		Name             string  `json:"name"`
		Errno            int     `json:"errno"`
		ErrnoName        string  `json:"errno_name,omitempty"`
		ResponseLen      *uint64 `json:"response_len,omitempty"`
		Response         string  `json:"response,omitempty"`
		ResponseWritten  *bool   `json:"response_written,omitempty"`
		WrittenBeyondLen *bool   `json:"written_beyond_len,omitempty"`
		Calls            int     `json:"calls,omitempty"`
		Failures         *int    `json:"failures,omitempty"`
		Consistent       *bool   `json:"consistent,omitempty"`
		Note             string  `json:"note,omitempty"`
	}
)

// realDriverReference is the probe's output through the real Linux nsm
// driver on QEMU's nitro-enclave machine, written by
// TestNitroEnclaveCrossCheck -update-nsmprobe and checked by every run of it.
var realDriverReference = filepath.Join("testdata", "nsmprobe", "real-driver.json")

func parseProbe(b []byte) (probeReport, error) {
	var r probeReport
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return probeReport{}, fmt.Errorf("nsmprobe output: %w", err)
	}
	return r, nil
}

// probeAllowed lists, per case, the fields allowed to differ between the
// real driver and another world, and why. Everything else must be equal.
var probeAllowed = map[string]map[string]string{
	"ok_describe_nsm": {
		"response_len": "DescribeNSM's answer holds the module ID and the locked PCRs, which each module chooses",
	},
	"request_len_longer_than_cbor": {
		"response": "QEMU's virtio-nsm decodes the first CBOR item and ignores what follows (libcbor's cbor_load); " +
			"Nitro's NSM and Cloister's emulator refuse trailing bytes (InvalidOperation). A device difference, not the driver's",
		"response_len": "follows from the answer",
	},
	"request_describe_pcr_index_16bit": {
		"response": "QEMU's virtio-nsm reads the index only as a one-byte CBOR integer, so index 4096 is InvalidOperation " +
			"there; NSM's index is a u16, so Nitro's NSM and Cloister's emulator answer InvalidIndex. A device difference",
		"response_len": "follows from the answer",
	},
	"request_two_cbor_items": {
		"response":     "as request_len_longer_than_cbor",
		"response_len": "follows from the answer",
	},
}

// diffProbe compares another world's probe output with the real driver's
// and returns the differences other than those in probeAllowed and the
// values each world has its own of — the PCR data (each world checks its
// PCRs against describe-eif itself) and DescribeNSM's module_id and
// version — ("" when the two behave alike). Cases the reference
// skipped (the request_len_0 cases: QEMU's device stops answering after an
// empty request) are not compared; a case the other world skipped or lacks
// is a difference.
func diffProbe(ref, other probeReport) string {
	norm := func(r probeReport, skip map[string]bool) probeReport {
		out := probeReport{Device: r.Device, IoctlRaw: r.IoctlRaw, Error: r.Error, Skipped: r.Skipped}
		if r.DescribeNSM != nil {
			d := *r.DescribeNSM
			d.ModuleID, d.Version = "", ""
			out.DescribeNSM = &d
		}
		for _, p := range r.PCRs {
			out.PCRs = append(out.PCRs, probePCR{Index: p.Index, Lock: p.Lock})
		}
		for _, c := range r.Cases {
			if skip[c.Name] {
				continue
			}
			for field := range probeAllowed[c.Name] {
				switch field {
				case "response_len":
					c.ResponseLen = nil
				case "response":
					c.Response = ""
				}
			}
			out.Cases = append(out.Cases, c)
		}
		sort.Slice(out.Cases, func(i, j int) bool { return out.Cases[i].Name < out.Cases[j].Name })
		return out
	}
	skip := map[string]bool{}
	for _, n := range ref.Skipped {
		skip[n] = true
	}
	a, b := norm(ref, skip), norm(other, skip)
	a.Skipped, b.Skipped = nil, nil
	for _, n := range other.Skipped {
		if !skip[n] {
			b.Skipped = append(b.Skipped, n)
		}
	}
	return cmp.Diff(a, b)
}

// diffWithRealDriver diffs probe output from another world (the sandbox's
// or the microVM's /dev/nsm) against the committed real-driver reference;
// "" means they behave alike up to the documented differences.
func diffWithRealDriver(t testing.TB, other []byte) string {
	t.Helper()
	b, err := os.ReadFile(realDriverReference)
	if err != nil {
		t.Fatalf("the real driver's reference: %v (TestNitroEnclaveCrossCheck -update-nsmprobe writes it)", err)
	}
	ref, err := parseProbe(b)
	if err != nil {
		t.Fatalf("%s: %v", realDriverReference, err)
	}
	got, err := parseProbe(other)
	if err != nil {
		t.Fatal(err)
	}
	return diffProbe(ref, got)
}

// TestDiffProbe checks the comparison itself on the committed reference:
// the world-specific values may differ, nothing else may.
func TestDiffProbe(t *testing.T) {
	b, err := os.ReadFile(realDriverReference)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := parseProbe(b)
	if err != nil {
		t.Fatal(err)
	}
	if ref.Error != "" || len(ref.Cases) < 50 || len(ref.PCRs) != 3 || ref.DescribeNSM == nil {
		t.Fatalf("reference looks incomplete: error %q, %d cases, %d PCRs", ref.Error, len(ref.Cases), len(ref.PCRs))
	}
	clone := func() probeReport {
		r, err := parseProbe(b)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	n := func(v uint64) *uint64 { return &v }
	for _, tc := range []struct {
		name   string
		change func(r *probeReport)
		differ bool
	}{
		{"identical", func(*probeReport) {}, false},
		{"other PCR values and module", func(r *probeReport) {
			r.PCRs[0].Data = "00"
			r.DescribeNSM.ModuleID = "i-0000000000000000-enc0000000000000000"
		}, false},
		{"documented difference", func(r *probeReport) {
			for i := range r.Cases {
				if r.Cases[i].Name == "request_len_longer_than_cbor" {
					r.Cases[i].Response, r.Cases[i].ResponseLen = "Error:InvalidOperation", n(26)
				}
			}
		}, false},
		{"another errno", func(r *probeReport) { r.Cases[3].Errno, r.Cases[3].ErrnoName = 25, "ENOTTY" }, true},
		{"another response length", func(r *probeReport) {
			for i := range r.Cases {
				if r.Cases[i].Name == "response_len_10" {
					r.Cases[i].ResponseLen = n(12)
				}
			}
		}, true},
		{"a case missing", func(r *probeReport) { r.Cases = r.Cases[1:] }, true},
		{"a case skipped", func(r *probeReport) { r.Skipped = append(r.Skipped, r.Cases[0].Name); r.Cases = r.Cases[1:] }, true},
		{"a PCR unlocked", func(r *probeReport) { r.PCRs[1].Lock = !r.PCRs[1].Lock }, true},
		{"an error", func(r *probeReport) { r.Error = "nsmprobe: open /dev/nsm: no such file or directory" }, true},
		{"another digest", func(r *probeReport) { r.DescribeNSM.Digest = "SHA256" }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			other := clone()
			tc.change(&other)
			if d := diffProbe(ref, other); (d != "") != tc.differ {
				t.Errorf("diffProbe: differ = %v, want %v:\n%s", d != "", tc.differ, d)
			}
		})
	}
}
