//go:build linux

package sandbox

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/internal/cpio"
)

func TestMapPath(t *testing.T) {
	for _, tc := range []struct {
		name, rel string
		skip      bool
		err       string
	}{
		{name: "init", rel: ".cloister/init"},
		{name: "dev", rel: ".cloister/dev"},
		{name: "cmd", rel: ".cloister/cmd"},
		{name: "modules/order", rel: ".cloister/modules/order"},
		{name: "rootfs", skip: true},
		{name: ".", skip: true},
		{name: "./rootfs/", skip: true},
		{name: "rootfs/bin/sh", rel: "bin/sh"},
		{name: "./rootfs/etc//passwd", rel: "etc/passwd"},
		{name: "/rootfs/etc", rel: "etc"},
		{name: "rootfs/a/../b", rel: "b"},
		{name: "..", err: "leaves the archive"},
		{name: "../etc/passwd", err: "leaves the archive"},
		{name: "rootfs/../../x", err: "leaves the archive"},
		{name: "rootfs/.cloister", err: "reserved"},
		{name: "rootfs/.cloister/init", err: "reserved"},
		{name: "rootfs/x/../.cloister/init", err: "reserved"},
	} {
		rel, skip, err := mapPath(tc.name)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("mapPath(%q) error = %v, want %q", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil || rel != tc.rel || skip != tc.skip {
			t.Errorf("mapPath(%q) = %q, %v, %v; want %q, %v", tc.name, rel, skip, err, tc.rel, tc.skip)
		}
	}
}

// archive writes raw headers (not WriteFiles, which refuses hostile
// names) into a newc archive.
func archive(t testing.TB, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := cpio.NewWriter(&buf)
	for i, e := range entries {
		h := &cpio.Header{Name: e.name, Mode: e.mode, UID: uint32(os.Getuid()), GID: uint32(os.Getgid()),
			Nlink: 1, Size: int64(len(e.data)), Ino: uint32(i + 1)}
		if e.nlink > 0 {
			h.Nlink, h.Ino = e.nlink, e.ino
		}
		if err := w.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write([]byte(e.data)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

type entry struct {
	name, data string
	mode       uint32
	nlink, ino uint32
}

func reg(name, data string, perm uint32) entry {
	return entry{name: name, data: data, mode: cpio.TypeReg | perm}
}
func dirE(name string, perm uint32) entry { return entry{name: name, mode: cpio.TypeDir | perm} }
func symlinkE(name, target string) entry {
	return entry{name: name, data: target, mode: cpio.TypeSymlink | 0o777}
}

// tree lists dir as path → mode and content (files) or target (symlinks).
func tree(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		v := fi.Mode().String()
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			v += " -> " + target
		case fi.Mode().IsRegular():
			b, _ := os.ReadFile(p)
			v += " " + string(b)
		}
		out[rel] = v
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func unpackAll(t *testing.T, dir string, archives ...[]byte) error {
	t.Helper()
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	if err := root.Mkdir(".cloister", 0o755); err != nil {
		t.Fatal(err)
	}
	for _, a := range archives {
		if err := unpack(root, bytes.NewReader(a)); err != nil {
			return err
		}
	}
	return nil
}

func TestUnpackLayout(t *testing.T) {
	old := umask(0)
	defer umask(old)
	dir := t.TempDir()
	bootstrap := archive(t, reg("init", "INIT", 0o755), dirE("dev", 0o755),
		entry{name: "dev/console", mode: cpio.TypeChar | 0o600}, entry{name: "fifo", mode: cpio.TypeFifo | 0o644})
	customer := archive(t,
		dirE("rootfs", 0o755), dirE("rootfs/usr", 0o755), dirE("rootfs/usr/bin", 0o755),
		symlinkE("rootfs/bin", "usr/bin"),
		reg("rootfs/usr/bin/prog", "PROG", 0o4755),
		dirE("rootfs/tmp", 0o1777),
		entry{name: "rootfs/usr/bin/a", mode: cpio.TypeReg | 0o644, nlink: 2, ino: 100},
		entry{name: "rootfs/usr/bin/b", mode: cpio.TypeReg | 0o644, nlink: 2, ino: 100, data: "SHARED"},
		reg("rootfs/bin/viaLink", "VIA", 0o600), // through an in-root symlink, as the kernel does
		reg("cmd", "/bin/prog\n", 0o644),
	)
	if err := unpackAll(t, dir, bootstrap, customer); err != nil {
		t.Fatalf("unpack: %v", err)
	}
	want := map[string]string{
		".cloister":       "drwxr-xr-x",
		".cloister/init":  "-rwxr-xr-x INIT",
		".cloister/dev":   "drwxr-xr-x",
		".cloister/cmd":   "-rw-r--r-- /bin/prog\n",
		"bin":             "Lrwxrwxrwx -> usr/bin",
		"usr":             "drwxr-xr-x",
		"usr/bin":         "drwxr-xr-x",
		"usr/bin/prog":    "urwxr-xr-x PROG",
		"usr/bin/a":       "-rw-r--r-- SHARED",
		"usr/bin/b":       "-rw-r--r-- SHARED",
		"usr/bin/viaLink": "-rw------- VIA",
		"tmp":             "dtrwxrwxrwx",
	}
	if diff := cmp.Diff(want, tree(t, dir)); diff != "" {
		t.Errorf("unpacked tree (-want +got):\n%s", diff)
	}
	a, _ := os.Stat(filepath.Join(dir, "usr/bin/a"))
	b, _ := os.Stat(filepath.Join(dir, "usr/bin/b"))
	if !os.SameFile(a, b) {
		t.Errorf("usr/bin/a and usr/bin/b are not hard links of each other")
	}
}

func TestUnpackNeverWritesOutside(t *testing.T) {
	outside := t.TempDir()
	victim := filepath.Join(outside, "victim")
	if err := os.WriteFile(victim, []byte("original"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		archives [][]byte
		wantErr  bool
	}{
		// A symlink at an entry's own name is replaced, not written through.
		{"file over symlink", [][]byte{
			archive(t, symlinkE("rootfs/x", victim)),
			archive(t, reg("rootfs/x", "pwned", 0o644)),
		}, false},
		{"dir over symlink", [][]byte{archive(t, symlinkE("rootfs/d", outside), dirE("rootfs/d", 0o755))}, false},
		{"symlink over symlink", [][]byte{archive(t, symlinkE("rootfs/s", outside), symlinkE("rootfs/s", "elsewhere"))}, false},
		// Paths through symlinks that leave the root are refused.
		{"absolute symlink dir", [][]byte{archive(t, symlinkE("rootfs/evil", outside), reg("rootfs/evil/victim", "pwned", 0o644))}, true},
		{"relative symlink dir", [][]byte{archive(t, symlinkE("rootfs/evil", "../../../../../../.."+outside), reg("rootfs/evil/victim", "pwned", 0o644))}, true},
		{"dot-dot name", [][]byte{archive(t, reg("../victim", "pwned", 0o644))}, true},
		{"hard link to outside", [][]byte{archive(t, symlinkE("rootfs/evil", outside),
			entry{name: "rootfs/evil/victim", mode: cpio.TypeReg | 0o644, nlink: 2, ino: 7},
			entry{name: "rootfs/h", mode: cpio.TypeReg | 0o644, nlink: 2, ino: 7, data: "pwned"})}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			err := unpackAll(t, dir, tc.archives...)
			if (err != nil) != tc.wantErr {
				t.Errorf("unpack error = %v, want error %v", err, tc.wantErr)
			}
			if b, _ := os.ReadFile(victim); string(b) != "original" {
				t.Fatalf("file outside the root was changed to %q", b)
			}
			ents, _ := os.ReadDir(outside)
			if len(ents) != 1 {
				t.Fatalf("files created outside the root: %v", ents)
			}
			if tc.name == "file over symlink" {
				if fi, err := os.Lstat(filepath.Join(dir, "x")); err != nil || !fi.Mode().IsRegular() {
					t.Errorf("x is %v, %v; want a regular file", fi, err)
				}
			}
		})
	}
}

func TestUnpackRejectsForeignOwner(t *testing.T) {
	var buf bytes.Buffer
	w := cpio.NewWriter(&buf)
	if err := w.WriteHeader(&cpio.Header{Name: "rootfs/x", Mode: cpio.TypeReg | 0o644, UID: 70000, Nlink: 1}); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	err := unpackAll(t, t.TempDir(), buf.Bytes())
	if err == nil || !strings.Contains(err.Error(), "outside the sandbox's ids") {
		t.Fatalf("unpack error = %v, want an owner error", err)
	}
}

func TestUnpackMalformed(t *testing.T) {
	good := archive(t, reg("init", "INIT", 0o755))
	for _, b := range [][]byte{good[:len(good)-20], []byte("not a cpio archive at all, definitely"), nil} {
		if err := unpackAll(t, t.TempDir(), b); err == nil {
			t.Errorf("unpack of %d malformed bytes succeeded", len(b))
		}
	}
}

// FuzzMapPath checks that no archive name maps outside the root or, from
// the customer's rootfs, into /.cloister.
func FuzzMapPath(f *testing.F) {
	for _, s := range []string{"init", "rootfs/bin/sh", "../x", "rootfs/../../x", "./rootfs/.cloister/init", "/", "rootfs//a/./b", ".rootfs/0", "././/rootfs/x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		rel, skip, err := mapPath(name)
		if err != nil || skip {
			return
		}
		if rel == "" || filepath.IsAbs(rel) || rel == ".." || strings.HasPrefix(rel, "../") || filepath.Clean(rel) != rel {
			t.Fatalf("mapPath(%q) = %q: not a clean path inside the root", name, rel)
		}
		if strings.HasPrefix(rel, ".cloister") && (rel == ".cloister" || strings.HasPrefix(rel, ".cloister/")) {
			// Only whole "./" and "/" prefixes are dropped from archive names
			// (".rootfs/x" is not under rootfs/).
			n := name
			for strings.HasPrefix(n, "./") || strings.HasPrefix(n, "/") {
				n = strings.TrimPrefix(strings.TrimPrefix(n, "./"), "/")
			}
			if strings.HasPrefix(filepath.Clean("/"+n), "/rootfs/") {
				t.Fatalf("mapPath(%q) = %q: customer rootfs entry in /.cloister", name, rel)
			}
		}
	})
}

// BenchmarkUnpack unpacks what a launch unpacks for a small Go enclave
// (a 4.5 MB init, a 2.5 MB program, a few directories and files) into a
// fresh tmpfs directory, as the launcher does into the enclave's root.
func BenchmarkUnpack(b *testing.B) {
	big := func(n int) string { return strings.Repeat("\x7fELF cloister ", n/14) }
	a := archive(b,
		dirE(".cloister", 0o755), reg(".cloister/init", big(4_500_000), 0o755),
		reg(".cloister/cmd", "/bin/app\x00", 0o644), reg(".cloister/env", "PATH=/bin\x00", 0o644),
		dirE("rootfs", 0o755), dirE("rootfs/bin", 0o755), reg("rootfs/bin/app", big(2_500_000), 0o755),
		dirE("rootfs/etc", 0o755), reg("rootfs/etc/hostname", "enclave\n", 0o644),
	)
	b.SetBytes(int64(len(a)))
	for b.Loop() {
		b.StopTimer()
		dir, err := os.MkdirTemp("/dev/shm", "unpack-bench-")
		if err != nil {
			b.Fatal(err)
		}
		root, err := os.OpenRoot(dir)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		err = unpack(root, bytes.NewReader(a))
		b.StopTimer()
		root.Close()
		os.RemoveAll(dir)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}
