package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/cloister/cloister/internal/imagetest"
	"github.com/cloister/cloister/parent/parenttest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	parenttest.Cleanup()
	os.Exit(code)
}

// TestBuildEnclaveHostileImages runs the real cloister binary's
// build-enclave on hostile images, each a few kilobytes: it must exit 1
// with a message naming the limit (and the flag that raises it), write no
// output, and keep its peak memory small. Before the limits, the symbolic
// link chain took 1.7 GB of memory, the deep path 2.6 GB, the zstd layer
// 1 GB and two minutes; the sparse file became a 4 GB image.
func TestBuildEnclaveHostileImages(t *testing.T) {
	const mib = 1 << 20
	bin := parenttest.Cloister(t)
	dir := t.TempDir()
	initBin := filepath.Join(dir, "cloister-init")
	if err := os.WriteFile(initBin, []byte("fake init"), 0o755); err != nil {
		t.Fatal(err)
	}
	zstdBomb, err := imagetest.ZstdBomb(imagetest.Entry{Name: ".wh.big"}, 256*mib, 29)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		layer []byte
		flags []string
		want  []string // in the error message
	}{
		{"symbolic link chain", imagetest.Tar(imagetest.SymlinkChain(20, 2000)...), nil,
			[]string{"longer than 4088 (MaxPathLen"}},
		{"deep path", imagetest.Tar(imagetest.Entry{Name: imagetest.DeepPath(50000), Data: []byte("x")}), nil,
			[]string{"the path is 100001 bytes, longer than 4088"}},
		{"sparse file", imagetest.Tar(imagetest.Sparse("big", 4<<30-1)), nil,
			[]string{"image too large: layer 1: the files of the image", "exceed --max-image-size=4GiB (4294967296 bytes)"}},
		{"gzip bomb", imagetest.GzipBomb(imagetest.Entry{Name: ".wh.big"}, 256*mib), []string{"--max-image-size", "64M"},
			[]string{"the layers' decompressed data exceed --max-image-size=64MiB (67108864 bytes)"}},
		{"zstd window", zstdBomb, nil,
			[]string{"zstd frame asks for a window larger than 128 MiB"}},
		{"too many entries", imagetest.Tar(imagetest.ManyFiles(2001)...), []string{"--max-entries", "2000"},
			[]string{"layer entries and the directories they imply exceed --max-entries=2000"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := t.TempDir()
			archive := filepath.Join(d, "image.tar")
			if err := imagetest.WriteDockerArchive(archive, tc.layer); err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(d, "out.eif")
			args := append([]string{"build-enclave", "--docker-archive", archive, "--output-file", out, "--init", initBin}, tc.flags...)
			cmd := exec.Command(bin, args...)
			cmd.Env = append(os.Environ(), "CLOISTER_BLOBS="+filepath.Join(d, "no-blobs"), "TMPDIR="+d)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 {
				t.Fatalf("build-enclave: %v, want exit status 1\n%s", err, stderr.String())
			}
			msg := stderr.String()
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("stderr %q does not say %q", msg, w)
				}
			}
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Errorf("output file: %v, want none", err)
			}
			for _, pattern := range []string{"cloister-build-*", ".out.eif.tmp*"} {
				if left, _ := filepath.Glob(filepath.Join(d, pattern)); len(left) != 0 {
					t.Errorf("left behind: %v", left)
				}
			}
			maxRSS := cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss << 10
			t.Logf("%s; peak memory %d MiB", strings.TrimSpace(msg), maxRSS>>20)
			if maxRSS > 256*mib {
				t.Errorf("peak memory %d MiB, want at most 256 MiB", maxRSS>>20)
			}
		})
	}
}

// TestByteSizeFlag checks the --max-image-size syntax.
func TestByteSizeFlag(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		str  string
	}{
		{"4GiB", 4 << 30, "4GiB"},
		{"4G", 4 << 30, "4GiB"},
		{"512M", 512 << 20, "512MiB"},
		{"1536MiB", 1536 << 20, "1536MiB"},
		{"3K", 3 << 10, "3KiB"},
		{"1000", 1000, "1000"},
		{"2TiB", 2 << 40, "2TiB"},
	}
	for _, tc := range tests {
		var b byteSize
		if err := b.Set(tc.in); err != nil || int64(b) != tc.want || b.String() != tc.str {
			t.Errorf("Set(%q) = %d (%s), %v; want %d (%s)", tc.in, int64(b), b, err, tc.want, tc.str)
		}
	}
	for _, bad := range []string{"", "0", "-1G", "1.5G", "G", "1GB", "9999999999T"} {
		var b byteSize
		if err := b.Set(bad); err == nil {
			t.Errorf("Set(%q) = %d, want an error", bad, int64(b))
		}
	}
}
