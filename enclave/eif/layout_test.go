package eif

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

func TestReadLayoutMatchesRead(t *testing.T) {
	img := &Image{Sections: []Section{
		{Type: SectionKernel, Data: []byte("kernel bytes")},
		{Type: SectionCmdline, Data: []byte("console=ttyS0")},
		{Type: SectionMetadata, Data: []byte(`{"ImageName":"x"}`)},
		{Type: SectionRamdisk, Data: bytes.Repeat([]byte{1}, 1000)},
		{Type: SectionRamdisk, Data: bytes.Repeat([]byte{2}, 3000)},
	}}
	b, err := Marshal(img)
	if err != nil {
		t.Fatal(err)
	}
	l, err := ReadLayout(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Sections) != len(img.Sections) {
		t.Fatalf("%d sections, want %d", len(l.Sections), len(img.Sections))
	}
	for i, si := range l.Sections {
		want := img.Sections[i]
		if si.Type != want.Type || !bytes.Equal(b[si.Offset:si.Offset+si.Size], want.Data) {
			t.Errorf("section %d: %+v does not locate %s data", i, si, want.Type)
		}
	}
	// Layout errors are Read's; CRC is not checked.
	b[len(b)-1] ^= 0xff
	if _, err := ReadLayout(bytes.NewReader(b), int64(len(b))); err != nil {
		t.Errorf("ReadLayout checked the CRC: %v", err)
	}
	if _, err := ReadLayout(bytes.NewReader(b[:len(b)-1]), int64(len(b)-1)); !errors.Is(err, ErrBounds) {
		t.Errorf("truncated file: %v, want ErrBounds", err)
	}
}

func TestCheckFile(t *testing.T) {
	img := &Image{Sections: []Section{
		{Type: SectionKernel, Data: bytes.Repeat([]byte{7}, 300<<10)},
		{Type: SectionCmdline, Data: []byte("console=ttyS0")},
		{Type: SectionMetadata, Data: []byte(`{}`)},
		{Type: SectionRamdisk, Data: bytes.Repeat([]byte{1}, 700<<10)},
	}}
	b, err := Marshal(img)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "x.eif")
	check := func() error {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		_, err = CheckFile(f)
		return err
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := check(); err != nil {
		t.Fatalf("valid image: %v", err)
	}
	b[len(b)-5] ^= 1
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := check(); !errors.Is(err, ErrCRC) {
		t.Fatalf("corrupted image: %v, want ErrCRC", err)
	}
}

func TestExtractSections(t *testing.T) {
	img := &Image{Sections: []Section{
		{Type: SectionKernel, Data: []byte("KERNEL")},
		{Type: SectionCmdline, Data: []byte("c")},
		{Type: SectionMetadata, Data: []byte(`{}`)},
		{Type: SectionRamdisk, Data: []byte("first ramdisk|")},
		{Type: SectionRamdisk, Data: []byte("second ramdisk")},
	}}
	b, err := Marshal(img)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "x.eif")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	l, err := CheckFile(f)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "initrd")
	if err := ExtractSections(out, f, l.Sections[3], l.Sections[4]); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(out)
	if string(got) != "first ramdisk|second ramdisk" {
		t.Fatalf("extracted %q", got)
	}
}

func TestExtractImage(t *testing.T) {
	b, err := Marshal(&Image{Sections: []Section{
		{Type: SectionKernel, Data: []byte("KERNEL")},
		{Type: SectionCmdline, Data: []byte("c")},
		{Type: SectionMetadata, Data: []byte(`{}`)},
		{Type: SectionRamdisk, Data: []byte("ramdisk")},
	}})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "x.eif")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Seek(7, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "copy.eif")
	if err := ExtractImage(out, f); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(out)
	if !bytes.Equal(got, b) {
		t.Fatalf("copied %d bytes, not the %d-byte image", len(got), len(b))
	}
	if off, _ := f.Seek(0, io.SeekCurrent); off != 7 {
		t.Errorf("source offset moved to %d", off)
	}
}
