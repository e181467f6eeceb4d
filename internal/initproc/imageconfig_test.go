package initproc

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseCmd(t *testing.T) {
	tests := []struct {
		in      string
		want    []string
		wantErr error
	}{
		{"/bin/app\n--flag\nvalue\n", []string{"/bin/app", "--flag", "value"}, nil},
		{"/bin/app\n--flag", []string{"/bin/app", "--flag"}, nil},       // no trailing newline
		{"/bin/app\r\n--flag\r\n", []string{"/bin/app", "--flag"}, nil}, // CRLF
		{"sh\n-c\n\n", []string{"sh", "-c", ""}, nil},                   // empty argument kept
		{"echo\n a b \n", []string{"echo", " a b "}, nil},               // blanks kept
		{"app\n\n\n", []string{"app", "", ""}, nil},                     // only the final newline ends
		{"", nil, ErrNoCommand},                                         // empty file
		{"\n", nil, ErrNoCommand},                                       // empty program
		{"\r\n", nil, ErrNoCommand},                                     // empty program, CRLF
		{"app\nbad\x00arg\n", nil, ErrImageConfig},                      // NUL
		{"\nargs\n", nil, ErrNoCommand},                                 // empty program name
		{"/bin/échø\n", []string{"/bin/échø"}, nil},                     // UTF-8
		{"a\rb\n", []string{"a\rb"}, nil},                               // lone CR inside kept
		{"x\r\r\n", []string{"x\r"}, nil},                               // only one CR stripped
		{"prog\n\r\n", []string{"prog", ""}, nil},                       // CRLF empty arg
		{"prog", []string{"prog"}, nil},                                 // single, no newline
		{"prog\n", []string{"prog"}, nil},                               // single
		{"prog\nlast-without-newline", []string{"prog", "last-without-newline"}, nil},
	}
	for _, tc := range tests {
		got, err := ParseCmd([]byte(tc.in))
		if tc.wantErr != nil {
			if !errors.Is(err, tc.wantErr) || got != nil {
				t.Errorf("ParseCmd(%q) = %q, %v; want error %v", tc.in, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseCmd(%q): %v", tc.in, err)
			continue
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("ParseCmd(%q) (-want +got):\n%s", tc.in, diff)
		}
	}
}

func TestParseEnv(t *testing.T) {
	tests := []struct {
		in      string
		want    []string
		wantErr bool
	}{
		{"", nil, false},
		{"\n\n", nil, false},
		{"A=1\nB=2\n", []string{"A=1", "B=2"}, false},
		{"A=1\r\nB=2", []string{"A=1", "B=2"}, false},
		{"A=\nB==x=\n", []string{"A=", "B==x="}, false},
		{"A=1\n\nB=2\n", []string{"A=1", "B=2"}, false},
		{"A=1\nB=2\nA=3\n", []string{"A=3", "B=2"}, false},
		{"A= spaced value \n", []string{"A= spaced value "}, false},
		{"NOEQUALS\n", nil, true},
		{"=value\n", nil, true},
		{"A=1\x00\n", nil, true},
	}
	for _, tc := range tests {
		got, err := ParseEnv([]byte(tc.in))
		if tc.wantErr {
			if !errors.Is(err, ErrImageConfig) || got != nil {
				t.Errorf("ParseEnv(%q) = %q, %v; want ErrImageConfig", tc.in, got, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseEnv(%q): %v", tc.in, err)
			continue
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("ParseEnv(%q) (-want +got):\n%s", tc.in, diff)
		}
	}
}

func TestParseWorkdirAndUser(t *testing.T) {
	workdirs := []struct {
		in      string
		want    string
		wantErr bool
	}{
		{"", "/", false},
		{"\n", "/", false},
		{"/app", "/app", false},
		{"/app\n", "/app", false},
		{"/app\r\n", "/app", false},
		{"  /srv/data/  \n\n", "/srv/data", false},
		{"/a/../b", "/b", false},
		{"app", "", true},
		{"/a\n/b\n", "", true},
	}
	for _, tc := range workdirs {
		got, err := ParseWorkdir([]byte(tc.in))
		if tc.wantErr {
			if !errors.Is(err, ErrImageConfig) || got != "" {
				t.Errorf("ParseWorkdir(%q) = %q, %v; want ErrImageConfig", tc.in, got, err)
			}
		} else if err != nil || got != tc.want {
			t.Errorf("ParseWorkdir(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	users := []struct {
		in      string
		want    string
		wantErr bool
	}{
		{"", "", false},
		{"app", "app", false},
		{"1000:1000\n", "1000:1000", false},
		{"app:staff\r\n", "app:staff", false},
		{"app\nother\n", "", true},
	}
	for _, tc := range users {
		got, err := ParseUser([]byte(tc.in))
		if tc.wantErr {
			if !errors.Is(err, ErrImageConfig) || got != "" {
				t.Errorf("ParseUser(%q) = %q, %v; want ErrImageConfig", tc.in, got, err)
			}
		} else if err != nil || got != tc.want {
			t.Errorf("ParseUser(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestReadImageConfig(t *testing.T) {
	t.Run("all files, removed", func(t *testing.T) {
		dir := t.TempDir()
		writeFiles(t, dir, map[string]string{
			"cmd": "/bin/app\n-v\n", "env": "A=1\n", "workdir": "/srv\n", "user": "app:staff\n",
		})
		got, err := ReadImageConfig(dir, true)
		if err != nil {
			t.Fatal(err)
		}
		want := ImageConfig{Cmd: []string{"/bin/app", "-v"}, Env: []string{"A=1"}, Workdir: "/srv", User: "app:staff"}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("ReadImageConfig (-want +got):\n%s", diff)
		}
		for _, f := range []string{"cmd", "env", "workdir", "user"} {
			if fileExists(filepath.Join(dir, f)) {
				t.Errorf("%s was not removed", f)
			}
		}
	})
	t.Run("only cmd, kept", func(t *testing.T) {
		dir := t.TempDir()
		writeFiles(t, dir, map[string]string{"cmd": "app"})
		got, err := ReadImageConfig(dir, false)
		if err != nil {
			t.Fatal(err)
		}
		want := ImageConfig{Cmd: []string{"app"}, Workdir: "/"}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("ReadImageConfig (-want +got):\n%s", diff)
		}
		if !fileExists(filepath.Join(dir, "cmd")) {
			t.Error("cmd was removed with remove=false")
		}
	})
	t.Run("missing cmd", func(t *testing.T) {
		dir := t.TempDir()
		writeFiles(t, dir, map[string]string{"env": "A=1\n"})
		if got, err := ReadImageConfig(dir, true); !errors.Is(err, ErrNoCommand) {
			t.Fatalf("ReadImageConfig = %+v, %v; want ErrNoCommand", got, err)
		}
	})
	t.Run("bad env", func(t *testing.T) {
		dir := t.TempDir()
		writeFiles(t, dir, map[string]string{"cmd": "app\n", "env": "oops\n"})
		if got, err := ReadImageConfig(dir, false); !errors.Is(err, ErrImageConfig) {
			t.Fatalf("ReadImageConfig = %+v, %v; want ErrImageConfig", got, err)
		}
	})
	t.Run("oversized", func(t *testing.T) {
		dir := t.TempDir()
		writeFiles(t, dir, map[string]string{"cmd": "app\n", "env": "A=" + string(make([]byte, maxConfigFile)) + "\n"})
		if got, err := ReadImageConfig(dir, false); !errors.Is(err, ErrImageConfig) {
			t.Fatalf("ReadImageConfig = %+v, %v; want ErrImageConfig", got, err)
		}
	})
}

// FuzzImageConfig checks that the image file parsers never panic and that
// what they accept satisfies their contracts.
func FuzzImageConfig(f *testing.F) {
	for _, s := range []string{"", "\n", "/bin/app\n-v\n", "A=1\r\nB=2", "/srv\n", "app:staff", "a\x00b", "=x\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if cmd, err := ParseCmd(b); err == nil && (len(cmd) == 0 || cmd[0] == "") {
			t.Fatalf("ParseCmd(%q) accepted an empty command %q", b, cmd)
		}
		if env, err := ParseEnv(b); err == nil {
			seen := map[string]bool{}
			for _, kv := range env {
				k, _, ok := cutEq(kv)
				if !ok || k == "" || seen[k] {
					t.Fatalf("ParseEnv(%q) returned a bad or duplicate entry %q", b, kv)
				}
				seen[k] = true
			}
		}
		if wd, err := ParseWorkdir(b); err == nil && (wd == "" || wd[0] != '/') {
			t.Fatalf("ParseWorkdir(%q) = %q, not absolute", b, wd)
		}
		_, _ = ParseUser(b)
	})
}

func cutEq(kv string) (string, string, bool) {
	for i := 0; i < len(kv); i++ {
		if kv[i] == '=' {
			return kv[:i], kv[i+1:], true
		}
	}
	return "", "", false
}
