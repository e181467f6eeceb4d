package clidoc

import (
	"os/exec"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/internal/testenv"
)

func TestRenderMan(t *testing.T) {
	pages := RenderMan(tree(), ManOptions{Options: Options{HomeDir: "/home/u"}, Source: "tool 1.0", Date: "2026-01-02"})
	var names []string
	for n := range pages {
		names = append(names, n)
	}
	sort.Strings(names)
	if d := cmp.Diff([]string{"tool-build.1", "tool-kms-serve.1", "tool-kms.1", "tool.1"}, names); d != "" {
		t.Fatalf("pages (-want +got):\n%s", d)
	}
	build := string(pages["tool-build.1"])
	for _, want := range []string{
		`.TH "TOOL\-BUILD" 1 "2026\-01\-02" "tool 1.0" "Cloister Manual"`,
		"tool\\-build \\- Build an image\n",
		".B tool build\n[\\fIflags\\fR]\n",
		// Help text: paragraphs, and indented lines kept verbatim.
		".PP\nbuild writes an *image*.\n.PP\nFor example:\n.PP\n.RS\n.nf\ntool build \\-\\-out x.eif \\e\n\\-\\-kernel k\n.fi\n.RE\n",
		".TP\n\\fB\\-\\-state\\fR \\fIstring\\fR\nstate directory (default \"~/.local/state\")\n",
		".SH OPTIONS INHERITED FROM PARENT COMMANDS\n",
		".SH SEE ALSO\n.BR tool (1)\n",
	} {
		if !strings.Contains(build, want) {
			t.Errorf("tool-build.1 lacks %q:\n%s", want, build)
		}
	}
	if strings.Contains(build, "secret") {
		t.Error("a hidden flag is documented")
	}
}

// TestManPagesFormat formats every page with man (groff) and fails on any
// warning, as lintian's manual-page check does.
func TestManPagesFormat(t *testing.T) {
	man := testenv.LookPath(t, "man", "apt-get install -y man-db groff-base")
	pages := RenderMan(tree(), ManOptions{Options: Options{HomeDir: "/home/u"}, Source: "tool 1.0", Date: "2026-01-02"})
	for _, name := range sortedNames(pages) {
		cmd := exec.Command(man, "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", "-")
		cmd.Stdin = strings.NewReader(string(pages[name]))
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil || stderr.Len() > 0 {
			t.Errorf("man %s: %v\n%s", name, err, stderr.String())
		}
	}
}

func TestRoffLine(t *testing.T) {
	for in, want := range map[string]string{
		".hidden":    `\&.hidden`,
		"'quote":     `\&'quote`,
		`a\b-c`:      `a\eb\-c`,
		"plain text": "plain text",
	} {
		if got := roffLine(in); got != want {
			t.Errorf("roffLine(%q) = %q, want %q", in, got, want)
		}
	}
}
