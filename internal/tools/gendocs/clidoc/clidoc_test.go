package clidoc

import (
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/cobra"
)

func noop(*cobra.Command, []string) error { return nil }

// tree is a small command tree shaped like cloister's: a root with runnable
// subcommands, a group with children, a hidden and a deprecated command, and
// cobra's own help and completion commands.
func tree() *cobra.Command {
	root := &cobra.Command{Use: "tool", Short: "A tool", Long: "tool does <things>."}
	build := &cobra.Command{
		Use:     "build",
		Short:   "Build an image",
		Long:    "build writes an *image*.\n\nFor example:\n\n  tool build --out x.eif \\\n    --kernel k\n\nThen run it.",
		Example: "  tool build --out x.eif",
		RunE:    noop,
	}
	build.Flags().String("out", "", "output file (required)")
	build.Flags().String("state", "/home/u/.local/state", "state directory")
	build.Flags().String("other", "/home/user2/x", "not under the home directory")
	build.Flags().Bool("secret", false, "hidden flag")
	_ = build.Flags().MarkHidden("secret")
	group := &cobra.Command{Use: "kms", Short: "Key service"}
	serve := &cobra.Command{Use: "serve", Short: "Serve it", RunE: noop}
	group.AddCommand(serve)
	root.PersistentFlags().String("socket", "", "API socket")
	hidden := &cobra.Command{Use: "__monitor", Hidden: true, RunE: noop}
	old := &cobra.Command{Use: "old", Deprecated: "use build", RunE: noop}
	help := &cobra.Command{Use: "help", Short: "Help", RunE: noop}
	completion := &cobra.Command{Use: "completion", Short: "Completion", RunE: noop}
	root.AddCommand(group, build, hidden, old, help, completion)
	return root
}

func TestRenderPages(t *testing.T) {
	pages := Render(tree(), Options{HomeDir: "/home/u/"})
	var names []string
	for n := range pages {
		names = append(names, n)
	}
	sort.Strings(names)
	want := []string{"tool.md", "tool_build.md", "tool_kms.md", "tool_kms_serve.md"}
	if d := cmp.Diff(want, names); d != "" {
		t.Fatalf("page names (-want +got):\n%s", d)
	}

	wantBuild := "# tool build\n\n" +
		"Build an image\n\n" +
		"## Synopsis\n\n" +
		"build writes an \\*image\\*.\n\nFor example:\n\n" +
		"```\n  tool build --out x.eif \\\n    --kernel k\n```\n\nThen run it.\n\n" +
		"## Usage\n\n```\ntool build [flags]\n```\n\n" +
		"## Examples\n\n```\n  tool build --out x.eif\n```\n\n" +
		"## Options\n\n```\n" +
		"      --other string   not under the home directory (default \"/home/user2/x\")\n" +
		"      --out string     output file (required)\n" +
		"      --state string   state directory (default \"~/.local/state\")\n" +
		"```\n\n" +
		"## Options inherited from parent commands\n\n```\n" +
		"      --socket string   API socket\n" +
		"```\n\n" +
		"## See also\n\n* [tool](tool.md) — A tool\n"
	if d := cmp.Diff(wantBuild, string(pages["tool_build.md"])); d != "" {
		t.Errorf("tool_build.md (-want +got):\n%s", d)
	}

	wantRoot := "# tool\n\nA tool\n\n## Synopsis\n\ntool does \\<things\\>.\n\n" +
		"## Options\n\n```\n      --socket string   API socket\n```\n\n" +
		"## See also\n\n" +
		"* [tool build](tool_build.md) — Build an image\n" +
		"* [tool kms](tool_kms.md) — Key service\n"
	if d := cmp.Diff(wantRoot, string(pages["tool.md"])); d != "" {
		t.Errorf("tool.md (-want +got):\n%s", d)
	}
	if got := string(pages["tool_kms.md"]); strings.Contains(got, "## Usage") {
		t.Errorf("a command group without Run has a Usage section:\n%s", got)
	}
}

func TestRenderIsDeterministic(t *testing.T) {
	a := Render(tree(), Options{})
	for range 5 {
		if d := cmp.Diff(a, Render(tree(), Options{})); d != "" {
			t.Fatalf("two renders differ:\n%s", d)
		}
	}
}

func TestNormalizeDefault(t *testing.T) {
	tests := []struct{ home, in, want string }{
		{"", "/root/x", "/root/x"},
		{"/root", "/root", "~"},
		{"/root", "/root/x", "~/x"},
		{"/root/", "/root/x", "~/x"},
		{"/root", "/rootfs", "/rootfs"},
		{"/root", "x/root/y", "x/root/y"},
	}
	for _, tt := range tests {
		if got := normalizeDefault(tt.in, Options{HomeDir: tt.home}); got != tt.want {
			t.Errorf("normalizeDefault(%q, home %q) = %q, want %q", tt.in, tt.home, got, tt.want)
		}
	}
}

func TestEscape(t *testing.T) {
	tests := []struct{ in, want string }{
		{"plain text, 1.2", "plain text, 1.2"},
		{"$XDG_STATE_HOME", "$XDG\\_STATE\\_HOME"},
		{"<id> *x* `y` [z] a|b", "\\<id\\> \\*x\\* \\`y\\` \\[z\\] a\\|b"},
		{`a\b`, `a\\b`},
	}
	for _, tt := range tests {
		if got := escape(tt.in); got != tt.want {
			t.Errorf("escape(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestWriteDirAndCompare(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"stale.md": "old", "notes.txt": "kept"})
	pages := map[string][]byte{"a.md": []byte("A\n"), "b.md": []byte("B\n")}
	if err := WriteDir(dir, pages); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "stale.md")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale page not removed: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "notes.txt")); err != nil {
		t.Errorf("non-Markdown file removed: %v", err)
	}
	got, err := ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(pages, got); d != "" {
		t.Errorf("ReadDir after WriteDir (-want +got):\n%s", d)
	}
	if err := Compare(dir, pages); err != nil {
		t.Errorf("Compare of a freshly written directory: %v", err)
	}

	// Drift: a changed page, an extra page and a missing page are all named.
	writeFiles(t, dir, map[string]string{"a.md": "A changed\n", "c.md": "C\n"})
	if err := os.Remove(filepath.Join(dir, "b.md")); err != nil {
		t.Fatal(err)
	}
	err = Compare(dir, pages)
	if !errors.Is(err, ErrOutOfDate) {
		t.Fatalf("Compare after drift = %v, want ErrOutOfDate", err)
	}
	for _, want := range []string{"changed a.md", "missing b.md", "extra c.md"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Compare error %q does not name %q", err, want)
		}
	}

	// A directory that does not exist lacks every page.
	err = Compare(filepath.Join(dir, "none"), pages)
	if !errors.Is(err, ErrOutOfDate) || !strings.Contains(err.Error(), "missing a.md") {
		t.Errorf("Compare of a missing directory = %v, want ErrOutOfDate naming a.md", err)
	}
}
