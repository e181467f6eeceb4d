package clidoc

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// ErrOutOfDate is wrapped by [Compare] when the directory differs from the
// rendered pages.
var ErrOutOfDate = errors.New("clidoc: CLI reference out of date")

// Options tunes [Render]. The zero value renders every available command and
// leaves flag defaults as they are.
type Options struct {
	// HomeDir, when not empty, is replaced by "~" at the start of every flag
	// default (a default equal to HomeDir or starting with HomeDir + "/").
	HomeDir string
}

// Render returns the Markdown page of root and of every command below it that
// [Documented] accepts, keyed by file name: the command path with spaces
// replaced by "_" plus ".md" (cobra/doc's naming, e.g. "cloister_kms_serve.md").
func Render(root *cobra.Command, opts Options) map[string][]byte {
	return renderTree(root, FileName, func(c *cobra.Command) []byte { return renderPage(c, opts) })
}

// renderTree renders root and every command below it that [Documented]
// accepts, keyed by name.
func renderTree(root *cobra.Command, name func(*cobra.Command) string, render func(*cobra.Command) []byte) map[string][]byte {
	pages := make(map[string][]byte)
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		pages[name(c)] = render(c)
		for _, sub := range documentedChildren(c) {
			walk(sub)
		}
	}
	walk(root)
	return pages
}

// FileName is the page name of c: its command path with spaces replaced by
// "_", plus ".md".
func FileName(c *cobra.Command) string {
	return strings.ReplaceAll(c.CommandPath(), " ", "_") + ".md"
}

// Documented reports whether c gets a page: it must be available (neither
// hidden nor deprecated, and runnable or with available subcommands) and not
// one of the commands cobra adds itself ("help" and "completion").
func Documented(c *cobra.Command) bool {
	if !c.IsAvailableCommand() || c.IsAdditionalHelpTopicCommand() {
		return false
	}
	if c.HasParent() && !c.Parent().HasParent() && (c.Name() == "help" || c.Name() == "completion") {
		return false
	}
	return true
}

func documentedChildren(c *cobra.Command) []*cobra.Command {
	var out []*cobra.Command
	for _, sub := range c.Commands() {
		if Documented(sub) {
			out = append(out, sub)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
	return out
}

func renderPage(c *cobra.Command, opts Options) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# %s\n\n", c.CommandPath())
	fmt.Fprintf(&b, "%s\n\n", escape(c.Short))
	if long := strings.TrimSpace(c.Long); long != "" {
		b.WriteString("## Synopsis\n\n")
		b.WriteString(renderText(long))
	}
	if c.Runnable() {
		fmt.Fprintf(&b, "## Usage\n\n```\n%s\n```\n\n", c.UseLine())
	}
	if c.HasExample() {
		fmt.Fprintf(&b, "## Examples\n\n```\n%s\n```\n\n", strings.TrimRight(c.Example, "\n"))
	}
	if flags := c.NonInheritedFlags(); flags.HasAvailableFlags() {
		fmt.Fprintf(&b, "## Options\n\n```\n%s```\n\n", flagUsages(flags, opts))
	}
	if flags := c.InheritedFlags(); flags.HasAvailableFlags() {
		fmt.Fprintf(&b, "## Options inherited from parent commands\n\n```\n%s```\n\n", flagUsages(flags, opts))
	}
	var also []string
	if c.HasParent() {
		p := c.Parent()
		also = append(also, fmt.Sprintf("* [%s](%s) — %s", p.CommandPath(), FileName(p), escape(p.Short)))
	}
	for _, sub := range documentedChildren(c) {
		also = append(also, fmt.Sprintf("* [%s](%s) — %s", sub.CommandPath(), FileName(sub), escape(sub.Short)))
	}
	if len(also) > 0 {
		fmt.Fprintf(&b, "## See also\n\n%s\n", strings.Join(also, "\n"))
	}
	return append(bytes.TrimRight(b.Bytes(), "\n"), '\n')
}

// flagUsages is pflag's usage table of fs with machine-dependent defaults
// replaced. The flag set itself is not modified.
func flagUsages(fs *pflag.FlagSet, opts Options) string {
	clone := pflag.NewFlagSet("doc", pflag.ContinueOnError)
	clone.SortFlags = true
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Hidden {
			return
		}
		g := *f
		g.DefValue = normalizeDefault(f.DefValue, opts)
		clone.AddFlag(&g)
	})
	return clone.FlagUsagesWrapped(0)
}

