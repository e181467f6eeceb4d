package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloister/cloister/internal/testenv"
	"github.com/cloister/cloister/parent/backend"
	"github.com/cloister/cloister/parent/parenttest"
)

const qemuConfig = `---
memory_mib: 2048
heartbeat_timeout: 180s
`

// vmFlags returns the build-enclave flags for a microVM image: the test
// kernel and its vsock modules.
func vmFlags(t testing.TB) []string {
	t.Helper()
	testenv.LookPath(t, "qemu-system-x86_64", "apt-get install qemu-system-x86")
	k := os.Getenv("CLOISTER_TEST_KERNEL")
	testenv.Require(t, k != "", "CLOISTER_TEST_KERNEL (a Linux kernel image)", "run scripts/test.sh, which installs linux-image-cloud-amd64 and sets it")
	testenv.RequireFile(t, k, "apt-get install linux-image-cloud-amd64")
	m := os.Getenv("CLOISTER_TEST_MODULES")
	testenv.Require(t, m != "", "CLOISTER_TEST_MODULES (the kernel's /lib/modules/<version>)", "run scripts/test.sh")
	return []string{"--kernel", k, "--kernel-modules-dir", m}
}

func startQEMU(t testing.TB) (*parenttest.Daemon, string) {
	t.Helper()
	flags := vmFlags(t)
	d := parenttest.StartDaemon(t, "qemu", qemuConfig)
	return d, strings.Join(flags, "\x00")
}

func splitFlags(s string) []string { return strings.Split(s, "\x00") }

func TestMicroVMEchoOverRealVsock(t *testing.T) {
	d, flags := startQEMU(t)
	dir := parenttest.ShortTemp(t)
	img := appImage(t, dir, "echo", splitFlags(flags), "echo")
	res := d.Run(img, 256, false)
	out := d.ConsoleUntil(res.EnclaveID, "ECHO READY", 2*time.Minute)
	if !strings.Contains(out, "cloister-init: starting (world=vm)") || !strings.Contains(out, "heartbeat sent") {
		t.Errorf("console lacks init's boot lines:\n%s", out)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// Many concurrent connections, each echoing its own bytes.
	const conns = 16
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for i := 0; i < conns; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c, err := d.Client.Connect(ctx, res.EnclaveID, 5000)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			msg := fmt.Sprintf("connection %d says hello", i)
			if _, err := io.WriteString(c, msg); err != nil {
				errs <- err
				return
			}
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
				errs <- fmt.Errorf("connection %d: %q %v", i, got, err)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	// A multi-megabyte transfer in both directions at once.
	c, err := d.Client.Connect(ctx, res.EnclaveID, 5000)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	payload := make([]byte, 6<<20)
	rand.New(rand.NewSource(1)).Read(payload)
	want := sha256.Sum256(payload)
	done := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		done <- err
	}()
	h := sha256.New()
	if _, err := io.CopyN(h, c, int64(len(payload))); err != nil {
		t.Fatalf("reading the echo: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := h.Sum(nil); hex.EncodeToString(got) != hex.EncodeToString(want[:]) {
		t.Fatal("6 MiB echoed through the microVM came back different")
	}
}

func TestMicroVMAttestationMatchesDescribeEIF(t *testing.T) {
	d, flags := startQEMU(t)
	dir := parenttest.ShortTemp(t)
	img := appImage(t, dir, "attest", splitFlags(flags), "attest")
	res := d.Run(img, 256, false)
	d.ConsoleUntil(res.EnclaveID, "ATTEST READY", 2*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	doc := attestationFrom(ctx, t, d, res.EnclaveID)
	v := verifyDevRoot(ctx, t, d, doc, "the document from the microVM")
	desc := describeEIF(t, img)
	if got := hex.EncodeToString(v.Document().PCRs[0]); got != desc.PCR0 {
		t.Errorf("attested PCR0 %s, describe-eif %s", got, desc.PCR0)
	}
}

func TestMicroVMTerminateCleansUp(t *testing.T) {
	d, flags := startQEMU(t)
	dir := parenttest.ShortTemp(t)
	img := appImage(t, dir, "sleeper", splitFlags(flags), "sleep")
	res := d.Run(img, 256, false)
	desc, err := d.Client.DescribeEnclave(context.Background(), res.EnclaveID)
	if err != nil {
		t.Fatal(err)
	}
	vmDir := backend.Dir(filepath.Dir(desc.VsockSocket)).VM()
	if _, err := os.Stat(vmDir); err != nil {
		t.Fatalf("no VM directory while running: %v", err)
	}
	if !processExists(res.ProcessID) {
		t.Fatalf("QEMU (pid %d) is not running", res.ProcessID)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", res.ProcessID))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(l, "Uid:") && strings.Fields(l)[1] == "0" {
			t.Errorf("QEMU runs as root: %s", l)
		}
	}
	if _, err := d.Client.Terminate(context.Background(), res.EnclaveID); err != nil {
		t.Fatal(err)
	}
	if processExists(res.ProcessID) {
		t.Errorf("QEMU (pid %d) still runs after terminate", res.ProcessID)
	}
	if _, err := os.Stat(vmDir); !os.IsNotExist(err) {
		t.Errorf("VM directory (kernel, initrd, sockets) left behind: %v", err)
	}
	if _, err := os.Stat(desc.VsockSocket); !os.IsNotExist(err) {
		t.Errorf("vsock socket left behind: %v", err)
	}
	if ents, err := os.ReadDir("/sys/fs/cgroup/memory/cloister"); err == nil {
		for _, e := range ents {
			if e.IsDir() && e.Name() == res.EnclaveID {
				t.Errorf("cgroup %s left behind", e.Name())
			}
		}
	}
}

func TestMicroVMKernelPanicReported(t *testing.T) {
	d, flags := startQEMU(t)
	dir := parenttest.ShortTemp(t)
	img := appImage(t, dir, "panic", splitFlags(flags), "panic")
	res := d.Run(img, 256, false)
	x := d.WaitExit(res.EnclaveID, 2*time.Minute)
	if x.ExitStatus == nil || x.ExitStatus.Reason != "kernel panic" {
		t.Fatalf("exit after a kernel panic: %+v", x.ExitStatus)
	}
	out := d.ConsoleUntil(res.EnclaveID, "Kernel panic", time.Second)
	if !strings.Contains(out, "PANICKING THE KERNEL") {
		t.Errorf("console lost the application's last words:\n%s", out)
	}
}

func TestMicroVMRefusesImageWithoutKernel(t *testing.T) {
	d, _ := startQEMU(t)
	dir := parenttest.ShortTemp(t)
	img := appImage(t, dir, "nokernel", nil, "echo")
	_, err := d.Client.Run(context.Background(), runReq(img))
	if err == nil || !strings.Contains(err.Error(), "without a kernel") {
		t.Fatalf("run of a kernel-less image on qemu: %v", err)
	}
}

func processExists(pid int) bool {
	if pid <= 0 {
		return false
	}
	b, err := exec.Command("ps", "-p", fmt.Sprint(pid), "-o", "stat=").Output()
	return err == nil && len(b) > 0 && !strings.HasPrefix(strings.TrimSpace(string(b)), "Z")
}
