package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/cloister/cloister/internal/testenv"
	"github.com/cloister/cloister/parent"
	"github.com/cloister/cloister/parent/parenttest"
)

// upgradeFrom is the last commit whose daemon wrote record.json,
// monitor.json and exit.json without format_version (layout 0).
// CLOISTER_UPGRADE_FROM names another commit to upgrade from.
const upgradeFrom = "8820ffbc693ac0853bfb156d8462259e12db5396"

// TestUpgradeAdoptsEnclaves starts an enclave with the daemon built from
// upgradeFrom, stops that daemon, starts this one on the same state
// directory and checks that it adopts the enclave: listed RUNNING,
// reachable, and terminated cleanly through the old daemon's monitor.
func TestUpgradeAdoptsEnclaves(t *testing.T) {
	testenv.RequireRoot(t)
	from := upgradeFrom
	if c := os.Getenv("CLOISTER_UPGRADE_FROM"); c != "" {
		from = c
	}
	old := parenttest.BuildCloisterAt(t, from)
	d := parenttest.StartDaemonFrom(t, old, "sandbox", sandboxConfig)
	dir := parenttest.ShortTemp(t)
	img := appImage(t, dir, "echo", nil, "echo")
	res := d.Run(img, 128, false)
	d.ConsoleUntil(res.EnclaveID, "ECHO READY", time.Minute)
	rec, err := os.ReadFile(filepath.Join(d.EnclaveDir(res.EnclaveID), "record.json"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(rec, []byte("format_version")) && from == upgradeFrom {
		t.Fatalf("the daemon of %s wrote format_version: it is not the version-0 daemon this test upgrades from:\n%s", from, rec)
	}

	d.Stop(syscall.SIGTERM)
	d.UseBinary(parenttest.Cloister(t))
	d.Start()

	desc, err := d.Client.DescribeEnclave(context.Background(), res.EnclaveID)
	if err != nil || desc.State != parent.StateRunning {
		t.Fatalf("after the upgrade: %+v, %v\ndaemon log:\n%s", desc, err, d.Log())
	}
	if desc.EnclaveCID != res.EnclaveCID || desc.MemoryMiB != 128 {
		t.Errorf("after the upgrade: CID %d, %d MiB; launched with CID %d, 128 MiB", desc.EnclaveCID, desc.MemoryMiB, res.EnclaveCID)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := d.Client.Connect(ctx, res.EnclaveID, 5000)
	if err != nil {
		t.Fatalf("after the upgrade: connect: %v", err)
	}
	const msg = "hello across the upgrade"
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	got, err := io.ReadAll(c)
	c.Close()
	if err != nil || string(got) != msg {
		t.Fatalf("after the upgrade: echo %q, %v", got, err)
	}

	if _, err := d.Client.Terminate(ctx, res.EnclaveID); err != nil {
		t.Fatalf("after the upgrade: terminate: %v", err)
	}
	x := d.WaitExit(res.EnclaveID, time.Minute)
	if x.ExitStatus == nil || x.ExitStatus.Reason != "terminated" {
		t.Errorf("after the upgrade: exit status %+v, want reason \"terminated\"", x.ExitStatus)
	}
	// The old daemon's monitor of the enclave has exited (the harness
	// checks the rest when the daemon stops).
	var r struct {
		MonitorPID int `json:"monitor_pid"`
	}
	if err := json.Unmarshal(rec, &r); err != nil || r.MonitorPID <= 0 {
		t.Fatalf("record.json of the old daemon: monitor_pid %d, %v", r.MonitorPID, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for slices.Contains(d.Monitors(), r.MonitorPID) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if slices.Contains(d.Monitors(), r.MonitorPID) {
		t.Errorf("the old daemon's monitor (pid %d) still runs after terminate", r.MonitorPID)
	}
}
