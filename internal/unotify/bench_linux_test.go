//go:build linux

package unotify

import (
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func init() {
	scenarios["spin"] = func(out map[string]string, arg string) {
		// arg: what to call and how often, "<what>:<n>".
		what, ns, _ := cut(arg, ':')
		n, _ := strconv.Atoi(ns)
		var fd int
		if what == "emulated" {
			fd, _ = vsockSocket(0)
		} else {
			fd, _ = unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		}
		start := time.Now()
		for range n {
			if _, err := unix.Getsockname(fd); err != nil {
				out["error"] = outcome(err)
				return
			}
		}
		out["ns"] = strconv.FormatInt(time.Since(start).Nanoseconds(), 10)
	}
}

func cut(s string, sep byte) (string, string, bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == sep {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

// benchSpin measures one notified getsockname (on a plain Unix socket:
// continued; on an emulated one: answered by the supervisor), as the
// caller sees it (ns/call) and as the supervisor pays it (its process's
// CPU time per call).
func benchSpin(b *testing.B, what string) {
	var before, after unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &before)
	out := start(b, envOpts{}, "spin", what+":"+strconv.Itoa(b.N)).wait(b)
	_ = unix.Getrusage(unix.RUSAGE_SELF, &after)
	if out["error"] != "" {
		b.Fatal(out["error"])
	}
	ns, _ := strconv.ParseFloat(out["ns"], 64)
	cpu := float64(after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano())
	b.ReportMetric(ns/float64(b.N), "ns/call")
	b.ReportMetric(cpu/float64(b.N), "supervisor-cpu-ns/call")
}

func BenchmarkNotifiedCallContinued(b *testing.B) { benchSpin(b, "plain") }
func BenchmarkNotifiedCallEmulated(b *testing.B)  { benchSpin(b, "emulated") }
