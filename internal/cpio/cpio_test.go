package cpio

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cloister/cloister/internal/testenv"
	"github.com/google/go-cmp/cmp"
)

type entry struct {
	Header
	Data string
}

func readAll(t testing.TB, b []byte) []entry {
	t.Helper()
	r := NewReader(bytes.NewReader(b), Limits{})
	var out []entry
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		d, err := io.ReadAll(r)
		if err != nil {
			t.Fatalf("read %s: %v", h.Name, err)
		}
		out = append(out, entry{*h, string(d)})
	}
	return out
}

func strFile(p string, mode uint32, s string) File {
	return File{Path: p, Mode: TypeReg | mode, Size: int64(len(s)),
		Open: func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(s)), nil }}
}

func TestWriterExactBytes(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	if err := w.WriteHeader(&Header{Name: "a", Ino: 1, Mode: TypeReg | 0o644, Nlink: 1, Mtime: 0x10, Size: 3}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("xyz")); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	want := "070701" + "00000001" + "000081A4" + "00000000" + "00000000" + "00000001" + "00000010" + "00000003" +
		"00000000" + "00000000" + "00000000" + "00000000" + "00000002" + "00000000" + "a\x00" + // 112 bytes: pad to 112
		"xyz\x00" +
		"070701" + "00000000" + "00000000" + "00000000" + "00000000" + "00000001" + "00000000" + "00000000" +
		"00000000" + "00000000" + "00000000" + "00000000" + "0000000B" + "00000000" + "TRAILER!!!\x00" + "\x00\x00\x00"
	if diff := cmp.Diff(want, buf.String()); diff != "" {
		t.Fatalf("bytes (-want +got):\n%s", diff)
	}
	if buf.Len()%4 != 0 {
		t.Fatalf("length %d not a multiple of 4", buf.Len())
	}
}

func TestWriterErrors(t *testing.T) {
	w := NewWriter(io.Discard)
	if err := w.WriteHeader(&Header{Name: ""}); !errors.Is(err, ErrInvalidHeader) {
		t.Errorf("empty name: %v", err)
	}
	if err := w.WriteHeader(&Header{Name: "a", Size: 1 << 32}); !errors.Is(err, ErrInvalidHeader) {
		t.Errorf("huge size: %v", err)
	}
	if err := w.WriteHeader(&Header{Name: "a", Mode: TypeReg, Size: 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("abc")); !errors.Is(err, ErrWriteTooLong) {
		t.Errorf("too long: %v", err)
	}
	if _, err := w.Write([]byte("a")); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); !errors.Is(err, ErrShortWrite) {
		t.Errorf("short: %v", err)
	}
}

