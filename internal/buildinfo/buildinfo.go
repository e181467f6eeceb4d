// Package buildinfo says which build of Cloister is running: its version
// and the commit it was built from.
//
// Release builds (scripts/build-deb.sh) set both with the linker:
//
//	go build -ldflags "-X github.com/cloister/cloister/internal/buildinfo.version=0.3.0 \
//	    -X github.com/cloister/cloister/internal/buildinfo.commit=0123abcd…"
//
// Without them the values come from the Go build information: the module
// version ("(devel)" for a source build) and the VCS revision go build
// stamps when it builds inside a Git checkout (with "-dirty" when the work
// tree had changes).
package buildinfo

import (
	"runtime/debug"
	"sync"
)

// Set by the linker (-X); empty in a plain go build.
var (
	version string
	commit  string
)

var read = sync.OnceValues(func() (string, string) {
	v, c := version, commit
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return orDevel(v), orUnknown(c)
	}
	if v == "" && bi.Main.Version != "" {
		v = bi.Main.Version
	}
	if c == "" {
		var rev string
		dirty := false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		if rev != "" && dirty {
			rev += "-dirty"
		}
		c = rev
	}
	return orDevel(v), orUnknown(c)
})

func orDevel(v string) string {
	if v == "" {
		return "(devel)"
	}
	return v
}

func orUnknown(c string) string {
	if c == "" {
		return "unknown"
	}
	return c
}

// Version is the version of this build: the linker-set release version,
// else the module version, else "(devel)".
func Version() string { v, _ := read(); return v }

// Commit is the full commit hash this build was made from ("-dirty" when
// the work tree had changes), or "unknown".
func Commit() string { _, c := read(); return c }

// String is "VERSION (commit COMMIT)", the commit shortened to 12 digits.
func String() string {
	c := Commit()
	if len(c) > 12 && c != "unknown" {
		short := c[:12]
		if len(c) > 6 && c[len(c)-6:] == "-dirty" {
			short += "-dirty"
		}
		c = short
	}
	return Version() + " (commit " + c + ")"
}
