package initproc

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

var (
	// ErrNoCommand means the image has no /cmd file or it names no program.
	ErrNoCommand = errors.New("initproc: no command")
	// ErrImageConfig means one of the cmd, env, workdir or user files is
	// malformed or unreadable.
	ErrImageConfig = errors.New("initproc: bad image configuration")
)

// maxConfigFile caps each of the cmd, env, workdir and user files; the
// kernel refuses argument and environment lists this large anyway.
const maxConfigFile = 2 << 20

// ImageConfig is what the image tells init to run.
type ImageConfig struct {
	Cmd     []string // program and arguments, never empty
	Env     []string // NAME=value entries, names unique, file order
	Workdir string   // absolute; "/" when the image sets none
	User    string   // "", "name", "uid", "uid:gid", "name:group", ...; "" means root
}

// Names of the image configuration files: at the ramdisk root in a VM,
// under /.cloister in the sandbox.
const (
	fileCmd     = "cmd"
	fileEnv     = "env"
	fileWorkdir = "workdir"
	fileUser    = "user"
)

// ReadImageConfig reads dir/cmd, dir/env, dir/workdir and dir/user with
// [ParseCmd], [ParseEnv], [ParseWorkdir] and [ParseUser]. cmd is required;
// an absent env means no variables, an absent workdir means "/", an absent
// user means root. With remove set, it deletes the four files after reading
// them (as Nitro's init does), failing if a present file cannot be deleted.
func ReadImageConfig(dir string, remove bool) (ImageConfig, error) {
	read := func(name string) ([]byte, bool, error) {
		p := filepath.Join(dir, name)
		f, err := os.Open(p)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, false, nil
		}
		if err != nil {
			return nil, false, fmt.Errorf("%w: %v", ErrImageConfig, err)
		}
		defer f.Close()
		b, err := io.ReadAll(io.LimitReader(f, maxConfigFile+1))
		if err != nil {
			return nil, false, fmt.Errorf("%w: reading %s: %v", ErrImageConfig, p, err)
		}
		if len(b) > maxConfigFile {
			return nil, false, fmt.Errorf("%w: %s is larger than %d bytes", ErrImageConfig, p, maxConfigFile)
		}
		if remove {
			if err := os.Remove(p); err != nil {
				return nil, false, fmt.Errorf("%w: %v", ErrImageConfig, err)
			}
		}
		return b, true, nil
	}
	var c ImageConfig
	b, ok, err := read(fileCmd)
	if err != nil {
		return ImageConfig{}, err
	}
	if !ok {
		return ImageConfig{}, fmt.Errorf("%w: %s does not exist (the image builder writes it from the image's Cmd or Entrypoint)", ErrNoCommand, filepath.Join(dir, fileCmd))
	}
	if c.Cmd, err = ParseCmd(b); err != nil {
		return ImageConfig{}, err
	}
	if b, _, err = read(fileEnv); err != nil {
		return ImageConfig{}, err
	}
	if c.Env, err = ParseEnv(b); err != nil {
		return ImageConfig{}, err
	}
	if b, _, err = read(fileWorkdir); err != nil {
		return ImageConfig{}, err
	}
	if c.Workdir, err = ParseWorkdir(b); err != nil {
		return ImageConfig{}, err
	}
	if b, _, err = read(fileUser); err != nil {
		return ImageConfig{}, err
	}
	if c.User, err = ParseUser(b); err != nil {
		return ImageConfig{}, err
	}
	return c, nil
}

// splitLines splits the Nitro one-entry-per-line format: entries end with
// "\n" (the last one may lack it), and a "\r" before the "\n" is removed so
// that files written on Windows mean the same thing.
func splitLines(b []byte) []string {
	if len(b) == 0 {
		return nil
	}
	s := strings.TrimSuffix(string(b), "\n")
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimSuffix(l, "\r")
	}
	return lines
}

// ParseCmd parses a cmd file: one argument per line, the program first.
// Empty lines are kept as empty arguments (Docker's Cmd may contain ""),
// except that nothing follows the final newline. It fails with
// [ErrNoCommand] when there is no argument or the program name is empty and
// with [ErrImageConfig] when an argument contains a NUL byte.
func ParseCmd(b []byte) ([]string, error) {
	args := splitLines(b)
	if len(args) == 0 || args[0] == "" {
		return nil, fmt.Errorf("%w: the cmd file names no program", ErrNoCommand)
	}
	for i, a := range args {
		if strings.IndexByte(a, 0) >= 0 {
			return nil, fmt.Errorf("%w: cmd argument %d contains a NUL byte", ErrImageConfig, i)
		}
	}
	return args, nil
}

// ParseEnv parses an env file: one NAME=value per line. Empty lines are
// skipped; the value may contain '=' and is otherwise taken verbatim. A name
// given twice keeps its first position and its last value. It fails with
// [ErrImageConfig] for a line without '=', an empty name or a NUL byte.
func ParseEnv(b []byte) ([]string, error) {
	var env []string
	index := map[string]int{}
	for i, l := range splitLines(b) {
		if l == "" {
			continue
		}
		name, _, ok := strings.Cut(l, "=")
		if !ok || name == "" {
			return nil, fmt.Errorf("%w: env line %d is %q, want NAME=value", ErrImageConfig, i+1, l)
		}
		if strings.IndexByte(l, 0) >= 0 {
			return nil, fmt.Errorf("%w: env line %d contains a NUL byte", ErrImageConfig, i+1)
		}
		if j, dup := index[name]; dup {
			env[j] = l
			continue
		}
		index[name] = len(env)
		env = append(env, l)
	}
	return env, nil
}

// singleLine returns the only line of a one-line file (a trailing "\n" or
// "\r\n" is allowed; surrounding blanks are removed).
func singleLine(what string, b []byte) (string, error) {
	lines := splitLines(b)
	for len(lines) > 0 && strings.TrimSpace(lines[len(lines)-1]) == "" {
		lines = lines[:len(lines)-1]
	}
	switch len(lines) {
	case 0:
		return "", nil
	case 1:
		s := strings.TrimSpace(lines[0])
		if strings.IndexByte(s, 0) >= 0 {
			return "", fmt.Errorf("%w: %s contains a NUL byte", ErrImageConfig, what)
		}
		return s, nil
	default:
		return "", fmt.Errorf("%w: %s has %d lines, want one", ErrImageConfig, what, len(lines))
	}
}

// ParseWorkdir parses a workdir file: one absolute path. Empty means "/".
// The path is cleaned ("/app/../srv/" → "/srv"). It fails with
// [ErrImageConfig] for a relative path or more than one line.
func ParseWorkdir(b []byte) (string, error) {
	s, err := singleLine("workdir", b)
	if err != nil {
		return "", err
	}
	if s == "" {
		return "/", nil
	}
	if !strings.HasPrefix(s, "/") {
		return "", fmt.Errorf("%w: workdir %q is not an absolute path", ErrImageConfig, s)
	}
	return path.Clean(s), nil
}

// ParseUser parses a user file: one user specification in Docker's USER
// syntax ("name", "uid", "name:group", "uid:gid", ...); empty means root.
// The specification is resolved later by [ResolveUser]. It fails with
// [ErrImageConfig] for more than one line.
func ParseUser(b []byte) (string, error) {
	return singleLine("user", b)
}