func TestWriteFilesLayout(t *testing.T) {
	mt := time.Unix(1700000000, 0)
	files := []File{
		strFile("d/z", 0o600, "last"),
		{Path: "d/link", Mode: TypeSymlink | 0o777, Target: "../target"},
		{Path: "d", Mode: TypeDir | 0o755, UID: 5, GID: 6},
		{Path: "d/sub", Mode: TypeDir | 0o700},
		strFile("d/hard1", 0o644, "shared content"),
		{Path: "d/zhard2", Mode: TypeReg | 0o644, Link: "d/hard1"},
		{Path: "d/ahard0", Mode: TypeReg | 0o644, Link: "d/hard1"},
		{Path: "dev", Mode: TypeDir | 0o755},
		{Path: "dev/console", Mode: TypeChar | 0o600, RDevMajor: 5, RDevMinor: 1},
		{Path: "dev/sda", Mode: TypeBlock | 0o600, RDevMajor: 8},
		{Path: "fifo", Mode: TypeFifo | 0o644},
		strFile("empty", 0o644, ""),
	}
	var buf bytes.Buffer
	w := NewWriter(&buf)
	if err := WriteFiles(w, files, FilesOptions{Mtime: mt, FirstIno: 100}); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	const m = 1700000000
	want := []entry{
		{Header{Name: "d", Ino: 100, Mode: TypeDir | 0o755, UID: 5, GID: 6, Nlink: 3, Mtime: m}, ""},
		{Header{Name: "d/ahard0", Ino: 101, Mode: TypeReg | 0o644, Nlink: 3, Mtime: m}, ""},
		{Header{Name: "d/hard1", Ino: 101, Mode: TypeReg | 0o644, Nlink: 3, Mtime: m}, ""},
		{Header{Name: "d/link", Ino: 102, Mode: TypeSymlink | 0o777, Nlink: 1, Mtime: m, Size: 9}, "../target"},
		{Header{Name: "d/sub", Ino: 103, Mode: TypeDir | 0o700, Nlink: 2, Mtime: m}, ""},
		{Header{Name: "d/z", Ino: 104, Mode: TypeReg | 0o600, Nlink: 1, Mtime: m, Size: 4}, "last"},
		{Header{Name: "d/zhard2", Ino: 101, Mode: TypeReg | 0o644, Nlink: 3, Mtime: m, Size: 14}, "shared content"},
		{Header{Name: "dev", Ino: 105, Mode: TypeDir | 0o755, Nlink: 2, Mtime: m}, ""},
		{Header{Name: "dev/console", Ino: 106, Mode: TypeChar | 0o600, Nlink: 1, Mtime: m, RDevMajor: 5, RDevMinor: 1}, ""},
		{Header{Name: "dev/sda", Ino: 107, Mode: TypeBlock | 0o600, Nlink: 1, Mtime: m, RDevMajor: 8}, ""},
		{Header{Name: "empty", Ino: 108, Mode: TypeReg | 0o644, Nlink: 1, Mtime: m}, ""},
		{Header{Name: "fifo", Ino: 109, Mode: TypeFifo | 0o644, Nlink: 1, Mtime: m}, ""},
	}
	if diff := cmp.Diff(want, readAll(t, buf.Bytes())); diff != "" {
		t.Fatalf("entries (-want +got):\n%s", diff)
	}
}

func TestWriteFilesErrors(t *testing.T) {
	tests := []struct {
		name  string
		files []File
	}{
		{"absolute", []File{{Path: "/a", Mode: TypeDir}}},
		{"dotdot", []File{{Path: "a/../b", Mode: TypeDir}}},
		{"dotdot prefix", []File{{Path: "../b", Mode: TypeDir}}},
		{"unclean", []File{{Path: "a//b", Mode: TypeDir}}},
		{"duplicate", []File{{Path: "a", Mode: TypeDir}, {Path: "a", Mode: TypeDir}}},
		{"parent not dir", []File{strFile("a", 0o644, ""), {Path: "a/b", Mode: TypeDir}}},
		{"link missing", []File{{Path: "a", Mode: TypeReg, Link: "b"}}},
		{"link to dir", []File{{Path: "b", Mode: TypeDir}, {Path: "a", Mode: TypeReg, Link: "b"}}},
		{"short content", []File{{Path: "a", Mode: TypeReg, Size: 5, Open: func() (io.ReadCloser, error) {
			return io.NopCloser(strings.NewReader("abc")), nil
		}}}},
		{"long content", []File{{Path: "a", Mode: TypeReg, Size: 2, Open: func() (io.ReadCloser, error) {
			return io.NopCloser(strings.NewReader("abc")), nil
		}}}},
		{"no content", []File{{Path: "a", Mode: TypeReg, Size: 2}}},
		{"bad type", []File{{Path: "a", Mode: 0o777}}},
		{"trailer name", []File{{Path: TrailerName, Mode: TypeDir}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := WriteFiles(NewWriter(io.Discard), tc.files, FilesOptions{}); err == nil {
				t.Fatal("WriteFiles succeeded")
			}
		})
	}
}

