package parenttest

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/cloister/cloister/internal/testenv"
)

// DebianPython is the interpreter [PythonRootFS] puts into images:
// Debian's, by absolute path, never one found on PATH (pyenv and the like).
const DebianPython = "/usr/bin/python3"

// PythonRootFS returns a root file system directory that runs script with
// Debian's python3 from this host: the interpreter (/usr/bin/python3, a
// link to the versioned binary), the shared libraries ldd lists for it and
// for any extension module it loads, and the files of the standard library
// that the interpreter's start-up and the script's top-level imports load
// (what sys.modules names after importing them on the host). The script
// itself is not copied. The directory is cached under the user's cache
// directory, keyed by the SHA-256 of every file's path and contents, so a
// second call (and a second test run) reuses it; the same host files give
// the same tree, and build-enclave then gives the same image.
func PythonRootFS(t testing.TB, script string) string {
	t.Helper()
	testenv.RequireFile(t, DebianPython, "apt-get install python3")
	ldd := testenv.LookPath(t, "ldd", "apt-get install libc-bin")
	mods, err := scriptImports(script)
	if err != nil {
		t.Fatal(err)
	}
	exe, files, err := pythonFiles(mods)
	if err != nil {
		t.Fatal(err)
	}
	libs, err := sharedLibraries(ldd, append([]string{exe}, soFiles(files)...))
	if err != nil {
		t.Fatal(err)
	}
	all := append(append(append([]string{}, exe), files...), libs...)
	sort.Strings(all)
	all = compactStrings(all)

	h := sha256.New()
	fmt.Fprintf(h, "cloister python rootfs v1\n%s -> %s\n", DebianPython, exe)
	for _, f := range all {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(h, "%s %d %x\n", f, len(b), sha256.Sum256(b))
	}
	key := hex.EncodeToString(h.Sum(nil))[:20]
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "cloister-test", "python-"+key)
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err == nil {
		return dir
	}
	tmp := fmt.Sprintf("%s.tmp-%d", dir, os.Getpid())
	_ = os.RemoveAll(tmp)
	for _, f := range all {
		if err := copyFile(f, filepath.Join(tmp, f)); err != nil {
			t.Fatal(err)
		}
	}
	// /usr/bin/python3 -> python3.x, as Debian has it; lib-dynload exists
	// even when nothing in it is needed (the interpreter looks for it).
	if err := os.Symlink(filepath.Base(exe), filepath.Join(tmp, DebianPython)); err != nil && !os.IsExist(err) {
		t.Fatal(err)
	}
	stdlib := filepath.Join("/usr/lib", filepath.Base(exe))
	if err := os.MkdirAll(filepath.Join(tmp, stdlib, "lib-dynload"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tmp, ".complete"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_ = os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

var importLine = regexp.MustCompile(`^(?:import|from)\s+([A-Za-z_][\w.]*)`)

// scriptImports returns the modules script imports at its top level.
func scriptImports(script string) ([]string, error) {
	f, err := os.Open(script)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var mods []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if m := importLine.FindStringSubmatch(sc.Text()); m != nil {
			mods = append(mods, m[1])
		}
	}
	return mods, sc.Err()
}

// pythonProbe imports the modules named in argv and prints the
// interpreter's real path and the real path of every loaded module file.
const pythonProbe = `import importlib, os, sys
for m in sys.argv[1:]:
    importlib.import_module(m)
print("exe", os.path.realpath(sys.executable))
for f in sorted({os.path.realpath(m.__file__) for m in list(sys.modules.values()) if getattr(m, "__file__", None)}):
    print("file", f)
`

func pythonFiles(mods []string) (string, []string, error) {
	out, err := exec.Command(DebianPython, append([]string{"-c", pythonProbe}, mods...)...).Output()
	if err != nil {
		return "", nil, fmt.Errorf("parenttest: %s cannot import %v: %w", DebianPython, mods, err)
	}
	var exe string
	var files []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		k, v, _ := strings.Cut(line, " ")
		switch k {
		case "exe":
			exe = v
		case "file":
			files = append(files, v)
		}
	}
	if exe == "" {
		return "", nil, fmt.Errorf("parenttest: %s did not say where it is", DebianPython)
	}
	return exe, files, nil
}

func soFiles(files []string) []string {
	var out []string
	for _, f := range files {
		if strings.HasSuffix(f, ".so") {
			out = append(out, f)
		}
	}
	return out
}

var lddLine = regexp.MustCompile(`(?:=>\s+)?(/\S+)\s+\(0x`)

// sharedLibraries returns the libraries (and the dynamic loader) ldd lists
// for bins, by the paths the loader finds them at.
func sharedLibraries(ldd string, bins []string) ([]string, error) {
	var libs []string
	for _, b := range bins {
		out, err := exec.Command(ldd, b).Output()
		if err != nil {
			return nil, fmt.Errorf("parenttest: ldd %s: %w", b, err)
		}
		for _, line := range strings.Split(string(out), "\n") {
			if m := lddLine.FindStringSubmatch(line); m != nil {
				libs = append(libs, m[1])
			}
		}
	}
	return libs, nil
}

func compactStrings(s []string) []string {
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

// copyFile copies src (following links) to dst with src's permission bits.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, fi.Mode().Perm())
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// copyTree copies the directory src into dst: directories, regular files
// and symbolic links, with their permission bits.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(target, 0o755)
		case d.Type()&fs.ModeSymlink != 0:
			l, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(l, target)
		case d.Type().IsRegular():
			if rel == ".complete" {
				return nil
			}
			return copyFile(p, target)
		}
		return fmt.Errorf("parenttest: %s: unsupported file type %v", p, d.Type())
	})
}
