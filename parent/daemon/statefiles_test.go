package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/parent"
	"github.com/cloister/cloister/parent/backend"
)

// Version-0 files exactly as the daemon wrote them before format_version
// existed (commit 8820ffb).
const (
	recordV0 = `{
  "id": "i-0000000000000000-enc0123456789abcdef",
  "slot": "0123456789abcdef",
  "name": "app",
  "cid": 16,
  "cpus": [1],
  "memory_mib": 128,
  "debug": true,
  "eif_path": "/tmp/app.eif",
  "eif_size": 4096,
  "measurements": {"HashAlgorithm": "Sha384 { ... }", "PCR0": "aa", "PCR1": "bb", "PCR2": "cc"},
  "backend": "sandbox",
  "start_time": "2025-01-02T03:04:05Z",
  "monitor_pid": 42,
  "enclave_pid": 43
}
`
	exitV0 = `{
  "state": "EXITED",
  "enclave_pid": 43,
  "booted": true,
  "exit": {"Code": 3, "Reason": "exited with status 3", "Time": "2025-01-02T03:04:06Z"}
}
`
)

func TestStateFilesReadVersions(t *testing.T) {
	wantRec := record{
		ID: "i-0000000000000000-enc0123456789abcdef", Slot: "0123456789abcdef", Name: "app", CID: 16,
		CPUs: []int{1}, MemoryMiB: 128, Debug: true, EIFPath: "/tmp/app.eif", EIFSize: 4096,
		Measurements: parent.Measurements{HashAlgorithm: parent.HashAlgorithm, PCR0: "aa", PCR1: "bb", PCR2: "cc"},
		Backend:      "sandbox", StartTime: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC), MonitorPID: 42, EnclavePID: 43,
	}
	wantExit := monitorStatus{State: StateExited, EnclavePID: 43, Booted: true,
		Exit: &parent.ExitStatus{Code: 3, Reason: "exited with status 3", Time: time.Date(2025, 1, 2, 3, 4, 6, 0, time.UTC)}}

	// Version 0 (no field) is read as is.
	dir := backend.Dir(t.TempDir())
	if err := os.WriteFile(dir.Record(), []byte(recordV0), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir.Exit(), []byte(exitV0), 0o600); err != nil {
		t.Fatal(err)
	}
	rec, err := readRecord(dir)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(wantRec, rec); diff != "" {
		t.Errorf("record v0 (-want +got):\n%s", diff)
	}
	x, err := readExit(dir)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(wantExit, x); diff != "" {
		t.Errorf("exit v0 (-want +got):\n%s", diff)
	}

	// What this daemon writes is its version and reads back the same.
	if err := writeRecord(dir, rec); err != nil {
		t.Fatal(err)
	}
	if err := writeExit(dir, x); err != nil {
		t.Fatal(err)
	}
	if err := writeMonitorSpec(dir, monitorSpec{HeartbeatTimeout: time.Minute}); err != nil {
		t.Fatal(err)
	}
	rec1, err := readRecord(dir)
	if err != nil {
		t.Fatal(err)
	}
	x1, err := readExit(dir)
	if err != nil {
		t.Fatal(err)
	}
	ms1, err := readMonitorSpec(dir)
	if err != nil {
		t.Fatal(err)
	}
	wantRec.FormatVersion, wantExit.FormatVersion = formatVersion, formatVersion
	if diff := cmp.Diff(wantRec, rec1); diff != "" {
		t.Errorf("record v%d (-want +got):\n%s", formatVersion, diff)
	}
	if diff := cmp.Diff(wantExit, x1); diff != "" {
		t.Errorf("exit v%d (-want +got):\n%s", formatVersion, diff)
	}
	if ms1.FormatVersion != formatVersion || ms1.HeartbeatTimeout != time.Minute {
		t.Errorf("monitor spec v%d = %+v", formatVersion, ms1)
	}

	// Version 1 (the field, no egress) is read as it is.
	if err := os.WriteFile(dir.Record(), []byte(strings.Replace(recordV0, "{", `{"format_version": 1,`, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	recV1, err := readRecord(dir)
	if err != nil {
		t.Fatal(err)
	}
	wantRec.FormatVersion = 1
	if diff := cmp.Diff(wantRec, recV1); diff != "" {
		t.Errorf("record v1 (-want +got):\n%s", diff)
	}
}

// TestStateFilesEgress: the enclave's own egress allowlist survives
// record.json and monitor.json, and an empty one (which allows nothing)
// stays distinct from none (the daemon's allowlist alone).
func TestStateFilesEgress(t *testing.T) {
	for _, tc := range []struct {
		name string
		own  *parent.EgressPolicy
	}{
		{"none", nil},
		{"empty", &parent.EgressPolicy{Allowlist: []parent.EgressEntry{}}},
		{"two", &parent.EgressPolicy{Allowlist: []parent.EgressEntry{{Address: "kms.us-east-1.amazonaws.com", Port: 443}, {Address: "10.0.0.0/8", Port: 5432}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := backend.Dir(t.TempDir())
			rec := record{ID: "x", Egress: tc.own}
			if err := writeRecord(dir, rec); err != nil {
				t.Fatal(err)
			}
			iss := issuerRef{IssuerFile: "/state/devroot/issuer.pem", IssuerSHA256: []byte{0xde, 0xad, 0xbe, 0xef}}
			if err := writeMonitorSpec(dir, rec.newMonitorSpec(backend.Spec{}, Config{}, time.Minute, nil, iss)); err != nil {
				t.Fatal(err)
			}
			got, err := readRecord(dir)
			if err != nil {
				t.Fatal(err)
			}
			ms, err := readMonitorSpec(dir)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.own, got.Egress); diff != "" {
				t.Errorf("record.json egress (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(iss, ms.issuerRef, cmp.AllowUnexported(issuerRef{})); diff != "" {
				t.Errorf("monitor.json issuer (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.own, ms.Egress); diff != "" {
				t.Errorf("monitor.json egress (-want +got):\n%s", diff)
			}
		})
	}
}

func TestStateFilesRefuseNewerAndMalformed(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		newer      bool
	}{
		{"newer", fmt.Sprintf(`{"format_version": %d, "id": "x"}`, formatVersion+1), true},
		{"negative", `{"format_version": -1}`, true},
		{"not json", `{"id": `, false},
		{"wrong type", `{"format_version": "1"}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := backend.Dir(t.TempDir())
			if err := os.WriteFile(dir.Record(), []byte(tc.body), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := readRecord(dir)
			if err == nil {
				t.Fatal("readRecord accepted it")
			}
			if got := errors.Is(err, errStateVersion); got != tc.newer {
				t.Errorf("errors.Is(%v, errStateVersion) = %v, want %v", err, got, tc.newer)
			}
		})
	}
}

// TestRecoverRefusesNewerState: a daemon does not start on a state
// directory holding a record of a newer daemon, and leaves it in place.
func TestRecoverRefusesNewerState(t *testing.T) {
	state := shortTempDir(t)
	dir := filepath.Join(state, "enclaves", "0123456789abcdef")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(backend.Dir(dir).Record(), []byte(`{"format_version": 99}`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := Config{StateDir: state, Socket: filepath.Join(state, "api.sock"), CPUPool: "0", MemoryMiB: 1024}
	d, err := New(context.Background(), cfg, Options{Backend: fakeBackend{}, MonitorCommand: monitorCommand,
		Logger: slog.New(slog.DiscardHandler)})
	if err == nil {
		d.Close()
	}
	if !errors.Is(err, errStateVersion) {
		t.Fatalf("New = %v, want errStateVersion", err)
	}
	if _, err := os.Stat(backend.Dir(dir).Record()); err != nil {
		t.Errorf("the newer record was touched: %v", err)
	}
}

func FuzzDecodeState(f *testing.F) {
	f.Add([]byte(recordV0))
	f.Add([]byte(exitV0))
	f.Add([]byte(`{"format_version": 1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var rec record
		if err := decodeState("record.json", b, &rec); err == nil && (rec.FormatVersion < 0 || rec.FormatVersion > formatVersion) {
			t.Fatalf("accepted format_version %d", rec.FormatVersion)
		}
	})
}
