//go:build unix

package attest

import (
	"syscall"
	"testing"
	"time"
)

// processCPU returns the user+system CPU time of the process so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuMeter reports the process CPU time per operation as "cpu-ns/op", a
// figure that, unlike ns/op, does not grow when other processes compete for
// the machine (run with -cpu 1 so that it counts one core's work).
type cpuMeter struct {
	b     *testing.B
	start time.Duration
}

func startCPU(b *testing.B) cpuMeter { return cpuMeter{b: b, start: processCPU()} }

func (m cpuMeter) stop() {
	if m.b.N > 0 {
		m.b.ReportMetric(float64(processCPU()-m.start)/float64(m.b.N), "cpu-ns/op")
	}
}
