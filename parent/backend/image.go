package backend

import (
	"fmt"
	"os"

	"github.com/cloister/cloister/enclave/eif"
)

// Sections locates the parts of an image a backend boots.
type Sections struct {
	Kernel   eif.SectionInfo
	Cmdline  eif.SectionInfo
	Ramdisks []eif.SectionInfo // in image order
	// NoKernel: the kernel section is exactly [eif.NoKernelMarker] (an
	// image built without a kernel, which only a backend with
	// [Capabilities.NoKernel] runs).
	NoKernel bool
}

// ImageSections opens the image f (named name in messages) for booting:
// eif.CheckFile validates its layout and CRC, reading it through a small
// buffer (eif.FileLayout, the layout alone, when crcChecked: the daemon's
// sealed copy, Spec.ImageVerified), and the kernel,
// command line and ramdisk sections are picked from the layout (the last
// kernel and command line when an image has several).
func ImageSections(f *os.File, name string, crcChecked bool) (Sections, error) {
	check := eif.CheckFile
	if crcChecked {
		check = eif.FileLayout
	}
	layout, err := check(f)
	if err != nil {
		return Sections{}, fmt.Errorf("%s: %w", name, err)
	}
	var s Sections
	for _, sec := range layout.Sections {
		switch sec.Type {
		case eif.SectionKernel:
			s.Kernel = sec
		case eif.SectionCmdline:
			s.Cmdline = sec
		case eif.SectionRamdisk:
			s.Ramdisks = append(s.Ramdisks, sec)
		}
	}
	if s.Kernel.Size == int64(len(eif.NoKernelMarker)) {
		b := make([]byte, s.Kernel.Size)
		if _, err := f.ReadAt(b, s.Kernel.Offset); err == nil && string(b) == eif.NoKernelMarker {
			s.NoKernel = true
		}
	}
	return s, nil
}
