//go:build linux

package sandbox

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cloister/cloister/enclave/eif"
	"github.com/cloister/cloister/internal/cgroups"
	"github.com/cloister/cloister/internal/testenv"
	"github.com/cloister/cloister/parent/backend"
)

// wantStep fails t unless err is a sandbox StepError at step wrapping want.
func wantStep(t *testing.T, err error, step string, want error) {
	t.Helper()
	var se *backend.StepError
	if !errors.As(err, &se) || se.Backend != backend.KindSandbox || se.Step != step || !errors.Is(err, want) {
		t.Fatalf("error = %v, want a sandbox StepError at %q wrapping %v", err, step, want)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func TestLaunchCheckImage(t *testing.T) {
	meta := []byte(`{"ImageName":"t","ImageVersion":"1","BuildMetadata":{"BuildTime":"t","BuildTool":"b","BuildToolVersion":"v","OperatingSystem":"o","KernelVersion":"k"},"DockerInfo":null,"CustomMetadata":null}`)
	good, err := eif.Marshal(&eif.Image{Sections: []eif.Section{
		{Type: eif.SectionKernel, Data: []byte(eif.NoKernelMarker)},
		{Type: eif.SectionCmdline, Data: []byte("console=ttyS0")},
		{Type: eif.SectionMetadata, Data: meta},
		{Type: eif.SectionRamdisk, Data: []byte("only one ramdisk")},
	}})
	if err != nil {
		t.Fatal(err)
	}
	corrupt := append([]byte(nil), good...)
	corrupt[len(corrupt)-1] ^= 0xff
	for _, tc := range []struct {
		name  string
		image []byte
		want  error
	}{
		{"one ramdisk", good, backend.ErrUnsupportedImage},
		{"bad CRC", corrupt, eif.ErrCRC},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "app.eif")
			if err := os.WriteFile(p, tc.image, 0o600); err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(p)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			d := backend.Dir(filepath.Join(dir, "enclave"))
			spec := backend.Spec{ID: "check-image", CID: 9, CPUs: []int{0}, MemoryMiB: 64, EIFPath: p, Image: f, Dir: d}
			inst, err := (&Backend{CgroupParent: testCgroupParent}).Launch(context.Background(), spec)
			if err == nil {
				_ = inst.Terminate(context.Background())
			}
			wantStep(t, err, "check image", tc.want)
			if _, err := os.Stat(d.HostDir()); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a failed image check went on to create %s (%v)", d.HostDir(), err)
			}
		})
	}
}

// TestStartStepRollback fails Start at "create cgroup", after it opened
// the host directory and the ramdisks, took a uid range and created the
// listener directory, and checks all of them were released.
func TestStartStepRollback(t *testing.T) {
	testenv.RequireRoot(t)
	bootstrap, customer := images(t)
	for _, tc := range []struct {
		name string
		mod  func(*Spec)
	}{
		{"parent outside the hierarchy", func(s *Spec) { s.CgroupParent = "../escape" }},
		{"parent under a file", func(s *Spec) { s.CgroupParent = testCgroupParent + "/cgroup.procs" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := Spec{ID: "rollback", CID: 9, Ramdisks: []string{bootstrap, customer}, MemoryMiB: 64,
				VsockDir: vsockDir(t), CgroupParent: testCgroupParent}
			tc.mod(&spec)
			// The test cgroup parent exists (for "under a file").
			if mgr, err := cgroups.New(cgroups.Config{Parent: testCgroupParent}); err == nil {
				if g, err := mgr.Create(context.Background(), "rollback-probe", cgroups.Limits{}); err == nil {
					defer backend.RemoveCgroup(g)
				}
			}
			fds := openFDs(t)
			p, err := Start(context.Background(), spec)
			if err == nil {
				_ = p.Kill()
				_, _ = p.Wait()
			}
			var se *backend.StepError
			if !errors.As(err, &se) || se.Step != "create cgroup" {
				t.Fatalf("Start = %v, want a failure at create cgroup", err)
			}
			if got := openFDs(t); got != fds {
				t.Errorf("%d descriptors open after the failed start, %d before", got, fds)
			}
			slots.Lock()
			for i, f := range slots.held {
				if f != nil {
					t.Errorf("uid range %d still held", i)
				}
			}
			slots.Unlock()
			// No process was started; the listener directory is a detached
			// mount, so its release shows in the descriptors above.
			for _, c := range []string{"memory", "cpuset", "pids", ""} {
				p := filepath.Join("/sys/fs/cgroup", c, testCgroupParent, spec.ID)
				if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("cgroup %s left behind (%v)", p, err)
				}
			}
		})
	}
}
