package e2e

import (
	"context"
	"fmt"
	"io"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/cloister/cloister/parent"
	"github.com/cloister/cloister/parent/parenttest"
)

// BenchmarkSandboxRunToHeartbeat measures run-enclave → heartbeat received
// (the daemon's Run returns when the enclave's init has sent it) for a
// small image, terminating each enclave before the next launch. It reports
// the median and 90th percentile as custom metrics.
func BenchmarkSandboxRunToHeartbeat(b *testing.B) {
	d := parenttest.StartDaemon(b, "sandbox", sandboxConfig)
	img := appImage(b, parenttest.ShortTemp(b), "echo", nil, "echo")
	ctx := context.Background()
	var lat []time.Duration
	cpu0 := d.CPUTime()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		res, err := d.Client.Run(ctx, parent.RunRequest{EIFPath: img, MemoryMiB: 128, CPUCount: 1})
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		b.StopTimer()
		if _, err := d.Client.Terminate(ctx, res.EnclaveID); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "median-ms")
	b.ReportMetric(float64(lat[len(lat)*9/10].Microseconds())/1000, "p90-ms")
	// Processor time of the daemon, its monitors and the enclaves per
	// launch and terminate: what a launch costs, whatever else the machine
	// runs (the latencies above grow with the machine's load).
	b.ReportMetric(float64((d.CPUTime()-cpu0).Microseconds())/1000/float64(b.N), "cpu-ms/op")
}

// BenchmarkSandboxLaunchThroughput launches and terminates enclaves from as
// many goroutines as the CPU pool has CPUs, so the pool is recycled
// continuously, and reports launches per second.
func BenchmarkSandboxLaunchThroughput(b *testing.B) {
	d := parenttest.StartDaemon(b, "sandbox", sandboxConfig)
	img := appImage(b, parenttest.ShortTemp(b), "echo", nil, "echo")
	info, err := d.Client.Info(context.Background())
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
				res, err := d.Client.Run(ctx, parent.RunRequest{EIFPath: img, MemoryMiB: 128, CPUCount: 1})
				if err != nil {
					b.Error(err)
					return
				}
				if _, err := d.Client.Terminate(ctx, res.EnclaveID); err != nil {
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

func runReq(eif string) parent.RunRequest {
	return parent.RunRequest{EIFPath: eif, MemoryMiB: 256, CPUCount: 1}
}

// BenchmarkMicroVMRunToHeartbeat measures run-enclave → heartbeat for a
// microVM under the host's accelerator (TCG here), median and p90.
func BenchmarkMicroVMRunToHeartbeat(b *testing.B) {
	d, flags := startQEMU(b)
	img := appImage(b, parenttest.ShortTemp(b), "echo", splitFlags(flags), "echo")
	ctx := context.Background()
	var lat []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		res, err := d.Client.Run(ctx, runReq(img))
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		b.StopTimer()
		if _, err := d.Client.Terminate(ctx, res.EnclaveID); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Milliseconds()), "median-ms")
	b.ReportMetric(float64(lat[len(lat)*9/10].Milliseconds()), "p90-ms")
}

// benchEcho pushes 4 MiB per iteration through the enclave's echo service
// and reads it back, reporting the echoed bytes per second.
func benchEcho(b *testing.B, d *parenttest.Daemon, id string) {
	ctx := context.Background()
	c, err := d.Client.Connect(ctx, id, 5000)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 4<<20)
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		done := make(chan error, 1)
		go func() { _, err := c.Write(buf); done <- err }()
		if _, err := io.CopyN(io.Discard, c, int64(len(buf))); err != nil {
			b.Fatal(err)
		}
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVsockEcho compares host↔enclave throughput over the sandbox's
// Unix-socket transport and the microVM's virtio-vsock device in one run.
func BenchmarkVsockEcho(b *testing.B) {
	b.Run("sandbox", func(b *testing.B) {
		d := parenttest.StartDaemon(b, "sandbox", sandboxConfig)
		img := appImage(b, parenttest.ShortTemp(b), "echo", nil, "echo")
		res := d.Run(img, 128, false)
		d.ConsoleUntil(res.EnclaveID, "ECHO READY", time.Minute)
		benchEcho(b, d, res.EnclaveID)
	})
	b.Run("microvm", func(b *testing.B) {
		d, flags := startQEMU(b)
		img := appImage(b, parenttest.ShortTemp(b), "echo", splitFlags(flags), "echo")
		res := d.Run(img, 256, false)
		d.ConsoleUntil(res.EnclaveID, "ECHO READY", 2*time.Minute)
		benchEcho(b, d, res.EnclaveID)
	})
}

