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
}

// BenchmarkLoadImage measures what every launch pays for the image: the
// sealed copy and its content hash (the measurement itself is cached).
func BenchmarkLoadImage(b *testing.B) {
	dir := b.TempDir()
	path := writeTestEIF(b, dir, "img", bytes.Repeat([]byte{1, 2, 3, 4}, 8<<20))
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
