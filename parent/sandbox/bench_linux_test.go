//go:build linux

package sandbox

import (
	"context"
	"strconv"
	"testing"

	"github.com/cloister/cloister/internal/hybrid"
	"github.com/cloister/cloister/internal/wellknown"
)

// benchProbe runs one vsockprobe benchmark mode with n = b.N in a
// sandbox (supervised when nitro) and reports its ns/op.
func benchProbe(b *testing.B, nitro *Nitro, before func(d string), args ...string) {
	pr := startProbe(b, probeOpts{nitro: nitro, before: before}, append(args, strconv.Itoa(b.N))...)
	got := pr.results(b)
	if got["error"] != "" {
		b.Fatalf("probe: %s", got["error"])
	}
	ns, err := strconv.ParseFloat(got["ns_per_op"], 64)
	if err != nil {
		b.Fatalf("ns_per_op %q", got["ns_per_op"])
	}
	b.ReportMetric(ns, "probe-ns/op")
}

// BenchmarkSandboxParentConnect: one connection to the parent's echo port
// with a byte there and back, from an unmodified program (AF_VSOCK to CID
// 3, emulated by the supervisor) and from the SDK's path in the sandbox
// (a Unix connect to /run/cloister/vsock/host/vsock_<port>), with and
// without the supervisor (its connect is then notified and continued).
func BenchmarkSandboxParentConnect(b *testing.B) {
	echo := func(d string) { parentEcho(b, d, 5000) }
	b.Run("vsock-emulated", func(b *testing.B) { benchProbe(b, &Nitro{}, echo, "bench-connect", "vsock", "5000") })
	b.Run("sdk-unix-supervised", func(b *testing.B) { benchProbe(b, &Nitro{}, echo, "bench-connect", "unix", "5000") })
	b.Run("sdk-unix-unsupervised", func(b *testing.B) { benchProbe(b, nil, echo, "bench-connect", "unix", "5000") })
}

// BenchmarkSandboxParentRoundTrip: 64-byte round trips on one connection
// (the supervisor is not involved once connected: an emulated socket is a
// Unix socket).
func BenchmarkSandboxParentRoundTrip(b *testing.B) {
	echo := func(d string) { parentEcho(b, d, 5000) }
	b.Run("vsock-emulated", func(b *testing.B) { benchProbe(b, &Nitro{}, echo, "bench-rtt", "vsock", "5000") })
	b.Run("sdk-unix-unsupervised", func(b *testing.B) { benchProbe(b, nil, echo, "bench-rtt", "unix", "5000") })
}

// BenchmarkSandboxNSM: GetRandom and Attestation through /dev/nsm (the supervisor reads
// and writes the caller's buffers and calls the emulator in-process)
// against the SDK's stream path (frames over a Unix socket to the
// emulator's port), with the same emulator.
func BenchmarkSandboxNSM(b *testing.B) {
	emu := newEmulator(b)
	serve := func(d string) {
		l, err := hybrid.Listen(d+"/host/vsock", wellknown.NSMPort)
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		b.Cleanup(func() { cancel(); l.Close() })
		go func() { _ = emu.Serve(ctx, l) }()
	}
	nitro := &Nitro{NSM: emulatorNSM{emu}}
	for _, req := range []string{"random", "attest"} {
		b.Run(req+"/ioctl", func(b *testing.B) { benchProbe(b, nitro, serve, "bench-nsm", "ioctl", req) })
		b.Run(req+"/stream-supervised", func(b *testing.B) { benchProbe(b, nitro, serve, "bench-nsm", "stream", req) })
		b.Run(req+"/stream-unsupervised", func(b *testing.B) { benchProbe(b, nil, serve, "bench-nsm", "stream", req) })
	}
}
