package wellknown

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestDocumentedPortsMatchConstants reads every Markdown file and Go
// comment in the repository: wherever the NSM port is written in hex
// (0x4E534D, "NSM" in ASCII), the decimal port written beside it must be
// NSMPort. The docs once gave a port off by 4096 (512 9037) for that hex
// value, and a program written against them could not reach the emulated NSM.
func TestDocumentedPortsMatchConstants(t *testing.T) {
	root := repoRoot(t)
	hex := regexp.MustCompile(`(?i)0x4E534D`)
	decimal := regexp.MustCompile(`\b5\d{6}\b`)
	want := strconv.Itoa(NSMPort)
	var checked int
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch d.Name() {
			case ".git", "node_modules", "testdata":
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".md") && !strings.HasSuffix(path, ".go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for i, line := range strings.Split(string(b), "\n") {
			if !hex.MatchString(line) {
				continue
			}
			checked++
			for _, n := range decimal.FindAllString(line, -1) {
				if n != want {
					rel, _ := filepath.Rel(root, path)
					t.Errorf("%s:%d gives %s beside 0x4E534D; the NSM port is %s", rel, i+1, n, want)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked == 0 {
		t.Fatal("no line mentions 0x4E534D: the test found none of the documentation")
	}
}

// repoRoot is the module root above this package.
func repoRoot(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for d := wd; d != filepath.Dir(d); d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
	}
	t.Fatal("no go.mod above " + wd)
	return ""
}
