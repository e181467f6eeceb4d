package qemu

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/cloister/cloister/enclave/eif"
	"github.com/cloister/cloister/parent/backend"
)

const testMetadata = `{"ImageName":"t","ImageVersion":"1","BuildMetadata":{"BuildTime":"t","BuildTool":"b","BuildToolVersion":"v","OperatingSystem":"o","KernelVersion":"k"},"DockerInfo":null,"CustomMetadata":null}`

// launchRig is a Backend whose "QEMU" is an executable file the kernel
// refuses to run (exec format error), so a launch gets as far as starting
// it without QEMU on the host, and a spec for an image with kernel.
func launchRig(t *testing.T, kernel string) (*Backend, backend.Spec, string) {
	t.Helper()
	dir := t.TempDir()
	tmp := filepath.Join(dir, "tmp")
	if err := os.Mkdir(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TMPDIR", tmp) // where the launch creates its vm directory
	bin := filepath.Join(dir, "not-qemu")
	if err := os.WriteFile(bin, []byte("\x00\x01 not an executable format"), 0o755); err != nil {
		t.Fatal(err)
	}
	img, err := eif.Marshal(&eif.Image{Sections: []eif.Section{
		{Type: eif.SectionKernel, Data: []byte(kernel)},
		{Type: eif.SectionCmdline, Data: []byte("console=ttyS0")},
		{Type: eif.SectionMetadata, Data: []byte(testMetadata)},
		{Type: eif.SectionRamdisk, Data: []byte("bootstrap")},
		{Type: eif.SectionRamdisk, Data: []byte("customer")},
	}})
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "app.eif")
	if err := os.WriteFile(p, img, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	d := backend.Dir(filepath.Join(dir, "enclave"))
	if err := os.Mkdir(d.Path(), 0o700); err != nil {
		t.Fatal(err)
	}
	spec := backend.Spec{ID: "launch-test", CID: 9, CPUs: []int{0}, MemoryMiB: 64, EIFPath: p, Image: f, Dir: d}
	return &Backend{Binary: bin, Accel: "tcg", CgroupParent: "cloister-qemu-test"}, spec, tmp
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestLaunchSteps fails a launch at a given step and checks the error
// names it and that nothing the earlier steps created is left: no vm
// directory, no D/vm link, no open descriptor (the vsock device's).
func TestLaunchSteps(t *testing.T) {
	for _, tc := range []struct {
		name   string
		kernel string
		step   string
		want   error
	}{
		{"image without a kernel", eif.NoKernelMarker, "check image", backend.ErrUnsupportedImage},
		{"qemu does not start", "a kernel", "start qemu", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, spec, tmp := launchRig(t, tc.kernel)
			fds := openFDs(t)
			inst, err := b.Launch(context.Background(), spec)
			if err == nil {
				_ = inst.Terminate(context.Background())
				t.Fatal("launch succeeded")
			}
			var se *backend.StepError
			if !errors.As(err, &se) || se.Backend != backend.KindQEMU || se.Step != tc.step {
				t.Fatalf("Launch = %v, want a qemu StepError at %q", err, tc.step)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("Launch = %v, want %v", err, tc.want)
			}
			if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
				t.Errorf("%d vm directories left in %s", len(ents), tmp)
			}
			if _, err := os.Lstat(spec.Dir.VM()); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s left behind (%v)", spec.Dir.VM(), err)
			}
			if got := openFDs(t); got != fds {
				t.Errorf("%d descriptors open after the failed launch, %d before", got, fds)
			}
		})
	}
}

