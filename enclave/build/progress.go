package build

import (
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/term"
)

// byteProgress reports the bytes of one long step (a layer pulled and
// extracted, the EIF written) on Options.Progress. When that is a
// terminal the line is rewritten in place at most every progressInterval;
// otherwise only the final count is written, once.
type byteProgress struct {
	w     io.Writer
	tty   bool
	label string
	n     int64 // bytes of the step (extracted, or written)
	// stored counts a layer's blob as stored (compressed) when it is read
	// through storedReader; the line then says "N extracted (M compressed)".
	stored    int64
	hasStored bool
	last      time.Time
	now       func() time.Time
}

// progressInterval bounds how often a terminal line is rewritten.
const progressInterval = 100 * time.Millisecond

// byteProgress returns a reporter for label, or nil when there is no
// Progress writer (its methods accept a nil receiver).
func (o *Options) byteProgress(label string) *byteProgress {
	if o.Progress == nil {
		return nil
	}
	tty := false
	if f, ok := o.Progress.(*os.File); ok {
		tty = term.IsTerminal(int(f.Fd()))
	}
	return &byteProgress{w: o.Progress, tty: tty, label: label, now: time.Now}
}

func (p *byteProgress) add(n int)       { p.count(&p.n, n) }
func (p *byteProgress) addStored(n int) { p.count(&p.stored, n) }

func (p *byteProgress) count(c *int64, n int) {
	if n <= 0 {
		return
	}
	*c += int64(n)
	if !p.tty {
		return
	}
	if t := p.now(); t.Sub(p.last) >= progressInterval {
		p.last = t
		fmt.Fprintf(p.w, "\r\x1b[K%s", p.line())
	}
}

// line is "label: 1.2 MiB", or for a layer "label: 4.0 MiB extracted
// (1.2 MiB compressed)".
func (p *byteProgress) line() string {
	if p.hasStored {
		return fmt.Sprintf("%s: %s extracted (%s compressed)", p.label, formatBytes(p.n), formatBytes(p.stored))
	}
	return p.label + ": " + formatBytes(p.n)
}

// done writes the final count (and ends the terminal line).
func (p *byteProgress) done() {
	if p == nil {
		return
	}
	if p.tty {
		fmt.Fprint(p.w, "\r\x1b[K")
	}
	fmt.Fprintln(p.w, p.line())
}

// reader counts what is read through r as the step's bytes.
func (p *byteProgress) reader(r io.Reader) io.Reader {
	if p == nil {
		return r
	}
	return &progressReader{r: r, add: p.add}
}

// storedReader counts what is read through r as the stored (compressed)
// bytes of a layer.
func (p *byteProgress) storedReader(r io.Reader) io.Reader {
	if p == nil {
		return r
	}
	p.hasStored = true
	return &progressReader{r: r, add: p.addStored}
}

type progressReader struct {
	r   io.Reader
	add func(int)
}

func (r *progressReader) Read(b []byte) (int, error) {
	n, err := r.r.Read(b)
	r.add(n)
	return n, err
}

// writeSeeker reports how far the output written through w extends (a
// section header rewritten after a seek back does not count twice).
func (p *byteProgress) writeSeeker(w io.WriteSeeker) io.WriteSeeker {
	if p == nil {
		return w
	}
	base, err := w.Seek(0, io.SeekCurrent)
	if err != nil {
		base = 0
	}
	return &progressWriteSeeker{w: w, p: p, pos: base, high: base}
}

type progressWriteSeeker struct {
	w         io.WriteSeeker
	p         *byteProgress
	pos, high int64
}

func (w *progressWriteSeeker) Write(b []byte) (int, error) {
	n, err := w.w.Write(b)
	w.pos += int64(n)
	if w.pos > w.high {
		w.p.add(int(w.pos - w.high))
		w.high = w.pos
	}
	return n, err
}

func (w *progressWriteSeeker) Seek(off int64, whence int) (int64, error) {
	pos, err := w.w.Seek(off, whence)
	if err == nil {
		w.pos = pos
	}
	return pos, err
}

// formatBytes is n in B, KiB, MiB or GiB with one decimal.
func formatBytes(n int64) string {
	const k = 1024
	switch {
	case n < k:
		return fmt.Sprintf("%d B", n)
	case n < k*k:
		return fmt.Sprintf("%.1f KiB", float64(n)/k)
	case n < k*k*k:
		return fmt.Sprintf("%.1f MiB", float64(n)/(k*k))
	}
	return fmt.Sprintf("%.1f GiB", float64(n)/(k*k*k))
}
