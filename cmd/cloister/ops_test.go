package main

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/cobra"

	"github.com/cloister/cloister/internal/buildinfo"
	"github.com/cloister/cloister/parent"
)

func TestVersionFlagAndCommand(t *testing.T) {
	want := "cloister version " + buildinfo.String() + "\n"
	for _, args := range [][]string{{"--version"}, {"version"}} {
		out, code := runCLI(t, args...)
		if code != 0 || out != want {
			t.Errorf("cloister %v = %q (exit %d), want %q", args, out, code, want)
		}
	}
}

func TestLogFlags(t *testing.T) {
	for _, tc := range []struct {
		level, format string
		ok            bool
		logs          []string // written at debug, info, warn, error
	}{
		{"info", "text", true, []string{"info", "warn", "error"}},
		{"debug", "json", true, []string{"debug", "info", "warn", "error"}},
		{"warn", "text", true, []string{"warn", "error"}},
		{"ERROR", "json", true, []string{"error"}},
		{"verbose", "text", false, nil},
		{"info+2", "text", false, nil},
		{"info", "xml", false, nil},
	} {
		f := &logFlags{level: tc.level, format: tc.format}
		var buf bytes.Buffer
		l, err := f.logger(&buf)
		if (err == nil) != tc.ok {
			t.Errorf("%s/%s: error %v, want ok=%v", tc.level, tc.format, err, tc.ok)
			continue
		}
		if err != nil {
			continue
		}
		l.Debug("debug")
		l.Info("info")
		l.Warn("warn")
		l.Error("error")
		var got []string
		for _, m := range []string{"debug", "info", "warn", "error"} {
			if strings.Contains(buf.String(), "msg="+m) || strings.Contains(buf.String(), `"msg":"`+m+`"`) {
				got = append(got, m)
			}
		}
		if d := cmp.Diff(tc.logs, got); d != "" {
			t.Errorf("%s/%s: messages written (-want +got):\n%s", tc.level, tc.format, d)
		}
	}
}

func TestEnclaveCompletions(t *testing.T) {
	list := []parent.EnclaveDescription{
		{EnclaveName: "app", EnclaveID: "i-0-enc1", EnclaveCID: 16, State: parent.StateRunning},
		{EnclaveName: "db", EnclaveID: "i-0-enc2", EnclaveCID: 17, State: parent.StateRunning},
	}
	got := enclaveCompletions(list, func(e parent.EnclaveDescription) string { return e.EnclaveName })
	want := []cobra.Completion{"app\tapp i-0-enc1, CID 16, RUNNING", "db\tdb i-0-enc2, CID 17, RUNNING"}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("completions (-want +got):\n%s", d)
	}
	// Which commands complete which flags: only those naming existing enclaves.
	root := newRootCmd()
	for _, tc := range []struct {
		cmd, flag string
		want      bool
	}{
		{"terminate-enclave", "enclave-id", true},
		{"console", "enclave-name", true},
		{"connect", "enclave-cid", true},
		{"run-enclave", "enclave-name", false},
		{"run-enclave", "eif-path", true},
	} {
		c, _, err := root.Find([]string{tc.cmd})
		if err != nil {
			t.Fatal(err)
		}
		_, has := c.GetFlagCompletionFunc(tc.flag)
		if has != tc.want {
			t.Errorf("%s --%s completion registered = %v, want %v", tc.cmd, tc.flag, has, tc.want)
		}
	}
}

// TestLongRunningCommandsTakeLogFlags: every command that runs until
// stopped takes --log-level and --log-format, and refuses a bad value
// before doing anything.
func TestLongRunningCommandsTakeLogFlags(t *testing.T) {
	for _, path := range [][]string{{"daemon"}, {"kms", "serve"}, {"attest", "serve"}, {"device-plugin"}} {
		c, _, err := newRootCmd().Find(path)
		if err != nil {
			t.Fatalf("%v: %v", path, err)
		}
		for _, flag := range []string{"log-level", "log-format"} {
			if c.Flags().Lookup(flag) == nil {
				t.Errorf("%s has no --%s", c.CommandPath(), flag)
			}
		}
		for _, bad := range [][]string{{"--log-level", "loud"}, {"--log-format", "xml"}} {
			args := append(append([]string(nil), path...), bad...)
			root := newRootCmd()
			root.SetOut(io.Discard)
			root.SetErr(io.Discard)
			root.SetArgs(args)
			err := root.Execute()
			if err == nil || !strings.Contains(err.Error(), bad[0]) {
				t.Errorf("cloister %s: error %v, want one naming %s", strings.Join(args, " "), err, bad[0])
			}
		}
	}
}