// nsmBenchConfig lifts the emulated module's attestation pacing, so that
// the benchmarks below measure the path, not the token bucket.
const nsmBenchConfig = qemuConfig + `nsm:
  attestations_per_second_per_cpu: 1000000
  attestation_burst_per_cpu: 1000000
`

// benchMicroVMNSM runs b.N attestations (what "attest") or DescribePCR
// ("describe") inside one microVM through how ("device": /dev/nsm, served by cloister-init over CUSE and forwarded
// to the emulated module; "stream": the SDK's direct stream to the module,
// the path before /dev/nsm existed) and reports the time the guest
// measured per attestation.
func benchMicroVMNSM(b *testing.B, how, what string) {
	flags := vmFlags(b)
	d := parenttest.StartDaemon(b, "qemu", nsmBenchConfig)
	img := appImage(b, parenttest.ShortTemp(b), "nsmbench", flags, "nsmbench")
	res := d.Run(img, 512, false)
	d.ConsoleUntil(res.EnclaveID, "NSMBENCH READY", 3*time.Minute)
	ctx := context.Background()
	run := func(n int) time.Duration {
		c, err := d.Client.Connect(ctx, res.EnclaveID, 5006)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "%s %s %d\n", how, what, n)
		var ns int64
		if _, err := fmt.Fscanf(c, "%d\n", &ns); err != nil {
			rest, _ := io.ReadAll(c)
			b.Fatalf("nsmbench: %v %s", err, rest)
		}
		return time.Duration(ns)
	}
	run(5) // warm up: connections, page faults
	b.ResetTimer()
	guest := run(b.N)
	b.StopTimer()
	b.ReportMetric(float64(guest.Nanoseconds())/float64(b.N), "guest-ns/"+what)
}

// BenchmarkMicroVMAttestationDevNSM is an attestation through /dev/nsm in
// a microVM (the SDK's path since /dev/nsm exists there).
func BenchmarkMicroVMAttestationDevNSM(b *testing.B) { benchMicroVMNSM(b, "device", "attest") }

// BenchmarkMicroVMAttestationStream is an attestation over the SDK's
// direct stream to the emulated module (the microVM path before /dev/nsm).
func BenchmarkMicroVMAttestationStream(b *testing.B) { benchMicroVMNSM(b, "stream", "attest") }

// BenchmarkMicroVMDescribePCRDevNSM is a DescribePCR through /dev/nsm: the
// cost of the path itself, without the signature.
func BenchmarkMicroVMDescribePCRDevNSM(b *testing.B) { benchMicroVMNSM(b, "device", "describe") }

// BenchmarkMicroVMDescribePCRStream is a DescribePCR over the stream.
func BenchmarkMicroVMDescribePCRStream(b *testing.B) { benchMicroVMNSM(b, "stream", "describe") }

// BenchmarkMicroVMDevNSMRoundTrip is one ioctl that /dev/nsm refuses at
// once (EINVAL): one CUSE round trip through cloister-init, no module.
func BenchmarkMicroVMDevNSMRoundTrip(b *testing.B) { benchMicroVMNSM(b, "device", "einval") }
