package sandbox

import (
	"bytes"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// chunkReader returns chunks one Read at a time, then io.EOF, and closes
// eof when it has returned io.EOF.
type chunkReader struct {
	chunks [][]byte
	eof    chan struct{}
	once   sync.Once
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.chunks) == 0 {
		r.once.Do(func() { close(r.eof) })
		return 0, io.EOF
	}
	n := copy(p, r.chunks[0])
	r.chunks = r.chunks[1:]
	return n, nil
}

func (r *chunkReader) Close() error { return nil }

// stuckWriter blocks every Write until release is closed; started is
// closed by the first Write.
type stuckWriter struct {
	release chan struct{}
	started chan struct{}
	once    sync.Once
	mu      sync.Mutex
	out     bytes.Buffer
}

func (w *stuckWriter) Write(p []byte) (int, error) {
	w.once.Do(func() { close(w.started) })
	<-w.release
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.out.Write(p)
}

// TestConsolePumpNeverBlocksTheSandbox: with the console writer stuck, the
// pump still reads the sandbox's output to the end (a real pipe would
// otherwise fill and block init) once its stall time has passed; it keeps
// what its backlog holds, drops the rest, and says how much it dropped
// once the writer moves again.
func TestConsolePumpNeverBlocksTheSandbox(t *testing.T) {
	// The first chunk is taken by the writer, which then blocks; the
	// backlog fills with the next ones up to consoleBacklog bytes; the
	// rest is dropped.
	chunk := bytes.Repeat([]byte("x"), 1000)
	n := 1 + consoleBacklog/len(chunk) + 500
	var chunks [][]byte
	for i := range n {
		c := append([]byte(nil), chunk...)
		copy(c, fmt.Sprintf("chunk %06d\n", i))
		chunks = append(chunks, c)
	}
	r := &chunkReader{chunks: chunks, eof: make(chan struct{})}
	w := &stuckWriter{release: make(chan struct{}), started: make(chan struct{})}
	p := startConsolePump(&gatedReader{r: r, gate: w.started}, w, 10*time.Millisecond)
	select {
	case <-r.eof:
	case <-time.After(time.Minute):
		t.Fatal("the pump stopped reading while its writer was stuck")
	}
	close(w.release)
	if !p.finish(time.Minute) {
		t.Fatal("the pump did not finish writing")
	}
	var want bytes.Buffer
	var dropped int
	for i, c := range chunks {
		if i <= consoleBacklog/len(chunk) {
			want.Write(c)
		} else {
			dropped += len(c)
		}
	}
	fmt.Fprintf(&want, "\n[cloister: %d bytes of console output dropped: the console log did not keep up]\n", dropped)
	if got := w.out.String(); got != want.String() {
		t.Errorf("console: got %d bytes, want %d; got ends %q, want ends %q", len(got), want.Len(), got[max(0, len(got)-200):], want.String()[want.Len()-200:])
	}
}

// gatedReader returns the first chunk of r at once, and the rest only once
// gate is closed (the writer has received the first chunk).
type gatedReader struct {
	r     *chunkReader
	gate  chan struct{}
	reads int
}

func (g *gatedReader) Read(p []byte) (int, error) {
	if g.reads == 1 {
		<-g.gate
	}
	g.reads++
	return g.r.Read(p)
}

func (g *gatedReader) Close() error { return nil }

// TestConsolePumpKeepsEverything: a writer that keeps up gets every byte,
// in order, and no notice.
func TestConsolePumpKeepsEverything(t *testing.T) {
	pr, pw := io.Pipe()
	var out bytes.Buffer
	p := startConsolePump(pr, &out, consoleStall)
	var want bytes.Buffer
	for i := range 5000 {
		line := fmt.Sprintf("line %d\n", i)
		want.WriteString(line)
		if _, err := io.WriteString(pw, line); err != nil {
			t.Fatal(err)
		}
	}
	pw.Close()
	if !p.finish(time.Minute) {
		t.Fatal("the pump did not finish")
	}
	if diff := cmp.Diff(want.String(), out.String()); diff != "" {
		t.Errorf("console (-want +got):\n%s", diff)
	}
}

// BenchmarkConsolePump measures the console path of a sandbox flooding
// its standard output: a pipe, drained by the pump into a writer.
func BenchmarkConsolePump(b *testing.B) {
	pr, pw := io.Pipe()
	p := startConsolePump(pr, io.Discard, consoleStall)
	buf := bytes.Repeat([]byte("x"), 4096)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := pw.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	pw.Close()
	p.finish(time.Minute)
}