// TestLaunchNitroEnclave launches with Machine nitro-enclave and a "QEMU"
// that records its arguments and the file given with -kernel: QEMU must get
// the whole image (it loads and measures the EIF itself), the machine with
// the vhost-user chardev and the enclave ID as the NSM module ID, and only
// the runtime command line (QEMU appends it to the image's own).
func TestLaunchNitroEnclave(t *testing.T) {
	b, spec, _ := launchRig(t, "a kernel")
	out := t.TempDir()
	script := filepath.Join(out, "fake-qemu")
	if err := os.WriteFile(script, []byte(`#!/bin/sh
printf '%s\n' "$@" > `+out+`/args
while [ $# -gt 0 ]; do
	if [ "$1" = -kernel ]; then cp "$2" `+out+`/kernel; fi
	shift
done
`), 0o755); err != nil {
		t.Fatal(err)
	}
	b.Binary, b.Machine, b.User = script, MachineNitroEnclave, "root"
	inst, err := b.Launch(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	<-inst.Done()
	args, err := os.ReadFile(filepath.Join(out, "args"))
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Split(strings.TrimSpace(string(args)), "\n")
	value := func(flag string) string {
		for i, a := range got {
			if a == flag && i+1 < len(got) {
				return got[i+1]
			}
		}
		return ""
	}
	if m := value("-M"); m != "nitro-enclave,vsock=vsock0,id=launch-test,acpi=on,x-option-roms=off,rtc=on" {
		t.Errorf("-M %q", m)
	}
	if c := value("-chardev"); !strings.HasPrefix(c, "socket,id=vsock0,path=") {
		t.Errorf("-chardev %q", c)
	}
	if a := value("-append"); !strings.HasPrefix(a, runtimeCmdline) || strings.Contains(a, "console=ttyS0 console") {
		t.Errorf("-append %q, want the runtime command line only", a)
	}
	for _, flag := range []string{"-initrd", "-device", "-object"} {
		if v := value(flag); v != "" {
			t.Errorf("%s %q given to nitro-enclave", flag, v)
		}
	}
	want, err := os.ReadFile(spec.EIFPath)
	if err != nil {
		t.Fatal(err)
	}
	kernel, err := os.ReadFile(filepath.Join(out, "kernel"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(kernel, want) {
		t.Errorf("-kernel got %d bytes, not the %d-byte image", len(kernel), len(want))
	}
}

func TestFindNitroBinary(t *testing.T) {
	root := strings.TrimPrefix(NitroCacheDir, "/")
	old, recent := time.Unix(1000, 0), time.Unix(2000, 0)
	fsys := fstest.MapFS{
		root + "/10.0.2+ds-1/bin/qemu-system-x86_64":    {Mode: 0o755, ModTime: old},
		root + "/10.0.13+ds-0/bin/qemu-system-x86_64":   {Mode: 0o755, ModTime: recent},
		root + "/.stage-10.0.14/bin/qemu-system-x86_64": {Mode: 0o755, ModTime: recent.Add(time.Hour)},
		root + "/11.0/bin/qemu-system-x86_64":           {Mode: 0o644, ModTime: recent.Add(time.Hour)},
	}
	if got, want := FindNitroBinary(fsys), "/"+root+"/10.0.13+ds-0/bin/qemu-system-x86_64"; got != want {
		t.Errorf("FindNitroBinary = %q, want %q", got, want)
	}
	if got := FindNitroBinary(fstest.MapFS{}); got != "" {
		t.Errorf("FindNitroBinary on an empty host = %q", got)
	}
}

func TestUnknownMachine(t *testing.T) {
	b := &Backend{Machine: "pc"}
	if err := b.Check(context.Background()); err == nil || !strings.Contains(err.Error(), `unknown machine "pc"`) {
		t.Errorf("Check with machine pc: %v", err)
	}
}

func TestHasMachine(t *testing.T) {
	help := "Supported machines are:\nmicrovm              microvm (i386)\nnitro-enclave        AWS Nitro Enclave\npc                   Standard PC\n"
	for name, want := range map[string]bool{"nitro-enclave": true, "microvm": true, "nitro": false, "AWS": false} {
		if got := HasMachine(help, name); got != want {
			t.Errorf("HasMachine(%q) = %v, want %v", name, got, want)
		}
	}
}
