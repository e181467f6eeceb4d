package e2e

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cloister/cloister/internal/kmod"
	"github.com/cloister/cloister/internal/testenv"
	"github.com/cloister/cloister/parent/parenttest"
	"github.com/cloister/cloister/parent/qemu"
)

var updateNSMProbe = flag.Bool("update-nsmprobe", false,
	"TestNitroEnclaveCrossCheck rewrites "+realDriverReference+" from the real driver's answers")

// probePort is the vsock port nsmprobe serves its report on in an enclave.
const probePort = 5005

// probeSkipOnQEMU are the cases not run on QEMU's nitro-enclave machine:
// its virtio-nsm device treats an empty request as a fatal device error
// (virtio_error: the device is marked broken and never answers again), so
// the driver's ioctl would time out after two minutes and every later case
// with it. Real Nitro hardware's answer to an empty request is not known here.
const probeSkipOnQEMU = "request_len_0,request_len_0_addr_null"

// nitroPrereqs returns the QEMU with the nitro-enclave machine and the
// kernel (with nsm.ko) whose modules tree the image takes its modules from.
func nitroPrereqs(t *testing.T) (bin, kernel, modules string) {
	t.Helper()
	testenv.RequireRoot(t)
	bin = os.Getenv("CLOISTER_TEST_QEMU_NITRO")
	if bin == "" {
		bin = qemu.FindNitroBinary(os.DirFS("/"))
	}
	testenv.Require(t, bin != "", "a QEMU with the nitro-enclave machine (CLOISTER_TEST_QEMU_NITRO or "+qemu.NitroCacheDir+")",
		"run scripts/build-qemu-nitro.sh (scripts/test.sh runs it)")
	testenv.RequireFile(t, bin, "scripts/build-qemu-nitro.sh")
	kernel, modules = os.Getenv("CLOISTER_TEST_NITRO_KERNEL"), os.Getenv("CLOISTER_TEST_NITRO_MODULES")
	testenv.Require(t, kernel != "" && modules != "",
		"CLOISTER_TEST_NITRO_KERNEL and CLOISTER_TEST_NITRO_MODULES (a kernel with nsm.ko: Debian's 6.12 cloud kernel)",
		"run scripts/test.sh, which installs linux-image-cloud-amd64 from bookworm-backports and sets them")
	testenv.RequireFile(t, kernel, "scripts/build-qemu-nitro.sh")
	return bin, kernel, modules
}