func makeTree(t *testing.T, dir string, reverse bool) {
	t.Helper()
	steps := []func(){
		func() { must(t, os.MkdirAll(filepath.Join(dir, "etc/sub"), 0o755)) },
		func() {
			must(t, os.WriteFile(filepath.Join(dir, "etc/passwd"), []byte("root:x:0:0::/root:/bin/sh\n"), 0o644))
		},
		func() { must(t, os.WriteFile(filepath.Join(dir, "bin"), []byte("#!/bin/sh\n"), 0o755)) },
		func() { must(t, os.Symlink("etc/passwd", filepath.Join(dir, "plink"))) },
		func() { must(t, os.Link(filepath.Join(dir, "etc/passwd"), filepath.Join(dir, "etc/sub/hl"))) },
	}
	if reverse {
		// Create the independent entries in another order (the hard link
		// needs its target first).
		steps = []func(){steps[0], steps[3], steps[2], steps[1], steps[4]}
	}
	for _, s := range steps {
		s()
	}
	must(t, os.Chmod(filepath.Join(dir, "bin"), 0o755|os.ModeSetuid))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestAddTreeReproducible(t *testing.T) {
	var outs [][]byte
	for _, rev := range []bool{false, true} {
		dir := t.TempDir()
		makeTree(t, dir, rev)
		// Different timestamps on disk must not matter.
		must(t, os.Chtimes(filepath.Join(dir, "bin"), time.Now(), time.Unix(int64(len(outs))*1000, 0)))
		var buf bytes.Buffer
		w := NewWriter(&buf)
		if err := AddTree(w, dir, TreeOptions{Prefix: "rootfs", Mtime: time.Unix(42, 0)}); err != nil {
			t.Fatal(err)
		}
		must(t, w.Close())
		outs = append(outs, buf.Bytes())
	}
	if !bytes.Equal(outs[0], outs[1]) {
		t.Fatal("same tree created in a different order gave different archives")
	}
	got := readAll(t, outs[0])
	var names []string
	for _, e := range got {
		names = append(names, e.Name)
		if e.UID != 0 || e.GID != 0 || e.Mtime != 42 {
			t.Errorf("%s: uid %d gid %d mtime %d", e.Name, e.UID, e.GID, e.Mtime)
		}
		switch e.Name {
		case "rootfs/bin":
			if e.Mode != TypeReg|0o4755 {
				t.Errorf("bin mode %#o", e.Mode)
			}
		case "rootfs/plink":
			if e.Data != "etc/passwd" {
				t.Errorf("symlink target %q", e.Data)
			}
		case "rootfs/etc/passwd":
			if e.Nlink != 2 || e.Size != 0 {
				t.Errorf("first hard link: nlink %d size %d", e.Nlink, e.Size)
			}
		case "rootfs/etc/sub/hl":
			if e.Nlink != 2 || !strings.HasPrefix(e.Data, "root:") {
				t.Errorf("last hard link: nlink %d data %q", e.Nlink, e.Data)
			}
		}
	}
	wantNames := []string{"rootfs", "rootfs/bin", "rootfs/etc", "rootfs/etc/passwd", "rootfs/etc/sub", "rootfs/etc/sub/hl", "rootfs/plink"}
	if diff := cmp.Diff(wantNames, names); diff != "" {
		t.Fatalf("names (-want +got):\n%s", diff)
	}
}

// TestGNUCpioExtracts checks the archive against an independent
// implementation: GNU cpio must extract it with content, modes and hard links.
func TestGNUCpioExtracts(t *testing.T) {
	cpioBin := testenv.LookPath(t, "cpio", "apt-get install cpio")
	src := t.TempDir()
	makeTree(t, src, false)
	var buf bytes.Buffer
	w := NewWriter(&buf)
	must(t, AddTree(w, src, TreeOptions{Mtime: time.Unix(1000, 0)}))
	must(t, w.Close())
	dst := t.TempDir()
	cmd := exec.Command(cpioBin, "-i", "-d", "-m", "--no-absolute-filenames", "--quiet")
	cmd.Dir = dst
	cmd.Stdin = bytes.NewReader(buf.Bytes())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -i: %v\n%s", err, out)
	}
	a, err := os.Stat(filepath.Join(dst, "etc/passwd"))
	must(t, err)
	b, err := os.Stat(filepath.Join(dst, "etc/sub/hl"))
	must(t, err)
	if !os.SameFile(a, b) {
		t.Error("hard link not restored as one inode")
	}
	data, err := os.ReadFile(filepath.Join(dst, "etc/passwd"))
	must(t, err)
	if string(data) != "root:x:0:0::/root:/bin/sh\n" {
		t.Errorf("content %q", data)
	}
	if tgt, err := os.Readlink(filepath.Join(dst, "plink")); err != nil || tgt != "etc/passwd" {
		t.Errorf("symlink: %q %v", tgt, err)
	}
	fi, err := os.Stat(filepath.Join(dst, "bin"))
	must(t, err)
	if fi.Mode().Perm() != 0o755 || fi.Mode()&os.ModeSetuid == 0 || fi.ModTime().Unix() != 1000 {
		t.Errorf("bin: mode %v mtime %v", fi.Mode(), fi.ModTime())
	}
}

