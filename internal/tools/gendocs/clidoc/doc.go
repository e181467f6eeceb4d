// Package clidoc renders a cobra command tree as Markdown reference pages,
// one file per command, and compares a rendered tree with one on disk.
//
// It is the library half of the gendocs tool (internal/tools/gendocs), which
// runs it inside the cloister binary so that the pages come from the real
// command definitions. Unlike cobra/doc it writes no generation date, skips
// cobra's own help and completion commands, escapes help text for Markdown and
// replaces flag defaults that depend on the machine (the user's home
// directory) with a placeholder, so the output is the same on every machine.
package clidoc
