package daemon

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/parent"
	"github.com/cloister/cloister/parent/backend"
)

func TestStateText(t *testing.T) {
	for _, tc := range []struct {
		s    State
		name string
	}{
		{StateStarting, parent.StateStarting}, {StateRunning, parent.StateRunning},
		{StateTerminating, parent.StateTerminating}, {StateExited, parent.StateExited},
	} {
		b, err := json.Marshal(monitorStatus{State: tc.s})
		if err != nil {
			t.Fatal(err)
		}
		if want := `{"state":"` + tc.name + `","enclave_pid":0}`; string(b) != want {
			t.Errorf("%v: JSON %s, want %s", tc.s, b, want)
		}
		var back monitorStatus
		if err := json.Unmarshal(b, &back); err != nil || back.State != tc.s {
			t.Errorf("%s: decoded %v, %v", b, back.State, err)
		}
	}
	var st monitorStatus
	if err := json.Unmarshal([]byte(`{"state":"SLEEPING"}`), &st); err == nil {
		t.Errorf("unknown state decoded as %v", st.State)
	}
	if _, err := json.Marshal(monitorStatus{}); err == nil {
		t.Error("the zero State was encoded")
	}
}

// TestPCRSetJSON: monitor.json keeps version 0's hex layout for PCRs.
func TestPCRSetJSON(t *testing.T) {
	p := pcrSet{0: {0xaa, 0x01}, 8: {0xff}}
	b, err := json.Marshal(monitorSpec{PCRs: p})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"pcrs":{"0":"aa01","8":"ff"}`) {
		t.Errorf("JSON %s does not hold the PCRs in hex", b)
	}
	var ms monitorSpec
	if err := json.Unmarshal(b, &ms); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(p, ms.PCRs); diff != "" {
		t.Errorf("PCRs (-want +got):\n%s", diff)
	}
	if err := json.Unmarshal([]byte(`{"pcrs":{"0":"zz"}}`), &ms); err == nil {
		t.Error("non-hex PCR decoded")
	}
}

// TestRecordConversions: every copy of a launch says the same thing — the
// cleanup Spec keeps Debug, the CID keeps its value across widths, and
// host-listener paths are reported only by backends that have them.
func TestRecordConversions(t *testing.T) {
	req := parent.RunRequest{EIFPath: "/x.eif", MemoryMiB: 256, CPUCount: 2, DebugMode: true}
	img := imageInfo{size: 10, pcrs: pcrSet{0: {1}, 1: {2}, 2: {3}}}
	img.measurements = measurementsOf(img.pcrs)
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.FixedZone("x", 3600))
	rec := newRecord(req, "i-1-enc2", "2", "app", 0xFFFFFFFE, []int{3, 5}, "/x.eif", img, backend.KindQEMU, now)
	dir := backend.Dir("/s/enclaves/2")

	want := backend.Spec{ID: "i-1-enc2", Name: "app", CID: 0xFFFFFFFE, CPUs: []int{3, 5}, MemoryMiB: 256, Debug: true, EIFPath: "/x.eif", Dir: dir}
	if diff := cmp.Diff(want, rec.spec(dir, nil)); diff != "" {
		t.Errorf("cleanup spec (-want +got):\n%s", diff)
	}
	if r := rec.runResult(); r.EnclaveCID != 0xFFFFFFFE || r.NumberOfCPUs != 2 || r.MemoryMiB != 256 {
		t.Errorf("run result %+v", r)
	}
	if rec.Measurements.PCR0 != "01" || rec.Backend != "qemu" || !rec.StartTime.Equal(now) || rec.StartTime.Location() != time.UTC {
		t.Errorf("record %+v", rec)
	}
	for _, tc := range []struct {
		caps     backend.Capabilities
		st       State
		wantBase string
		wantSock string
	}{
		{backend.Capabilities{HostSockets: true}, StateRunning, dir.HostListenerBase(), dir.VsockSock()},
		{backend.Capabilities{}, StateRunning, "", dir.VsockSock()},
		{backend.Capabilities{HostSockets: true}, StateExited, "", ""},
	} {
		d := rec.describe(dir, tc.st, nil, tc.caps)
		if d.HostListenerBase != tc.wantBase || d.VsockSocket != tc.wantSock || d.ConsoleLog != dir.Console() ||
			d.State != tc.st.String() || d.EnclaveCID != 0xFFFFFFFE || d.Flags != parent.FlagsDebug {
			t.Errorf("%+v %v: describe = %+v", tc.caps, tc.st, d)
		}
	}
}
