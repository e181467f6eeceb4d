package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestExplain(t *testing.T) {
	var out bytes.Buffer
	root := newRootCmd()
	root.SetOut(&out)
	root.SetArgs([]string{"explain", "--error-code", "e26"})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "E26: ") || !strings.Contains(out.String(), "4 times") {
		t.Errorf("explain E26: %q", out.String())
	}
	root = newRootCmd()
	root.SetOut(&out)
	root.SetArgs([]string{"explain", "--error-code", "E99"})
	var ee *exitError
	if err := root.Execute(); !errors.As(err, &ee) || ee.code != 1 {
		t.Errorf("unknown code: %v", err)
	}
}

// TestExplainCoversDaemonCodes fails when the daemon reports a nitro-cli
// code that explain does not know.
func TestExplainCoversDaemonCodes(t *testing.T) {
	re := regexp.MustCompile(`"(E\d\d)"`)
	for _, dir := range []string{"../../parent/daemon", "../../parent"} {
		files, _ := filepath.Glob(filepath.Join(dir, "*.go"))
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range re.FindAllStringSubmatch(string(b), -1) {
				if _, ok := errorCodes[m[1]]; !ok {
					t.Errorf("%s reports %s, which explain does not know", f, m[1])
				}
			}
		}
	}
}
