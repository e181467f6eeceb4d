package hybrid_test

import (
	"context"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/cloister/cloister/internal/hybrid"
)

// The benchmarks compare a host → enclave connection made through the hybrid
// Server (client → CONNECT socket → UnixConnector, which hands the client's
// socket to the enclave listener) with a direct Unix connection to the same
// kind of listener. Run:
//
//	go test -run '^$' -bench . ./internal/hybrid

// benchPair returns the client end of a hybrid connection (hybrid=true) or
// of a direct Unix connection, whose far end is served by serve.
func benchPair(b *testing.B, hybridPath bool, serve func(net.Conn)) net.Conn {
	b.Helper()
	w := newWorld(b, nil)
	l := w.guestListen(b, 1)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go serve(c)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var c net.Conn
	var err error
	if hybridPath {
		c, err = hybrid.Dial(ctx, w.sock, 1, nil)
	} else {
		var d net.Dialer
		c, err = d.DialContext(ctx, "unix", filepath.Join(w.dir, "guest", "vsock_1"))
		if err == nil {
			err = hybrid.SendRelay(c)
		}
	}
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

func echoConn(c net.Conn) {
	defer c.Close()
	buf := make([]byte, 1)
	for {
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		if _, err := c.Write(buf); err != nil {
			return
		}
	}
}

func benchRoundTrip(b *testing.B, hybridPath bool) {
	c := benchPair(b, hybridPath, echoConn)
	buf := []byte{0x42}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHybridRoundTrip: 1-byte ping-pong through the hybrid relay.
func BenchmarkHybridRoundTrip(b *testing.B) { benchRoundTrip(b, true) }

// BenchmarkUnixRoundTrip: 1-byte ping-pong over a direct Unix connection.
func BenchmarkUnixRoundTrip(b *testing.B) { benchRoundTrip(b, false) }

const chunk = 256 << 10

func benchThroughput(b *testing.B, hybridPath bool) {
	// The far end discards everything and acknowledges the end of stream
	// with one byte, so the measurement includes delivery of the last byte.
	c := benchPair(b, hybridPath, func(c net.Conn) {
		defer c.Close()
		if _, err := io.Copy(io.Discard, c); err == nil {
			c.Write([]byte{1})
		}
	})
	buf := make([]byte, chunk)
	b.SetBytes(chunk)
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		b.Fatal(err)
	}
	if _, err := io.ReadFull(c, buf[:1]); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkHybridThroughput: bulk transfer through the hybrid relay.
func BenchmarkHybridThroughput(b *testing.B) { benchThroughput(b, true) }

// BenchmarkUnixThroughput: bulk transfer over a direct Unix connection.
func BenchmarkUnixThroughput(b *testing.B) { benchThroughput(b, false) }

// The ratio benchmarks interleave the hybrid and the direct path in one loop
// so that both see the same machine load (the absolute numbers above drift
// on a shared machine), and report both and their ratio.

// BenchmarkRoundTripRatio: 1-byte ping-pong, hybrid and direct alternately.
func BenchmarkRoundTripRatio(b *testing.B) {
	hc := benchPair(b, true, echoConn)
	uc := benchPair(b, false, echoConn)
	buf := []byte{0x42}
	rt := func(c net.Conn) time.Duration {
		t0 := time.Now()
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
		return time.Since(t0)
	}
	var th, tu time.Duration
	n := 0
	for b.Loop() {
		th += rt(hc)
		tu += rt(uc)
		n++
	}
	b.ReportMetric(float64(th.Nanoseconds())/float64(n), "hybrid-ns/rt")
	b.ReportMetric(float64(tu.Nanoseconds())/float64(n), "unix-ns/rt")
	b.ReportMetric(float64(th)/float64(tu), "latency-ratio")
}

// BenchmarkThroughputRatio: 4 MiB blocks, each acknowledged by the far end,
// hybrid and direct alternately.
func BenchmarkThroughputRatio(b *testing.B) {
	const block = 4 << 20
	sink := func(c net.Conn) {
		defer c.Close()
		buf := make([]byte, block)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			if _, err := c.Write([]byte{1}); err != nil {
				return
			}
		}
	}
	hc := benchPair(b, true, sink)
	uc := benchPair(b, false, sink)
	data := make([]byte, block)
	ack := make([]byte, 1)
	send := func(c net.Conn) time.Duration {
		t0 := time.Now()
		if _, err := c.Write(data); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, ack); err != nil {
			b.Fatal(err)
		}
		return time.Since(t0)
	}
	var th, tu time.Duration
	n := 0
	for b.Loop() {
		th += send(hc)
		tu += send(uc)
		n++
	}
	mb := float64(n) * block / 1e6
	b.ReportMetric(mb/th.Seconds(), "hybrid-MB/s")
	b.ReportMetric(mb/tu.Seconds(), "unix-MB/s")
	b.ReportMetric(tu.Seconds()/th.Seconds(), "throughput-ratio")
}

// BenchmarkUnixConnectorConnect measures one host → enclave connection
// setup in the sandbox world: UnixConnector.ConnectGuest (open the
// listener name without following links, check it, connect through
// /proc/self/fd, send the relay marker) and the enclave listener's Accept.
func BenchmarkUnixConnectorConnect(b *testing.B) {
	w := newWorld(b, nil)
	l := w.guestListen(b, 1)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	conn := hybrid.UnixConnector{Dir: filepath.Join(w.dir, "guest")}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		c, err := conn.ConnectGuest(ctx, 1)
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}