// TestReadGNUCpio reads an archive produced by GNU cpio.
func TestReadGNUCpio(t *testing.T) {
	cpioBin := testenv.LookPath(t, "cpio", "apt-get install cpio")
	src := t.TempDir()
	makeTree(t, src, false)
	cmd := exec.Command(cpioBin, "-o", "-H", "newc", "--quiet")
	cmd.Dir = src
	cmd.Stdin = strings.NewReader("bin\netc\netc/passwd\netc/sub\netc/sub/hl\nplink\n")
	out, err := cmd.Output()
	must(t, err)
	got := readAll(t, out)
	byName := map[string]entry{}
	for _, e := range got {
		byName[e.Name] = e
	}
	if len(byName) != 6 {
		t.Fatalf("%d entries: %v", len(got), got)
	}
	if e := byName["etc/sub/hl"]; e.Data == "" || e.Nlink != 2 || e.Ino != byName["etc/passwd"].Ino {
		t.Errorf("hard link entry %+v", e)
	}
	if e := byName["plink"]; e.Data != "etc/passwd" {
		t.Errorf("symlink %+v", e)
	}
}

func TestReaderRejects(t *testing.T) {
	valid := func() []byte {
		var buf bytes.Buffer
		w := NewWriter(&buf)
		must(t, WriteFiles(w, []File{strFile("abc", 0o644, "hello")}, FilesOptions{}))
		must(t, w.Close())
		return buf.Bytes()
	}
	mut := func(f func(b []byte) []byte) []byte { return f(valid()) }
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrFormat},
		{"bad magic", mut(func(b []byte) []byte { b[5] = '3'; return b }), ErrFormat},
		{"non-hex", mut(func(b []byte) []byte { b[10] = 'g'; return b }), ErrFormat},
		{"huge name", mut(func(b []byte) []byte { copy(b[94:], "FFFFFFFF"); return b }), ErrLimit},
		{"name without NUL", mut(func(b []byte) []byte { copy(b[94:], "00000003"); return b }), ErrFormat},
		{"truncated data", mut(func(b []byte) []byte { return b[:116] }), ErrFormat},
		{"no trailer", mut(func(b []byte) []byte { return b[:124] }), ErrFormat},
		{"dir with data", mut(func(b []byte) []byte { copy(b[14:], "000041ED"); return b }), ErrFormat},
		{"check without crc magic", mut(func(b []byte) []byte { copy(b[102:], "00000001"); return b }), ErrFormat},
		{"bad crc", mut(func(b []byte) []byte { b[5] = '2'; copy(b[102:], "00000001"); return b }), ErrFormat},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := NewReader(bytes.NewReader(tc.in), Limits{})
			var err error
			for err == nil {
				_, err = r.Next()
				if err == nil {
					_, err = io.Copy(io.Discard, r)
				}
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestReaderCRC(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	must(t, w.WriteHeader(&Header{Name: "a", Mode: TypeReg | 0o644, Nlink: 1, Size: 2, Check: 'h' + 'i'}))
	_, err := w.Write([]byte("hi"))
	must(t, err)
	must(t, w.Close())
	if got := readAll(t, buf.Bytes()); len(got) != 1 || got[0].Data != "hi" {
		t.Fatalf("got %+v", got)
	}
}

func TestReaderLimits(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	must(t, WriteFiles(w, []File{strFile("a", 0o644, "0123456789"), strFile("b", 0o644, "")}, FilesOptions{}))
	must(t, w.Close())
	r := NewReader(bytes.NewReader(buf.Bytes()), Limits{MaxFileSize: 5})
	if _, err := r.Next(); !errors.Is(err, ErrLimit) {
		t.Fatalf("size limit: %v", err)
	}
	r = NewReader(bytes.NewReader(buf.Bytes()), Limits{MaxEntries: 1})
	if _, err := r.Next(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Next(); !errors.Is(err, ErrLimit) {
		t.Fatalf("entries limit: %v", err)
	}
}

func FuzzReader(f *testing.F) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	_ = WriteFiles(w, []File{
		{Path: "d", Mode: TypeDir | 0o755},
		strFile("d/f", 0o644, "data"),
		{Path: "d/l", Mode: TypeSymlink | 0o777, Target: "f"},
		{Path: "d/h", Mode: TypeReg | 0o644, Link: "d/f"},
	}, FilesOptions{})
	_ = w.Close()
	f.Add(buf.Bytes())
	f.Add([]byte("070702"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := NewReader(bytes.NewReader(b), Limits{MaxFileSize: 1 << 20})
		for i := 0; i < 1000; i++ {
			h, err := r.Next()
			if err != nil {
				if h != nil {
					t.Fatal("header together with error")
				}
				return
			}
			if _, err := io.Copy(io.Discard, r); err != nil {
				return
			}
		}
	})
}

func BenchmarkWriteFiles(b *testing.B) {
	data := bytes.Repeat([]byte("x"), 1<<20)
	files := make([]File, 64)
	for i := range files {
		files[i] = File{Path: "f" + string(rune('a'+i%26)) + string(rune('a'+i/26)), Mode: TypeReg | 0o644, Size: int64(len(data)),
			Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil }}
	}
	b.SetBytes(int64(len(files) * len(data)))
	for b.Loop() {
		w := NewWriter(io.Discard)
		if err := WriteFiles(w, files, FilesOptions{}); err != nil {
			b.Fatal(err)
		}
		_ = w.Close()
	}
}

