package sandbox

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// Console pump limits: at most consoleBacklog bytes wait for the console
// writer, and the pump stops reading (the sandbox's writes block) for at
// most consoleStall while that backlog is full.
const (
	consoleBacklog = 1 << 20
	consoleStall   = time.Second
)

// consolePump drains the sandbox's console pipe (init's standard output
// and error) into a writer. What it reads is appended to a backlog of at
// most consoleBacklog bytes that the writer takes. When the backlog is
// full the reader waits for the writer, as a pipe would, but for at most
// stall: if the writer takes nothing in that time, what the sandbox writes
// is read and dropped (and counted) until the writer takes the backlog,
// and one notice line in the output says how much was lost. A stuck writer
// (the monitor's console log on a stalled disk) therefore blocks init and
// the application for at most stall, never indefinitely.
type consolePump struct {
	r     io.ReadCloser
	w     io.Writer
	stall time.Duration
	wake  chan struct{} // capacity 1: the backlog has something new
	space chan struct{} // capacity 1: the writer has taken the backlog
	done  chan struct{} // closed when everything read has been written

	mu      sync.Mutex
	backlog []byte
	dropped int64 // bytes dropped since the end of backlog
	eof     bool
}

// startConsolePump starts draining r into w (io.Discard when nil), waiting
// at most stall for w when the backlog is full.
func startConsolePump(r io.ReadCloser, w io.Writer, stall time.Duration) *consolePump {
	if w == nil {
		w = io.Discard
	}
	p := &consolePump{r: r, w: w, stall: stall,
		wake: make(chan struct{}, 1), space: make(chan struct{}, 1), done: make(chan struct{})}
	go p.read()
	go p.write()
	return p
}

func (p *consolePump) read() {
	buf := make([]byte, 64<<10) // a pipe's default capacity
	for {
		n, err := p.r.Read(buf)
		p.mu.Lock()
		if n > 0 && p.dropped == 0 && len(p.backlog)+n > consoleBacklog {
			p.waitForSpace(n)
		}
		switch {
		case n == 0:
		case p.dropped == 0 && len(p.backlog)+n <= consoleBacklog:
			p.backlog = append(p.backlog, buf[:n]...)
		default:
			// Once dropping, keep dropping until the writer has taken the
			// backlog, so the notice sits exactly where the gap is.
			p.dropped += int64(n)
		}
		if err != nil {
			p.eof = true
		}
		p.mu.Unlock()
		select {
		case p.wake <- struct{}{}:
		default:
		}
		if err != nil {
			return
		}
	}
}

// waitForSpace waits, for at most p.stall, until the backlog has room for
// n more bytes. It is called and returns with p.mu held.
func (p *consolePump) waitForSpace(n int) {
	t := time.NewTimer(p.stall)
	defer t.Stop()
	for len(p.backlog)+n > consoleBacklog {
		p.mu.Unlock()
		select {
		case <-p.space:
		case <-t.C:
			p.mu.Lock()
			return
		}
		p.mu.Lock()
	}
}

func (p *consolePump) write() {
	defer close(p.done)
	var out []byte
	for range p.wake {
		for {
			p.mu.Lock()
			out, p.backlog = p.backlog, out[:0]
			dropped, eof := p.dropped, p.eof
			p.dropped = 0
			p.mu.Unlock()
			select {
			case p.space <- struct{}{}:
			default:
			}
			if len(out) == 0 && dropped == 0 {
				if eof {
					return
				}
				break
			}
			// Write errors are ignored: the pump must keep draining.
			if len(out) > 0 {
				_, _ = p.w.Write(out)
			}
			if dropped > 0 {
				_, _ = fmt.Fprintf(p.w, "\n[cloister: %d bytes of console output dropped: the console log did not keep up]\n", dropped)
			}
		}
	}
}

// finish waits until the pipe has reached end of stream (every writer,
// that is every process of the sandbox, has closed it) and its contents
// are written, for at most timeout; then it closes the pipe. It reports
// whether everything was written.
func (p *consolePump) finish(timeout time.Duration) bool {
	t := time.NewTimer(timeout)
	defer t.Stop()
	ok := true
	select {
	case <-p.done:
	case <-t.C:
		ok = false
	}
	_ = p.r.Close()
	return ok
}
