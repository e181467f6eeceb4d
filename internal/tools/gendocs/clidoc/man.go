package clidoc

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// ManOptions tunes [RenderMan].
type ManOptions struct {
	Options
	// Source is the page footer's source, e.g. "cloister 0.3.0".
	Source string
	// Date is the page date (YYYY-MM-DD); the Debian package passes the
	// date of its changelog entry so that pages are reproducible.
	Date string
}

// ManPageName is the section-1 manual page of c: its command path joined
// with "-" plus ".1" (git's naming, e.g. "cloister-kms-serve.1").
func ManPageName(c *cobra.Command) string {
	return strings.ReplaceAll(c.CommandPath(), " ", "-") + ".1"
}

// RenderMan returns the roff manual page (section 1) of root and of every
// command below it that [Documented] accepts, keyed by [ManPageName].
func RenderMan(root *cobra.Command, opts ManOptions) map[string][]byte {
	return renderTree(root, ManPageName, func(c *cobra.Command) []byte { return renderMan(c, opts) })
}

func renderMan(c *cobra.Command, opts ManOptions) []byte {
	var b bytes.Buffer
	name := strings.ReplaceAll(c.CommandPath(), " ", "-")
	fmt.Fprintf(&b, ".TH %s 1 %s %s \"Cloister Manual\"\n", roffQuote(strings.ToUpper(name)), roffQuote(opts.Date), roffQuote(opts.Source))
	b.WriteString(".SH NAME\n")
	fmt.Fprintf(&b, "%s \\- %s\n", roffEscape(name), roffEscape(strings.TrimSuffix(c.Short, ".")))
	if c.Runnable() || c.HasAvailableSubCommands() {
		b.WriteString(".SH SYNOPSIS\n")
		use := c.UseLine()
		if !c.Runnable() {
			use = c.CommandPath() + " COMMAND"
		}
		cmd, rest, _ := strings.Cut(use, " [flags]")
		fmt.Fprintf(&b, ".B %s\n", roffEscape(cmd))
		if strings.Contains(use, "[flags]") {
			b.WriteString("[\\fIflags\\fR]")
			if rest = strings.TrimSpace(rest); rest != "" {
				b.WriteString(" " + roffEscape(rest))
			}
			b.WriteString("\n")
		}
	}
	b.WriteString(".SH DESCRIPTION\n")
	if long := strings.TrimSpace(c.Long); long != "" {
		b.WriteString(roffText(long))
	} else {
		b.WriteString(roffEscape(c.Short) + "\n")
	}
	if flags := c.NonInheritedFlags(); flags.HasAvailableFlags() {
		b.WriteString(".SH OPTIONS\n")
		b.WriteString(roffFlags(flags, opts.Options))
	}
	if flags := c.InheritedFlags(); flags.HasAvailableFlags() {
		b.WriteString(".SH OPTIONS INHERITED FROM PARENT COMMANDS\n")
		b.WriteString(roffFlags(flags, opts.Options))
	}
	if c.HasExample() {
		b.WriteString(".SH EXAMPLES\n.PP\n.nf\n.RS\n")
		for _, line := range strings.Split(strings.TrimRight(c.Example, "\n"), "\n") {
			b.WriteString(roffLine(strings.TrimPrefix(line, "  ")) + "\n")
		}
		b.WriteString(".RE\n.fi\n")
	}
	var also []*cobra.Command
	if c.HasParent() {
		also = append(also, c.Parent())
	}
	also = append(also, documentedChildren(c)...)
	if len(also) > 0 {
		b.WriteString(".SH SEE ALSO\n")
		refs := make([]string, len(also))
		for i, a := range also {
			refs[i] = ".BR " + roffEscape(strings.ReplaceAll(a.CommandPath(), " ", "-")) + " (1)"
		}
		b.WriteString(strings.Join(refs, ",\n") + "\n")
	}
	return b.Bytes()
}

// roffFlags lists flags as tagged paragraphs, sorted by name.
func roffFlags(fs *pflag.FlagSet, opts Options) string {
	var flags []*pflag.Flag
	fs.VisitAll(func(f *pflag.Flag) {
		if !f.Hidden {
			flags = append(flags, f)
		}
	})
	sort.Slice(flags, func(i, j int) bool { return flags[i].Name < flags[j].Name })
	var b strings.Builder
	for _, f := range flags {
		varname, usage := pflag.UnquoteUsage(f)
		b.WriteString(".TP\n")
		tag := "\\fB\\-\\-" + roffEscape(f.Name) + "\\fR"
		if f.Shorthand != "" {
			tag = "\\fB\\-" + roffEscape(f.Shorthand) + "\\fR, " + tag
		}
		if varname != "" {
			tag += " \\fI" + roffEscape(varname) + "\\fR"
		}
		b.WriteString(tag + "\n")
		if def := normalizeDefault(f.DefValue, opts); def != "" && def != "false" && def != "0" && def != "[]" && def != "0s" {
			if f.Value.Type() == "string" {
				def = fmt.Sprintf("%q", def)
			}
			usage += " (default " + def + ")"
		}
		b.WriteString(roffLine(usage) + "\n")
	}
	return b.String()
}

// roffText turns help text into roff: blank lines separate paragraphs,
// indented lines (commands) are kept verbatim in an indented block.
func roffText(text string) string {
	var b strings.Builder
	b.WriteString(".PP\n")
	inCode := false
	for _, line := range strings.Split(text, "\n") {
		indented := strings.HasPrefix(line, "  ") || strings.HasPrefix(line, "\t")
		switch {
		case indented && !inCode:
			b.WriteString(".RS\n.nf\n")
			inCode = true
		case !indented && inCode:
			b.WriteString(".fi\n.RE\n")
			inCode = false
		}
		if inCode {
			b.WriteString(roffLine(strings.TrimLeft(line, " \t")) + "\n")
			continue
		}
		if strings.TrimSpace(line) == "" {
			b.WriteString(".PP\n")
			continue
		}
		b.WriteString(roffLine(line) + "\n")
	}
	if inCode {
		b.WriteString(".fi\n.RE\n")
	}
	return b.String()
}

// roffEscape escapes text for use inside a roff line: backslashes, and
// hyphens as minus signs (so options can be copied from the page).
func roffEscape(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	return strings.ReplaceAll(s, "-", `\-`)
}

// roffLine escapes a whole line of text: a line starting with a control
// character ("." or "'") is protected with \&.
func roffLine(s string) string {
	s = roffEscape(s)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}

// roffQuote makes s one macro argument.
func roffQuote(s string) string {
	return `"` + strings.ReplaceAll(roffEscape(s), `"`, `\(dq`) + `"`
}

// WriteManDir writes manual pages into dir (created if missing); other
// files are left alone.
func WriteManDir(dir string, pages map[string][]byte) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("clidoc: %w", err)
	}
	for _, name := range sortedNames(pages) {
		if err := os.WriteFile(filepath.Join(dir, name), pages[name], 0o644); err != nil {
			return fmt.Errorf("clidoc: %w", err)
		}
	}
	return nil
}