// TestEntrySize checks EntrySize against what the Writer writes, and the
// name-length and size limits at their edges.
func TestEntrySize(t *testing.T) {
	for _, nameLen := range []int{1, 2, 3, 4, 5, 100, MaxNameLen} {
		for _, size := range []int64{0, 1, 2, 3, 4, 5, 1000} {
			var buf bytes.Buffer
			w := NewWriter(&buf)
			if err := w.WriteHeader(&Header{Name: strings.Repeat("n", nameLen), Mode: TypeReg | 0o644, Size: size}); err != nil {
				t.Fatal(err)
			}
			if _, err := w.Write(make([]byte, size)); err != nil {
				t.Fatal(err)
			}
			before := w.Written()
			if err := w.Close(); err != nil { // pads the entry, then writes the trailer
				t.Fatal(err)
			}
			padded := before + (4-size%4)%4
			if got := EntrySize(nameLen, size); got != padded {
				t.Errorf("EntrySize(%d, %d) = %d, the writer wrote %d", nameLen, size, got, padded)
			}
		}
	}
	w := NewWriter(io.Discard)
	if err := w.WriteHeader(&Header{Name: strings.Repeat("n", MaxNameLen+1), Mode: TypeReg}); !errors.Is(err, ErrInvalidHeader) {
		t.Errorf("name of MaxNameLen+1 bytes: %v, want ErrInvalidHeader", err)
	}
	if err := w.WriteHeader(&Header{Name: "big", Mode: TypeReg, Size: MaxFileSize + 1}); !errors.Is(err, ErrInvalidHeader) {
		t.Errorf("size MaxFileSize+1: %v, want ErrInvalidHeader", err)
	}
}