// TestNitroEnclaveCrossCheck boots an EIF made by build-enclave on QEMU's
// own Nitro model (the nitro-enclave machine, which loads and measures the
// EIF itself) through the daemon (qemu.machine: nitro-enclave), with the
// Go vhost-user-vsock device on its vsock side: the launch succeeds only
// when init's heartbeat reaches the parent. In the guest, nsmprobe talks to
// the real Linux nsm driver over QEMU's virtio-nsm device: PCR0/1/2 must be
// describe-eif's, and its edge cases must match the committed reference
// (realDriverReference), which -update-nsmprobe rewrites from this run.
func TestNitroEnclaveCrossCheck(t *testing.T) {
	bin, kernel, modules := nitroPrereqs(t)
	nsmKO, err := kmod.Resolve(modules, "nsm")
	if err != nil || len(nsmKO) != 1 {
		t.Fatalf("nsm module in %s: %v %v", modules, nsmKO, err)
	}
	dir := parenttest.ShortTemp(t)
	probe := parenttest.BuildProgram(t, dir, "nsmprobe", "./e2e/testdata/nsmprobe")
	img := parenttest.BuildImage(t, dir, parenttest.Image{
		Name:  "nsmprobe",
		Files: map[string]string{"bin/nsmprobe": probe},
		Cmd:   []string{"/bin/nsmprobe", "-skip", probeSkipOnQEMU, "-listen-vsock", fmt.Sprint(probePort)},
		Extra: []string{"--kernel", kernel, "--kernel-modules-dir", modules, "--kernel-module", nsmKO[0]},
	})
	d := parenttest.StartDaemon(t, "qemu", fmt.Sprintf(`---
memory_mib: 2048
heartbeat_timeout: 300s
qemu:
  machine: nitro-enclave
  binary: %s
  accel: tcg
`, bin))
	start := time.Now()
	res := d.Run(img, 512, false)
	t.Logf("nitro-enclave (TCG): run-enclave returned after the heartbeat in %s", time.Since(start).Round(time.Millisecond))
	console := d.ConsoleUntil(res.EnclaveID, "NSMPROBE READY", 5*time.Minute)
	t.Logf("nitro-enclave (TCG): probe done %s after run-enclave began", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(console, "loaded kernel module nsm.ko") || !strings.Contains(console, "heartbeat sent") {
		t.Errorf("console lacks init's nsm.ko and heartbeat lines:\n%s", console)
	}

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
	got, err := parseProbe(out)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if got.Error != "" {
		t.Fatalf("nsmprobe: %s\nconsole:\n%s", got.Error, console)
	}

	// QEMU measured the image itself; it must agree with describe-eif.
	desc := describeEIF(t, img)
	want := []string{desc.PCR0, desc.PCR1, desc.PCR2}
	for i, p := range got.PCRs {
		if p.Data != want[i] || !p.Lock {
			t.Errorf("PCR%d through /dev/nsm: %s (lock %v), describe-eif %s", p.Index, p.Data, p.Lock, want[i])
		}
	}
	if got.DescribeNSM == nil || got.DescribeNSM.Digest != "SHA384" || got.DescribeNSM.MaxPCRs != 32 ||
		got.DescribeNSM.ModuleID != res.EnclaveID {
		t.Errorf("DescribeNSM %+v, want SHA384, 32 PCRs, module %s", got.DescribeNSM, res.EnclaveID)
	}
	checkDriverABI(t, got)

	if *updateNSMProbe {
		if err := os.WriteFile(realDriverReference, out, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s", realDriverReference)
		return
	}
	if d := diffWithRealDriver(t, out); d != "" {
		t.Errorf("the real driver no longer answers as %s records (-reference +now); rerun with -update-nsmprobe if QEMU or the kernel changed on purpose:\n%s", realDriverReference, d)
	}
}

// checkDriverABI states what drivers/misc/nsm.c does for the main edge
// cases, as read from its source, against what the driver did: a wrong
// reading of the source fails here, not in the emulation.
func checkDriverABI(t *testing.T, r probeReport) {
	t.Helper()
	byName := map[string]probeCase{}
	for _, c := range r.Cases {
		byName[c.Name] = c
	}
	u := func(v uint64) *uint64 { return &v }
	for _, w := range []struct {
		name  string
		errno string
		len   *uint64 // response.len read back, when checked
	}{
		{"ok_describe_pcr0", "", nil},
		{"cmd_other_nr", "EINVAL", nil},   // cmd != NSM_IOCTL_RAW
		{"cmd_other_size", "EINVAL", nil}, // likewise
		{"cmd_other_type", "EINVAL", nil}, // likewise
		{"cmd_tcgets", "EINVAL", nil},     // the driver answers every other cmd itself
		{"cmd_high_bits", "", nil},        // cmd is an unsigned int: bits 32..63 are dropped
		{"arg_null", "EFAULT", nil},       // copy_from_user of struct nsm_raw
		{"arg_unmapped", "EFAULT", nil},   // likewise
		{"arg_readonly", "EFAULT", nil},   // copy_to_user of struct nsm_raw after the request ran
		{"request_len_4096", "", nil},     // NSM_REQUEST_MAX_SIZE is allowed
		{"request_len_4097", "EMSGSIZE", nil},
		{"request_len_4097_addr_unmapped", "EMSGSIZE", nil}, // the size is checked before the copy
		{"request_addr_unmapped", "EFAULT", nil},
		{"response_addr_unmapped", "EFAULT", nil},
		{"response_len_0", "", u(0)},   // response.len = min(response.len, answer's length)
		{"response_len_10", "", u(10)}, // truncated to the caller's buffer, not set to the full size
		{"response_len_0_addr_null", "", u(0)},
	} {
		c, ok := byName[w.name]
		if !ok {
			t.Errorf("%s: not in the probe's output", w.name)
			continue
		}
		if c.ErrnoName != w.errno {
			t.Errorf("%s: real driver errno %q, expected %q from drivers/misc/nsm.c", w.name, c.ErrnoName, w.errno)
		}
		if w.len != nil && (c.ResponseLen == nil || *c.ResponseLen != *w.len) {
			t.Errorf("%s: response.len %v, expected %d", w.name, c.ResponseLen, *w.len)
		}
	}
}
