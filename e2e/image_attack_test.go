package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cloister/cloister/parent"
	"github.com/cloister/cloister/parent/parenttest"
)

// Attacks on "the attested image is the booted image" (SECURITY.md): an
// image file that changes between the daemon's measurement and the boot
// must not boot under the first image's measurements.

// twinImages builds two images of exactly the same size that differ in one
// marker argument, and returns their bytes and measurements.
func twinImages(t *testing.T, dir string) (a, b []byte, ma, mb eifMeasurements) {
	t.Helper()
	read := func(marker string) ([]byte, eifMeasurements) {
		sub := filepath.Join(dir, marker)
		if err := os.MkdirAll(sub, 0o755); err != nil {
			t.Fatal(err)
		}
		p := appImage(t, sub, "twin", nil, "attest", marker)
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return data, describeEIF(t, p)
	}
	a, ma = read("marker-A")
	b, mb = read("marker-B")
	if len(a) != len(b) {
		t.Fatalf("the twin images differ in size (%d and %d bytes): the attack needs equal sizes", len(a), len(b))
	}
	if ma.PCR0 == mb.PCR0 {
		t.Fatal("the twin images have the same PCR0")
	}
	return a, b, ma, mb
}

// bootedMarker waits for the attest app's report and returns the marker it
// booted with and the PCR0 its security module attests.
func bootedMarker(t *testing.T, d *parenttest.Daemon, id string) (marker, pcr0 string) {
	t.Helper()
	out := d.ConsoleUntil(id, "ATTEST READY", time.Minute)
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, "PCR0 "); ok {
			pcr0 = strings.TrimSpace(v)
		}
		if v, ok := strings.CutPrefix(line, "ARGS ["); ok {
			marker = strings.TrimSuffix(strings.TrimSpace(v), "]")
		}
	}
	return marker, pcr0
}

