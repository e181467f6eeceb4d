package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cloister/cloister/enclave/build"
	"github.com/cloister/cloister/enclave/eif"
	"github.com/cloister/cloister/internal/kmod"
	"github.com/cloister/cloister/internal/testenv"
)

// helloProgram is the enclave application of the boot test.
const helloProgram = `package main

import (
	"fmt"
	"os"
)

func main() {
	wd, _ := os.Getwd()
	fmt.Printf("hello from the enclave app, uid=%d, cwd=%s, args=%q, GREETING=%s, PATH=%s\n",
		os.Getuid(), wd, os.Args[1:], os.Getenv("GREETING"), os.Getenv("PATH"))
	if _, err := os.Stat("/proc/self/fd"); err != nil {
		fmt.Println("hello: /proc is not mounted:", err)
	}
	os.Exit(3)
}
`

// bootImage is an EIF unpacked for QEMU 7.2 (which has no EIF loader).
type bootImage struct {
	kernel, initrd string
	cmdline        string
	modules        []string // module file names, load order
}

// buildBootImage compiles cloister-init and the hello program statically,
// builds an EIF with enclave/build and unpacks it again with enclave/eif.
func buildBootImage(t testing.TB) bootImage {
	t.Helper()
	kernel := os.Getenv("CLOISTER_TEST_KERNEL")
	testenv.Require(t, kernel != "", "CLOISTER_TEST_KERNEL (a Debian cloud kernel bzImage)",
		"apt-get install linux-image-cloud-amd64 and run scripts/test.sh (it exports CLOISTER_TEST_KERNEL and CLOISTER_TEST_MODULES)")
	modulesDir := os.Getenv("CLOISTER_TEST_MODULES")
	testenv.Require(t, modulesDir != "", "CLOISTER_TEST_MODULES (the kernel's /lib/modules/<version>)",
		"run scripts/test.sh, or export CLOISTER_TEST_MODULES=/lib/modules/<version of CLOISTER_TEST_KERNEL>")
	goTool := testenv.LookPath(t, "go", "install Go and put it on PATH")

	dir := t.TempDir()
	gobuild := func(out string, args ...string) {
		t.Helper()
		cmd := exec.Command(goTool, append([]string{"build", "-trimpath", "-o", out}, args...)...)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %v: %v\n%s", args, err, b)
		}
	}
	initBin := filepath.Join(dir, "cloister-init")
	gobuild(initBin, ".")

	rootfs := filepath.Join(dir, "rootfs")
	if err := os.MkdirAll(filepath.Join(rootfs, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(dir, "hello.go")
	if err := os.WriteFile(src, []byte(helloProgram), 0o644); err != nil {
		t.Fatal(err)
	}
	gobuild(filepath.Join(rootfs, "bin", "hello"), src)

	mods, err := kmod.VsockModules(modulesDir)
	if err != nil {
		t.Fatalf("resolving the vsock modules: %v", err)
	}
	eifPath := filepath.Join(dir, "boot.eif")
	if _, err := build.BuildFile(context.Background(), build.FromRootFS(rootfs), eifPath, build.Options{
		Kernel:        kernel,
		RequireKernel: true,
		InitPath:      initBin,
		KernelModules: mods,
		Cmd:           []string{"hello", "one", "two words"},
		Env:           []string{"GREETING=hi there"},
	}); err != nil {
		t.Fatalf("building the EIF: %v", err)
	}

	img, err := eif.Open(eifPath, eif.ReadOptions{})
	if err != nil {
		t.Fatalf("reading the EIF back: %v", err)
	}
	bi := bootImage{
		kernel:  filepath.Join(dir, "bzImage"),
		initrd:  filepath.Join(dir, "initrd.cpio"),
		cmdline: string(img.Section(eif.SectionCmdline).Data),
	}
	if err := os.WriteFile(bi.kernel, img.Section(eif.SectionKernel).Data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bi.initrd, bytes.Join(img.Ramdisks(), nil), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, m := range mods {
		bi.modules = append(bi.modules, filepath.Base(m))
	}
	return bi
}

// boot runs the image in a QEMU microVM (TCG) until the guest ends it and
// returns the serial console output and the time until QEMU exited.
func (bi bootImage) boot(t testing.TB, qemu string) (string, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 180*time.Second) // a bound, not an assertion
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu,
		"-M", "microvm,x-option-roms=off,rtc=on",
		"-accel", "tcg", "-cpu", "max", "-m", "256m", "-smp", "1",
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-serial", "stdio",
		"-kernel", bi.kernel,
		"-initrd", bi.initrd,
		"-append", bi.cmdline+" console=ttyS0 reboot=t panic=-1 cloister.no_heartbeat=1"+tscParam(),
	)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	elapsed := time.Since(start)
	if ctx.Err() != nil {
		t.Fatalf("QEMU did not exit by itself within the bound; console:\n%s", out.String())
	}
	if err != nil {
		t.Fatalf("QEMU: %v; console:\n%s", err, out.String())
	}
	return strings.ReplaceAll(out.String(), "\r\n", "\n"), elapsed
}

