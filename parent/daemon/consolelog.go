package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/cloister/cloister/parent/backend"
)

// consoleLog is an enclave's kept console: D/console.log, capped at max
// bytes. A write that would take it over max first renames it to
// console.log.1 (replacing the previous one) and starts a new console.log,
// so the newest output is kept: once more than max bytes were written, the
// two files hold between max and 2×max bytes. A single write larger than
// max keeps only its last max bytes. It is safe for concurrent use.
type consoleLog struct {
	mu   sync.Mutex
	path string
	max  int64
	f    *os.File
	size int64
}

// openConsoleLog opens (appending) or creates the console log at path,
// mode 0600, capped at max bytes (max > 0).
func openConsoleLog(path string, max int64) (*consoleLog, error) {
	if max <= 0 {
		return nil, fmt.Errorf("daemon: console log cap %d is not positive", max)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("daemon: open console log: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("daemon: open console log: %w", err)
	}
	return &consoleLog{path: path, max: max, f: f, size: fi.Size()}, nil
}

// Write appends p, rotating first if p does not fit. It reports len(p)
// written unless the file system failed.
func (c *consoleLog) Write(p []byte) (int, error) {
	n := len(p)
	if int64(len(p)) > c.max {
		p = p[int64(len(p))-c.max:]
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.f == nil {
		return 0, os.ErrClosed
	}
	if c.size > 0 && c.size+int64(len(p)) > c.max {
		if err := c.rotate(); err != nil {
			return 0, err
		}
	}
	w, err := c.f.Write(p)
	c.size += int64(w)
	if err != nil {
		return 0, fmt.Errorf("daemon: console log: %w", err)
	}
	return n, nil
}

// rotate moves console.log to console.log.1 and starts an empty one. If
// the rename fails the log is emptied in place instead, so the cap holds.
func (c *consoleLog) rotate() error {
	if err := os.Rename(c.path, c.path+".1"); err != nil {
		if terr := c.f.Truncate(0); terr != nil {
			return fmt.Errorf("daemon: console log: rotate: %w; truncate: %w", err, terr)
		}
		c.size = 0
		return nil
	}
	f, err := os.OpenFile(c.path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("daemon: console log: rotate: %w", err)
	}
	c.f.Close()
	c.f, c.size = f, 0
	return nil
}

// Close closes the log; later writes fail with os.ErrClosed.
func (c *consoleLog) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.f == nil {
		return nil
	}
	err := c.f.Close()
	c.f = nil
	return err
}

// consolePoll is how often a follower looks for new console output.
const consolePoll = 50 * time.Millisecond

// copyConsole writes the kept console of the enclave directory dir to w:
// console.log.1 (older output), if any, then console.log. With follow it
// then streams what is appended, following console.log across rotations
// (a follower slower than the enclave misses whole rotated files, never
// parts of the current one), until done is closed — it then writes what is
// left and returns — or ctx ends. flush, when not nil, runs after each
// write. It returns the error of w, or nil.
func copyConsole(ctx context.Context, w io.Writer, flush func(), dir backend.Dir, follow bool, done <-chan struct{}) error {
	path := dir.Console()
	cur, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("daemon: open console log: %w", err)
	}
	defer func() { cur.Close() }()
	buf := make([]byte, 32<<10)
	copyAll := func(f *os.File) error {
		for {
			n, rerr := f.Read(buf)
			if n > 0 {
				if _, err := w.Write(buf[:n]); err != nil {
					return err
				}
				if flush != nil {
					flush()
				}
			}
			if rerr != nil {
				return nil // end of file (or a read error: nothing more to send)
			}
		}
	}
	if old, err := os.Open(dir.ConsoleRotated()); err == nil {
		// If console.log was rotated between the two opens, old is the
		// file cur already reads: skip it.
		if !sameFile(old, cur) {
			err = copyAll(old)
		}
		old.Close()
		if err != nil {
			return err
		}
	}
	final := false
	for {
		if err := copyAll(cur); err != nil {
			return err
		}
		if !follow {
			return nil
		}
		// At the end of cur: a newer console.log means cur was rotated.
		if next, err := os.Open(path); err == nil {
			if !sameFile(next, cur) {
				if err := copyAll(cur); err != nil {
					next.Close()
					return err
				}
				cur.Close()
				cur = next
				continue
			}
			next.Close()
		}
		if final {
			return nil
		}
		select {
		case <-done:
			// The enclave ended: its last output is written. One more
			// pass reads it, across a last rotation if there was one.
			final = true
		case <-ctx.Done():
			return nil
		case <-time.After(consolePoll):
		}
	}
}

// sameFile reports whether a and b are the same file (device and inode).
func sameFile(a, b *os.File) bool {
	ai, aerr := a.Stat()
	bi, berr := b.Stat()
	return aerr == nil && berr == nil && os.SameFile(ai, bi)
}
