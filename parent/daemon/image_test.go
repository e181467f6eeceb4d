package daemon

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestLoadImageIsSealedAndKeyedByContent checks the properties the launch
// relies on: the copy cannot be written, grown or shrunk, and the
// measurements follow the content, not the file's metadata.
func TestLoadImageIsSealedAndKeyedByContent(t *testing.T) {
	dir := t.TempDir()
	a := writeTestEIF(t, dir, "img", bytes.Repeat([]byte("A"), 4096))
	if err := os.Mkdir(filepath.Join(dir, "b"), 0o755); err != nil {
		t.Fatal(err)
	}
	b := writeTestEIF(t, filepath.Join(dir, "b"), "img", bytes.Repeat([]byte("B"), 4096))
	load := func(path string) *image {
		t.Helper()
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		img, err := loadImage(context.Background(), f, path, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { img.Close() })
		return img
	}
	imgA := load(a)
	if _, err := imgA.file.WriteAt([]byte("x"), 0); err == nil {
		t.Error("the sealed copy accepted a write")
	}
	if err := imgA.file.Truncate(1); err == nil {
		t.Error("the sealed copy accepted a truncate")
	}
	if err := checkSealed(imgA.file); err != nil {
		t.Error(err)
	}
	// Same path, size and mtime, other bytes: other measurements.
	fi, _ := os.Stat(a)
	bb, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(a, bb, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(a, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	imgB := load(a)
	if imgA.info.measurements.PCR0 == imgB.info.measurements.PCR0 {
		t.Error("rewritten content was given the cached measurements of the old content")
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(imgB.file.Fd()), &st); err != nil || st.Size != int64(len(bb)) {
		t.Errorf("copy has %d bytes, want %d (%v)", st.Size, len(bb), err)
	}

	// The same bytes again: the kept copy is reused (same inode).
	imgB2 := load(a)
	var st2 unix.Stat_t
	if err := unix.Fstat(int(imgB2.file.Fd()), &st2); err != nil || st2.Ino != st.Ino {
		t.Errorf("an identical relaunch made a new copy (inode %d, kept %d, %v)", st2.Ino, st.Ino, err)
	}
	if imgB2.info.measurements != imgB.info.measurements {
		t.Error("an identical relaunch changed the measurements")
	}
	// One byte changed at the very end, same size and mtime: a new copy
	// and new measurements (the EIF CRC covers it, so it must not load as
	// the old image).
	last := append([]byte(nil), bb...)
	last[len(last)-1] ^= 0xff
	if err := os.WriteFile(a, last, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(a, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(a)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if img, err := loadImage(context.Background(), f, a, time.Now()); err == nil {
		img.Close()
		t.Error("an image changed in its last byte loaded as the kept copy")
	}
}

// BenchmarkLoadImage measures what a relaunch of the same image pays: the
// comparison of the caller's file with the kept sealed copy.
func BenchmarkLoadImage(b *testing.B) {
	dir := b.TempDir()
	path := writeTestEIF(b, dir, "img", bytes.Repeat([]byte{1, 2, 3, 4}, 2560<<10))
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	b.SetBytes(fi.Size())
	for b.Loop() {
		img, err := loadImage(context.Background(), f, path, time.Now())
		if err != nil {
			b.Fatal(err)
		}
		img.Close()
	}
}
