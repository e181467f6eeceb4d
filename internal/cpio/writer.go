package cpio

import (
	"fmt"
	"io"
)

// Writer writes a newc archive to an underlying io.Writer. Call
// [Writer.WriteHeader] for each entry, write exactly Header.Size bytes of
// data with [Writer.Write], and finish with [Writer.Close], which writes the
// trailer. The output depends only on the headers and data given.
type Writer struct {
	w         io.Writer
	n         int64 // bytes written so far
	remaining int64 // data bytes still expected for the current entry
	padding   int64 // padding owed after the current entry's data
	closed    bool
	err       error
	buf       [headerLen]byte
}

// NewWriter returns a Writer writing to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// Written returns the number of bytes written to the underlying writer.
func (w *Writer) Written() int64 { return w.n }

func (w *Writer) write(p []byte) error {
	if w.err != nil {
		return w.err
	}
	n, err := w.w.Write(p)
	w.n += int64(n)
	if err == nil && n != len(p) {
		err = io.ErrShortWrite
	}
	if err != nil {
		w.err = err
	}
	return err
}

var zeros [4]byte

// WriteHeader finishes the previous entry (its data must be complete) and
// writes hdr. It checks that the name is non-empty, has no NUL byte and is
// at most MaxNameLen bytes, and that Size fits in 32 bits (MaxFileSize).
func (w *Writer) WriteHeader(hdr *Header) error {
	if w.closed {
		return ErrClosed
	}
	if err := w.finishEntry(); err != nil {
		return err
	}
	if hdr.Name == "" || len(hdr.Name) > MaxNameLen {
		return fmt.Errorf("%w: name length %d", ErrInvalidHeader, len(hdr.Name))
	}
	for i := 0; i < len(hdr.Name); i++ {
		if hdr.Name[i] == 0 {
			return fmt.Errorf("%w: name %q contains NUL", ErrInvalidHeader, hdr.Name)
		}
	}
	if hdr.Size < 0 || hdr.Size > MaxFileSize {
		return fmt.Errorf("%w: %s: size %d does not fit in 32 bits", ErrInvalidHeader, hdr.Name, hdr.Size)
	}
	return w.writeHeader(hdr)
}

func (w *Writer) writeHeader(hdr *Header) error {
	b := w.buf[:]
	copy(b, Magic)
	if hdr.Check != 0 {
		copy(b, MagicCRC)
	}
	fields := [13]uint32{
		hdr.Ino, hdr.Mode, hdr.UID, hdr.GID, hdr.Nlink, hdr.Mtime, uint32(hdr.Size),
		hdr.DevMajor, hdr.DevMinor, hdr.RDevMajor, hdr.RDevMinor,
		uint32(len(hdr.Name) + 1), hdr.Check,
	}
	const hexdigits = "0123456789ABCDEF"
	for i, v := range fields {
		o := 6 + 8*i
		for j := 7; j >= 0; j-- {
			b[o+j] = hexdigits[v&0xF]
			v >>= 4
		}
	}
	if err := w.write(b); err != nil {
		return err
	}
	if err := w.write([]byte(hdr.Name)); err != nil {
		return err
	}
	nameEnd := int64(headerLen + len(hdr.Name) + 1)
	if err := w.write(zeros[:1+pad4(nameEnd)]); err != nil {
		return err
	}
	w.remaining = hdr.Size
	w.padding = pad4(hdr.Size)
	return nil
}

// Write writes data of the current entry. Writing more than Header.Size
// bytes in total returns ErrWriteTooLong.
func (w *Writer) Write(p []byte) (int, error) {
	if w.closed {
		return 0, ErrClosed
	}
	if int64(len(p)) > w.remaining {
		return 0, fmt.Errorf("%w: %d bytes left in entry, got %d", ErrWriteTooLong, w.remaining, len(p))
	}
	if w.err != nil {
		return 0, w.err
	}
	n, err := w.w.Write(p)
	w.n += int64(n)
	w.remaining -= int64(n)
	if err == nil && n != len(p) {
		err = io.ErrShortWrite
	}
	if err != nil {
		w.err = err
	}
	return n, err
}

// ReadFrom copies the current entry's data from r (io.ReaderFrom), reading
// at most the bytes the entry still expects.
func (w *Writer) ReadFrom(r io.Reader) (int64, error) {
	var total int64
	buf := make([]byte, 256<<10)
	for w.remaining > 0 {
		chunk := buf
		if int64(len(chunk)) > w.remaining {
			chunk = chunk[:w.remaining]
		}
		n, err := r.Read(chunk)
		if n > 0 {
			m, werr := w.Write(chunk[:n])
			total += int64(m)
			if werr != nil {
				return total, werr
			}
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

func (w *Writer) finishEntry() error {
	if w.remaining != 0 {
		return fmt.Errorf("%w: %d bytes missing", ErrShortWrite, w.remaining)
	}
	if w.padding != 0 {
		if err := w.write(zeros[:w.padding]); err != nil {
			return err
		}
		w.padding = 0
	}
	return w.err
}

// Close completes the last entry, writes the TRAILER!!! entry and pads the
// archive to a multiple of 4 bytes. It does not close the underlying writer.
func (w *Writer) Close() error {
	if w.closed {
		return ErrClosed
	}
	if err := w.finishEntry(); err != nil {
		return err
	}
	if err := w.writeHeader(&Header{Name: TrailerName, Nlink: 1}); err != nil {
		return err
	}
	w.closed = true
	return w.err
}