// tscParam returns " tsc_early_khz=<host TSC kHz>" when the host's CPU
// frequency is known. Under TCG the guest's TSC runs at the host's rate, but
// the microvm machine (hardware-reduced ACPI: no PIT, PIC or HPET in use)
// gives the kernel nothing to measure it against. On a busy host the PIT
// calibration fails too, the kernel then cannot calibrate its local APIC
// timer, jiffies never advance and boot hangs after "tsc: Marking TSC
// unstable". Telling the kernel the TSC rate avoids all of that.
func tscParam() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok || strings.TrimSpace(k) != "cpu MHz" {
			continue
		}
		mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || mhz < 100 {
			return ""
		}
		return " tsc_early_khz=" + strconv.Itoa(int(mhz*1000))
	}
	return ""
}

// TestBootMicroVM boots cloister-init and a hello program, packed into an
// EIF by enclave/build, in a real QEMU microVM with the Debian cloud kernel.
func TestBootMicroVM(t *testing.T) {
	qemu := testenv.LookPath(t, "qemu-system-x86_64", "apt-get install qemu-system-x86")
	bi := buildBootImage(t)
	console, elapsed := bi.boot(t, qemu)

	want := []string{"cloister-init: starting (world=vm)\n"}
	for _, m := range bi.modules {
		want = append(want, "cloister-init: loaded kernel module "+m+"\n")
	}
	want = append(want,
		"cloister-init: heartbeat skipped (cloister.no_heartbeat=1 on the kernel command line)\n",
		`hello from the enclave app, uid=0, cwd=/, args=["one" "two words"], GREETING=hi there, PATH=/sbin:/usr/sbin:/bin:/usr/bin`+"\n",
		"cloister-init: application exited with status 3\n",
		"cloister-init: powering off (status 3)\n",
	)
	// The lines must appear in this order.
	rest := console
	for _, w := range want {
		i := strings.Index(rest, w)
		if i < 0 {
			t.Fatalf("the console lacks %q (in order); console:\n%s", w, console)
		}
		rest = rest[i+len(w):]
	}
	if strings.Contains(console, "hello: /proc is not mounted") {
		t.Errorf("the application ran without /proc:\n%s", console)
	}
	if strings.Contains(console, "Kernel panic") {
		t.Errorf("the kernel panicked:\n%s", console)
	}
	t.Logf("EIF cmdline: %s", bi.cmdline)
	t.Logf("boot to power-off in %v (QEMU TCG, includes QEMU start-up)", elapsed)
}

// BenchmarkBootMicroVM measures one microVM boot, from QEMU start to its
// exit after the application ended.
func BenchmarkBootMicroVM(b *testing.B) {
	qemu := testenv.LookPath(b, "qemu-system-x86_64", "apt-get install qemu-system-x86")
	bi := buildBootImage(b)
	for b.Loop() {
		if console, _ := bi.boot(b, qemu); !strings.Contains(console, "application exited with status 3") {
			b.Fatalf("unexpected console:\n%s", console)
		}
	}
}
