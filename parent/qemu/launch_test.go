package qemu

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

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
