package e2e

import (
	"context"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/cloister/cloister/parent"
)

// BenchmarkSandboxRunToHeartbeat measures run-enclave → heartbeat received
// (the daemon's Run returns when the enclave's init has sent it) for a
// small image, terminating each enclave before the next launch. It reports
// the median and 90th percentile as custom metrics.
func BenchmarkSandboxRunToHeartbeat(b *testing.B) {
	d := startDaemon(b, "sandbox", sandboxConfig)
	img := buildImage(b, shortTemp(b), "echo", nil, "echo")
	ctx := context.Background()
	var lat []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		res, err := d.client.Run(ctx, parent.RunRequest{EIFPath: img, MemoryMiB: 128, CPUCount: 1})
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		b.StopTimer()
		if _, err := d.client.Terminate(ctx, res.EnclaveID); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "median-ms")
	b.ReportMetric(float64(lat[len(lat)*9/10].Microseconds())/1000, "p90-ms")
}

// BenchmarkSandboxLaunchThroughput launches and terminates enclaves from as
// many goroutines as the CPU pool has CPUs, so the pool is recycled
// continuously, and reports launches per second.
func BenchmarkSandboxLaunchThroughput(b *testing.B) {
	d := startDaemon(b, "sandbox", sandboxConfig)
	img := buildImage(b, shortTemp(b), "echo", nil, "echo")
	info, err := d.client.Info(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	workers := len(info.CPUPool)
	ctx := context.Background()
	var mu sync.Mutex
	next := 0
	start := time.Now()
	b.ResetTimer()
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				if next >= b.N {
					mu.Unlock()
					return
				}
				next++
				mu.Unlock()
				res, err := d.client.Run(ctx, parent.RunRequest{EIFPath: img, MemoryMiB: 128, CPUCount: 1})
				if err != nil {
					b.Error(err)
					return
				}
				if _, err := d.client.Terminate(ctx, res.EnclaveID); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "launches/s")
}