func normalizeDefault(v string, opts Options) string {
	h := strings.TrimRight(opts.HomeDir, "/")
	if h == "" {
		return v
	}
	if v == h {
		return "~"
	}
	if strings.HasPrefix(v, h+"/") {
		return "~" + strings.TrimPrefix(v, h)
	}
	return v
}

// renderText turns help text into Markdown: runs of indented lines (two
// spaces or a tab, as help texts show commands) become fenced code blocks kept
// verbatim, blank lines separate paragraphs, everything else is escaped.
func renderText(text string) string {
	var b strings.Builder
	inCode := false
	for _, line := range strings.Split(text, "\n") {
		indented := strings.HasPrefix(line, "  ") || strings.HasPrefix(line, "\t")
		switch {
		case indented && !inCode:
			b.WriteString("```\n")
			inCode = true
		case !indented && inCode:
			b.WriteString("```\n")
			inCode = false
			if strings.TrimSpace(line) != "" {
				b.WriteString("\n")
			}
		}
		if inCode {
			b.WriteString(line + "\n")
			continue
		}
		b.WriteString(escape(line) + "\n")
	}
	if inCode {
		b.WriteString("```\n")
	}
	return b.String() + "\n"
}

// escape makes plain help text safe as a Markdown paragraph: characters that
// Markdown would read as emphasis, code, links or HTML are backslash-escaped.
func escape(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch r {
		case '\\', '`', '*', '_', '[', ']', '<', '>', '|':
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// WriteDir writes pages into dir (created if missing) and removes every other
// ".md" file directly in dir, so that commands that no longer exist lose their
// page. Files not ending in ".md" are left alone.
func WriteDir(dir string, pages map[string][]byte) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("clidoc: %w", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("clidoc: %w", err)
	}
	for _, e := range entries {
		if e.Type().IsRegular() && strings.HasSuffix(e.Name(), ".md") {
			if _, keep := pages[e.Name()]; !keep {
				if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
					return fmt.Errorf("clidoc: removing stale page: %w", err)
				}
			}
		}
	}
	for _, name := range sortedNames(pages) {
		if err := os.WriteFile(filepath.Join(dir, name), pages[name], 0o644); err != nil {
			return fmt.Errorf("clidoc: %w", err)
		}
	}
	return nil
}

// Compare checks that the ".md" files directly in dir are exactly pages. On a
// difference it returns an error wrapping [ErrOutOfDate] that lists every
// missing, extra and changed file.
func Compare(dir string, pages map[string][]byte) error {
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("clidoc: %w", err)
	}
	var problems []string
	onDisk := make(map[string]bool)
	for _, e := range entries {
		if !e.Type().IsRegular() || !strings.HasSuffix(e.Name(), ".md") {
			continue
		}
		onDisk[e.Name()] = true
		want, ok := pages[e.Name()]
		if !ok {
			problems = append(problems, "extra "+e.Name())
			continue
		}
		got, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return fmt.Errorf("clidoc: %w", err)
		}
		if !bytes.Equal(got, want) {
			problems = append(problems, "changed "+e.Name())
		}
	}
	for _, name := range sortedNames(pages) {
		if !onDisk[name] {
			problems = append(problems, "missing "+name)
		}
	}
	if len(problems) > 0 {
		sort.Strings(problems)
		return fmt.Errorf("%w in %s: %s", ErrOutOfDate, dir, strings.Join(problems, ", "))
	}
	return nil
}

func sortedNames(pages map[string][]byte) []string {
	names := make([]string, 0, len(pages))
	for n := range pages {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// ReadDir returns the ".md" files directly in dir, keyed by name, in the form
// [Render] returns them.
func ReadDir(dir string) (map[string][]byte, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("clidoc: %w", err)
	}
	pages := make(map[string][]byte)
	for _, e := range entries {
		if !e.Type().IsRegular() || !strings.HasSuffix(e.Name(), ".md") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("clidoc: %w", err)
		}
		pages[e.Name()] = b
	}
	return pages, nil
}