// TestSandboxImageRewrittenInPlaceIsMeasuredAnew is the review's attack: an
// image is launched once (the daemon measured it), then rewritten in place
// with other code of the same size and its modification time restored. The
// relaunch must report, attest and boot the new bytes' measurements.
func TestSandboxImageRewrittenInPlaceIsMeasuredAnew(t *testing.T) {
	d := parenttest.StartDaemon(t, "sandbox", sandboxConfig)
	dir := parenttest.ShortTemp(t)
	a, b, ma, mb := twinImages(t, dir)
	target := filepath.Join(dir, "target.eif")
	if err := os.WriteFile(target, a, 0o644); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(target)
	if err != nil {
		t.Fatal(err)
	}

	res := d.Run(target, 128, false)
	if marker, pcr0 := bootedMarker(t, d, res.EnclaveID); marker != "marker-A" || pcr0 != ma.PCR0 {
		t.Fatalf("first launch booted %q attesting PCR0 %s, want marker-A with %s", marker, pcr0, ma.PCR0)
	}
	if _, err := d.Client.Terminate(context.Background(), res.EnclaveID); err != nil {
		t.Fatal(err)
	}

	// Same inode, same size, same mtime: only the bytes differ.
	f, err := os.OpenFile(target, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(b, 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.Chtimes(target, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}

	res = d.Run(target, 128, false)
	marker, pcr0 := bootedMarker(t, d, res.EnclaveID)
	if marker != "marker-B" {
		t.Fatalf("the relaunch booted %q, want marker-B (the file's current content)", marker)
	}
	if pcr0 != mb.PCR0 {
		t.Errorf("the enclave booted image B but its security module attests PCR0 %s (image A is %s, B is %s)", pcr0, ma.PCR0, mb.PCR0)
	}
	desc, err := d.Client.DescribeEnclave(context.Background(), res.EnclaveID)
	if err != nil {
		t.Fatal(err)
	}
	if desc.Measurements.PCR0 != mb.PCR0 {
		t.Errorf("describe-enclaves reports PCR0 %s for an enclave running image B (%s)", desc.Measurements.PCR0, mb.PCR0)
	}
}

// TestSandboxImageSwappedDuringLaunchBootsWhatWasMeasured swaps the image
// file between two contents by rename, continuously, while enclaves are
// launched from it: whatever each enclave booted, its attested and
// described PCR0 must be that of the bytes it booted.
func TestSandboxImageSwappedDuringLaunchBootsWhatWasMeasured(t *testing.T) {
	d := parenttest.StartDaemon(t, "sandbox", sandboxConfig)
	dir := parenttest.ShortTemp(t)
	a, b, ma, mb := twinImages(t, dir)
	want := map[string]string{"marker-A": ma.PCR0, "marker-B": mb.PCR0}
	target := filepath.Join(dir, "target.eif")
	if err := os.WriteFile(target, a, 0o644); err != nil {
		t.Fatal(err)
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var swaps atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		contents := [][]byte{b, a}
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			tmp := filepath.Join(dir, fmt.Sprintf("swap-%d.eif", i%2))
			if err := os.WriteFile(tmp, contents[i%2], 0o644); err != nil {
				return
			}
			if err := os.Rename(tmp, target); err != nil {
				return
			}
			swaps.Add(1)
		}
	}()
	defer func() { close(stop); wg.Wait() }()

	const launches = 6
	for i := range launches {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		res, err := d.Client.Run(ctx, parent.RunRequest{EIFPath: target, MemoryMiB: 128, CPUCount: 1})
		cancel()
		if err != nil {
			// A launch may read a half-written file: that is refused, never booted.
			t.Logf("launch %d refused: %v", i, err)
			continue
		}
		marker, pcr0 := bootedMarker(t, d, res.EnclaveID)
		desc, err := d.Client.DescribeEnclave(context.Background(), res.EnclaveID)
		if err != nil {
			t.Fatal(err)
		}
		if pcr0 != want[marker] || desc.Measurements.PCR0 != want[marker] {
			t.Errorf("launch %d booted %s (PCR0 %s) but attests %s and describes %s", i, marker, want[marker], pcr0, desc.Measurements.PCR0)
		}
		if _, err := d.Client.Terminate(context.Background(), res.EnclaveID); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d swaps during %d launches", swaps.Load(), launches)
}

// TestRunEnclaveOpensTheImageAsTheCaller: a user allowed on the daemon's
// socket must not be able to read (or probe) files through the root
// daemon. The request names a root-only file; the daemon must refuse it as
// the caller would be refused, and echo nothing of its content.
func TestRunEnclaveOpensTheImageAsTheCaller(t *testing.T) {
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Fatalf("no user nobody on this host: %v", err)
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	gid, _ := strconv.Atoi(nobody.Gid)
	grp, err := user.LookupGroupId(nobody.Gid)
	if err != nil {
		t.Fatal(err)
	}
	d := parenttest.StartDaemon(t, "sandbox", sandboxConfig+"group: "+grp.Name+"\n")
	// The socket's directory must be reachable by the unprivileged user.
	if err := os.Chmod(filepath.Dir(d.Socket), 0o755); err != nil {
		t.Fatal(err)
	}

	dir := parenttest.ShortTemp(t)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// A root-only "secret" that starts with recognisable bytes, and a
	// root-only directory whose entries the caller must not be able to probe.
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, []byte("TOP-SECRET root-only content"), 0o600); err != nil {
		t.Fatal(err)
	}
	private := filepath.Join(dir, "private")
	if err := os.Mkdir(private, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(private, "exists"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// An image the caller may read launches as before.
	img := appImage(t, dir, "readable", nil, "sleep")
	if err := os.Chmod(filepath.Dir(img), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(img, 0o644); err != nil {
		t.Fatal(err)
	}

	// The built CLI sits in a root-only directory: nobody runs a copy.
	cli := filepath.Join(dir, "cloister")
	bin, err := os.ReadFile(parenttest.Cloister(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cli, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	runAs := func(path string) (string, error) {
		cmd := exec.Command(cli, "run-enclave", "--socket", d.Socket,
			"--eif-path", path, "--memory", "128", "--cpu-count", "1")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		return out.String(), err
	}

	out, err := runAs(secret)
	if err == nil {
		t.Fatalf("run-enclave as nobody on a root-only file succeeded:\n%s", out)
	}
	if strings.Contains(out, "TOP") || strings.Contains(out, fmt.Sprintf("%x", "TOP-")) {
		t.Errorf("the error reveals the root-only file's content:\n%s", out)
	}
	if !strings.Contains(out, "permission denied") {
		t.Errorf("the error does not say the caller may not read the file:\n%s", out)
	}
	existing, _ := runAs(filepath.Join(private, "exists"))
	missing, _ := runAs(filepath.Join(private, "missing"))
	if strings.Contains(existing, "no such file") || strings.Contains(missing, "no such file") ||
		strings.ReplaceAll(existing, "exists", "X") != strings.ReplaceAll(missing, "missing", "X") {
		t.Errorf("the caller can tell which files exist in a directory it cannot search:\n%s\n%s", existing, missing)
	}

	out, err = runAs(img)
	if err != nil {
		t.Fatalf("run-enclave as nobody on a readable image: %v\n%s", err, out)
	}
}
