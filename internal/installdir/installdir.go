// Package installdir knows where Cloister's helper executables
// (cloister-init, cloister-monitor) sit relative to the program that needs
// them: next to it (a build directory, or everything in /usr/local/bin),
// else in ../lib/cloister (the Debian package: /usr/bin/cloister and
// /usr/lib/cloister/cloister-init). It is the one place that layout is
// spelled.
package installdir

import (
	"os"
	"path/filepath"
)

// LibDir is the package's directory of helper executables, relative to
// the directory of the program that uses them.
const LibDir = "../lib/cloister"

// Candidates returns where the helper executable name is looked for,
// in order, for the program at exe: next to it, then in LibDir.
func Candidates(exe, name string) []string {
	dir := filepath.Dir(exe)
	return []string{filepath.Join(dir, name), filepath.Clean(filepath.Join(dir, LibDir, name))}
}

// Find returns the first of [Candidates] for the running executable that
// is a regular file, or "" when there is none (or the running executable
// cannot be located).
func Find(name string) string {
	exe, err := os.Executable()
	if err != nil {
		return ""
	}
	for _, p := range Candidates(exe, name) {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p
		}
	}
	return ""
}
