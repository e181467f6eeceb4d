package daemon

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloister/cloister/parent/backend"
	"github.com/google/go-cmp/cmp"
)

func readOr(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return "<none>"
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestConsoleLogRotates: console.log never exceeds the cap; a write that
// does not fit moves it to console.log.1; a write larger than the cap
// keeps its end.
func TestConsoleLogRotates(t *testing.T) {
	dir := backend.Dir(t.TempDir())
	c, err := openConsoleLog(dir.Console(), 100)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	type files struct{ Current, Rotated string }
	steps := []struct {
		write string
		want  files
	}{
		{strings.Repeat("a", 60), files{strings.Repeat("a", 60), "<none>"}},
		{strings.Repeat("b", 40), files{strings.Repeat("a", 60) + strings.Repeat("b", 40), "<none>"}},
		{"c", files{"c", strings.Repeat("a", 60) + strings.Repeat("b", 40)}},
		{strings.Repeat("d", 150) + strings.Repeat("e", 100), files{strings.Repeat("e", 100), "c"}},
	}
	for i, s := range steps {
		n, err := c.Write([]byte(s.write))
		if err != nil || n != len(s.write) {
			t.Fatalf("step %d: Write = %d, %v", i, n, err)
		}
		got := files{readOr(t, dir.Console()), readOr(t, dir.ConsoleRotated())}
		if diff := cmp.Diff(s.want, got); diff != "" {
			t.Errorf("step %d (-want +got):\n%s", i, diff)
		}
	}
	// Reopening keeps appending within the cap.
	c.Close()
	if _, err := c.Write([]byte("x")); err == nil {
		t.Error("Write after Close succeeded")
	}
	c2, err := openConsoleLog(dir.Console(), 100)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if _, err := c2.Write([]byte("f")); err != nil {
		t.Fatal(err)
	}
	if got := readOr(t, dir.ConsoleRotated()); got != strings.Repeat("e", 100) {
		t.Errorf("after reopening, a write over the cap did not rotate: console.log.1 = %q", got)
	}
}

// syncBuf is a bytes.Buffer safe for a writer and a reader goroutine.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestCopyConsoleFollowsRotations: a follower that keeps up sees every
// line, in order, across rotations, then the last lines once the enclave
// has ended; a replay shows console.log.1 then console.log.
func TestCopyConsoleFollowsRotations(t *testing.T) {
	dir := backend.Dir(t.TempDir())
	c, err := openConsoleLog(dir.Console(), 64)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("line 00 before the follower\n")); err != nil {
		t.Fatal(err)
	}
	out := &syncBuf{}
	done := make(chan struct{})
	res := make(chan error, 1)
	go func() { res <- copyConsole(context.Background(), out, nil, dir, true, done) }()
	var want strings.Builder
	want.WriteString("line 00 before the follower\n")
	for i := 1; i <= 12; i++ {
		line := fmt.Sprintf("line %02d of the enclave's console\n", i)
		want.WriteString(line)
		if _, err := c.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
		// Let the follower catch up (a bound, not an assertion).
		for deadline := time.Now().Add(time.Minute); !strings.HasSuffix(out.String(), line) && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
		}
	}
	last := "the enclave's last words\n"
	want.WriteString(last)
	if _, err := c.Write([]byte(last)); err != nil {
		t.Fatal(err)
	}
	close(done)
	if err := <-res; err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want.String(), out.String()); diff != "" {
		t.Errorf("followed console (-want +got):\n%s", diff)
	}

	var replay strings.Builder
	if err := copyConsole(context.Background(), &replay, nil, dir, false, nil); err != nil {
		t.Fatal(err)
	}
	wantReplay := readOr(t, dir.ConsoleRotated()) + readOr(t, dir.Console())
	if replay.String() != wantReplay || !strings.HasSuffix(replay.String(), last) {
		t.Errorf("replay = %q, want %q", replay.String(), wantReplay)
	}
}

// BenchmarkConsoleLogWrite measures the kept console's write path (one
// 4 KiB write, rotating every 4 MiB).
func BenchmarkConsoleLogWrite(b *testing.B) {
	c, err := openConsoleLog(backend.Dir(b.TempDir()).Console(), 4<<20)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := bytes.Repeat([]byte("x"), 4096)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
}
