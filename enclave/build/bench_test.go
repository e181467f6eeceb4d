package build

import (
	"context"
	"crypto/sha512"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cloister/cloister/internal/imagetest"
)

const benchTotal = 100 << 20 // 100 MB rootfs: 100 files of 1 MiB

// benchFiles returns the deterministic pseudo-random contents of the
// benchmark rootfs.
func benchFiles() [][]byte {
	r := rand.New(rand.NewChaCha8([32]byte{1, 2, 3}))
	files := make([][]byte, 100)
	for i := range files {
		files[i] = make([]byte, benchTotal/100)
		for j := 0; j < len(files[i]); j += 8 {
			v := r.Uint64()
			for k := 0; k < 8; k++ {
				files[i][j+k] = byte(v >> (8 * k))
			}
		}
	}
	return files
}

// BenchmarkBuild100MB builds an EIF from a 100 MB rootfs of random files
// (page-cache resident) into a file; compare its MB/s with BenchmarkSHA384.
func BenchmarkBuild100MB(b *testing.B) {
	dir := b.TempDir()
	for i, f := range benchFiles() {
		sub := filepath.Join(dir, fmt.Sprintf("d%d", i%10))
		if err := os.MkdirAll(sub, 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(sub, fmt.Sprintf("f%03d", i)), f, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	out := filepath.Join(b.TempDir(), "out.eif")
	epoch := time.Unix(0, 0)
	opts := Options{Init: []byte("init"), Cmd: []string{"/x"}, SourceDateEpoch: &epoch,
		Getenv: envFunc(map[string]string{"CLOISTER_BLOBS": filepath.Join(dir, "none")})}
	b.SetBytes(benchTotal)
	for b.Loop() {
		if _, err := BuildFile(context.Background(), FromRootFS(dir), out, opts); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSHA384 hashes the same 100 MB once with SHA-384: the lower
// bound of any measured build (PCR0 alone needs this much work).
func BenchmarkSHA384(b *testing.B) {
	files := benchFiles()
	b.SetBytes(benchTotal)
	for b.Loop() {
		h := sha512.New384()
		for _, f := range files {
			h.Write(f)
		}
		h.Sum(nil)
	}
}

// BenchmarkBuildManyFiles builds an image from one layer of 100,000 empty
// files in 100 directories: the cost of the tree and of writing it, per
// entry.
func BenchmarkBuildManyFiles(b *testing.B) {
	const n = 100_000
	entries := make([]imagetest.Entry, 0, n)
	for i := range n {
		entries = append(entries, imagetest.Entry{Name: fmt.Sprintf("d%02d/f%06d", i%100, i)})
	}
	dir := filepath.Join(b.TempDir(), "layout")
	if err := imagetest.WriteOCILayout(dir, imagetest.Tar(entries...)); err != nil {
		b.Fatal(err)
	}
	out := filepath.Join(b.TempDir(), "out.eif")
	epoch := time.Unix(0, 0)
	opts := Options{Init: []byte("init"), SourceDateEpoch: &epoch, TempDir: b.TempDir(),
		Getenv: envFunc(map[string]string{"CLOISTER_BLOBS": filepath.Join(dir, "none")})}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := BuildFile(context.Background(), FromOCILayout(dir), out, opts); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/entry")
}
