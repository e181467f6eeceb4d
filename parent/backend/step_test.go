package backend

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/enclave/eif"
)

func TestRunSteps(t *testing.T) {
	errBoom := errors.New("boom")
	for _, tc := range []struct {
		name     string
		failAt   string // "" means no step fails
		wantLog  []string
		wantStep string
	}{
		{"all succeed", "", []string{"do a", "do b", "do c"}, ""},
		{"first fails", "a", []string{"do a", "undo a"}, "a"},
		{"middle fails", "b", []string{"do a", "do b", "undo b", "undo a"}, "b"},
		{"last fails", "c", []string{"do a", "do b", "do c", "undo c", "undo b", "undo a"}, "c"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var log []string
			mk := func(name string, undo bool) Step {
				s := Step{Name: name, Do: func(context.Context) error {
					log = append(log, "do "+name)
					if name == tc.failAt {
						return errBoom
					}
					return nil
				}}
				if undo {
					s.Undo = func() { log = append(log, "undo "+name) }
				}
				return s
			}
			err := RunSteps(context.Background(), KindQEMU, []Step{mk("a", true), mk("b", true), mk("c", true), mk("d", false)})
			want := tc.wantLog
			if tc.failAt == "" {
				want = append(want, "do d")
			}
			if diff := cmp.Diff(want, log); diff != "" {
				t.Errorf("steps run (-want +got):\n%s", diff)
			}
			if tc.wantStep == "" {
				if err != nil {
					t.Fatalf("RunSteps = %v", err)
				}
				return
			}
			var se *StepError
			if !errors.As(err, &se) || se.Step != tc.wantStep || se.Backend != KindQEMU || !errors.Is(err, errBoom) {
				t.Fatalf("RunSteps = %#v, want a StepError at %q wrapping boom", err, tc.wantStep)
			}
			if got, want := err.Error(), "qemu: launch failed at "+tc.wantStep+": boom"; got != want {
				t.Errorf("message %q, want %q", got, want)
			}
		})
	}
}

func writeEIF(t *testing.T, secs ...eif.Section) *os.File {
	t.Helper()
	b, err := eif.Marshal(&eif.Image{Sections: secs})
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "x.eif")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

const testMetadata = `{"ImageName":"t","ImageVersion":"1","BuildMetadata":{"BuildTime":"t","BuildTool":"b","BuildToolVersion":"v","OperatingSystem":"o","KernelVersion":"k"},"DockerInfo":null,"CustomMetadata":null}`

func TestImageSections(t *testing.T) {
	for _, tc := range []struct {
		name         string
		kernel       string
		wantNoKernel bool
	}{
		{"kernel", "a kernel of some length", false},
		{"no kernel", eif.NoKernelMarker, true},
		{"marker-sized kernel", "CLOISTER-NO-KERNEL!", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := writeEIF(t,
				eif.Section{Type: eif.SectionKernel, Data: []byte(tc.kernel)},
				eif.Section{Type: eif.SectionCmdline, Data: []byte("console=ttyS0")},
				eif.Section{Type: eif.SectionMetadata, Data: []byte(testMetadata)},
				eif.Section{Type: eif.SectionRamdisk, Data: []byte("bootstrap")},
				eif.Section{Type: eif.SectionRamdisk, Data: []byte("customer ramdisk")},
			)
			s, err := ImageSections(f, "x.eif", false)
			if err != nil {
				t.Fatal(err)
			}
			read := func(si eif.SectionInfo) string {
				b := make([]byte, si.Size)
				if _, err := f.ReadAt(b, si.Offset); err != nil {
					t.Fatal(err)
				}
				return string(b)
			}
			got := []string{read(s.Kernel), read(s.Cmdline)}
			for _, r := range s.Ramdisks {
				got = append(got, read(r))
			}
			if diff := cmp.Diff([]string{tc.kernel, "console=ttyS0", "bootstrap", "customer ramdisk"}, got); diff != "" {
				t.Errorf("sections (-want +got):\n%s", diff)
			}
			if s.NoKernel != tc.wantNoKernel {
				t.Errorf("NoKernel = %v, want %v", s.NoKernel, tc.wantNoKernel)
			}
		})
	}
}

func TestImageSectionsCorrupt(t *testing.T) {
	f := writeEIF(t,
		eif.Section{Type: eif.SectionKernel, Data: []byte("kernel")},
		eif.Section{Type: eif.SectionCmdline, Data: []byte("console=ttyS0")},
		eif.Section{Type: eif.SectionMetadata, Data: []byte(testMetadata)},
		eif.Section{Type: eif.SectionRamdisk, Data: []byte("bootstrap")},
	)
	fi, _ := f.Stat()
	// Flip the last byte (ramdisk data): the CRC no longer matches.
	w, err := os.OpenFile(f.Name(), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteAt([]byte{'X'}, fi.Size()-1); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if _, err := ImageSections(f, "x.eif", false); !errors.Is(err, eif.ErrCRC) {
		t.Fatalf("ImageSections on an image with a bad CRC: %v, want %v", err, eif.ErrCRC)
	}
	// An image whose CRC the daemon checked before sealing it: the layout
	// alone is checked.
	if secs, err := ImageSections(f, "x.eif", true); err != nil || len(secs.Ramdisks) != 1 {
		t.Fatalf("ImageSections(crcChecked) = %+v, %v", secs, err)
	}
	// A layout that does not hold is refused either way.
	if err := os.Truncate(f.Name(), fi.Size()-1); err != nil {
		t.Fatal(err)
	}
	if _, err := ImageSections(f, "x.eif", true); err == nil {
		t.Fatal("ImageSections(crcChecked) accepted a truncated image")
	}
}
