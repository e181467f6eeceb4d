package cpio

import (
	"bytes"
	"errors"
	"fmt"
	"io"
)

// Limits bounds what a [Reader] accepts. Zero fields take the defaults
// given on each field.
type Limits struct {
	// MaxNameSize is the largest accepted name size including its NUL
	// (default 4096, PATH_MAX).
	MaxNameSize int
	// MaxFileSize is the largest accepted entry data size (default
	// 4 GiB - 1, the format's maximum).
	MaxFileSize int64
	// MaxSymlinkSize is the largest accepted symbolic link target (default 4096).
	MaxSymlinkSize int64
	// MaxEntries is the largest number of entries, trailer excluded (default 1<<22).
	MaxEntries int
}

func (l Limits) withDefaults() Limits {
	if l.MaxNameSize <= 0 {
		l.MaxNameSize = 4096
	}
	if l.MaxFileSize <= 0 {
		l.MaxFileSize = 1<<32 - 1
	}
	if l.MaxSymlinkSize <= 0 {
		l.MaxSymlinkSize = 4096
	}
	if l.MaxEntries <= 0 {
		l.MaxEntries = 1 << 22
	}
	return l
}

// Reader reads a newc archive (magic 070701, or 070702 whose checksums it
// verifies) from an io.Reader. [Reader.Next] returns each header in turn
// and io.EOF after the TRAILER!!! entry; [Reader.Read] returns the current
// entry's data. Input ending before the trailer is an error
// (io.ErrUnexpectedEOF wrapped with ErrFormat).
type Reader struct {
	r         io.Reader
	lim       Limits
	off       int64 // bytes consumed from r
	remaining int64 // data bytes of the current entry not yet read
	padding   int64
	entries   int
	crc       bool
	check     uint32 // expected checksum of the current entry
	sum       uint32 // running checksum
	done      bool
	err       error
}

// NewReader returns a Reader reading from r with the given limits.
func NewReader(r io.Reader, lim Limits) *Reader {
	return &Reader{r: r, lim: lim.withDefaults()}
}

// Offset returns the number of bytes consumed from the underlying reader.
func (r *Reader) Offset() int64 { return r.off }

func (r *Reader) fail(err error) error {
	if r.err == nil {
		r.err = err
	}
	return r.err
}

func (r *Reader) readFull(p []byte) error {
	n, err := io.ReadFull(r.r, p)
	r.off += int64(n)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return fmt.Errorf("%w: truncated at offset %d: %w", ErrFormat, r.off, io.ErrUnexpectedEOF)
	}
	return err
}

func (r *Reader) skip(n int64) error {
	m, err := io.CopyN(io.Discard, r.r, n)
	r.off += m
	if err == io.EOF {
		return fmt.Errorf("%w: truncated at offset %d: %w", ErrFormat, r.off, io.ErrUnexpectedEOF)
	}
	return err
}

// Next skips the rest of the current entry and returns the next header.
// It returns io.EOF after the trailer. It validates the magic, that every
// field is 8 hexadecimal digits, the name size and NUL terminator, the
// limits, and that symbolic links and directories have sane sizes.
func (r *Reader) Next() (*Header, error) {
	if r.err != nil {
		return nil, r.err
	}
	if r.done {
		return nil, io.EOF
	}
	if r.remaining > 0 {
		if err := r.drainData(); err != nil {
			return nil, r.fail(err)
		}
	}
	if r.padding > 0 {
		if err := r.skip(r.padding); err != nil {
			return nil, r.fail(err)
		}
		r.padding = 0
	}
	start := r.off
	var b [headerLen]byte
	if err := r.readFull(b[:]); err != nil {
		return nil, r.fail(err)
	}
	var crc bool
	switch string(b[:6]) {
	case Magic:
	case MagicCRC:
		crc = true
	default:
		return nil, r.fail(fmt.Errorf("%w: bad magic %q at offset %d", ErrFormat, b[:6], start))
	}
	var f [13]uint32
	for i := range f {
		v, ok := parseHex(b[6+8*i : 14+8*i])
		if !ok {
			return nil, r.fail(fmt.Errorf("%w: field %d of header at offset %d is not hexadecimal", ErrFormat, i, start))
		}
		f[i] = v
	}
	h := &Header{
		Ino: f[0], Mode: f[1], UID: f[2], GID: f[3], Nlink: f[4], Mtime: f[5], Size: int64(f[6]),
		DevMajor: f[7], DevMinor: f[8], RDevMajor: f[9], RDevMinor: f[10], Check: f[12],
	}
	namesize := int64(f[11])
	if namesize < 2 || namesize > int64(r.lim.MaxNameSize) {
		return nil, r.fail(fmt.Errorf("%w: name size %d at offset %d (limit %d)", ErrLimit, namesize, start, r.lim.MaxNameSize))
	}
	name := make([]byte, namesize)
	if err := r.readFull(name); err != nil {
		return nil, r.fail(err)
	}
	if name[namesize-1] != 0 || bytes.IndexByte(name[:namesize-1], 0) >= 0 {
		return nil, r.fail(fmt.Errorf("%w: name at offset %d is not a NUL-terminated string", ErrFormat, start))
	}
	h.Name = string(name[:namesize-1])
	if err := r.skip(pad4(headerLen + namesize)); err != nil {
		return nil, r.fail(err)
	}
	if !crc && h.Check != 0 {
		return nil, r.fail(fmt.Errorf("%w: %q: non-zero check field with magic %s", ErrFormat, h.Name, Magic))
	}
	if h.Name == TrailerName {
		r.done = true
		if h.Size != 0 {
			return nil, r.fail(fmt.Errorf("%w: trailer with data", ErrFormat))
		}
		return nil, io.EOF
	}
	r.entries++
	if r.entries > r.lim.MaxEntries {
		return nil, r.fail(fmt.Errorf("%w: more than %d entries", ErrLimit, r.lim.MaxEntries))
	}
	if h.Size > r.lim.MaxFileSize {
		return nil, r.fail(fmt.Errorf("%w: %q: size %d (limit %d)", ErrLimit, h.Name, h.Size, r.lim.MaxFileSize))
	}
	switch h.Type() {
	case TypeReg:
	case TypeSymlink:
		if h.Size == 0 || h.Size > r.lim.MaxSymlinkSize {
			return nil, r.fail(fmt.Errorf("%w: %q: symbolic link target size %d", ErrFormat, h.Name, h.Size))
		}
	case TypeDir, TypeChar, TypeBlock, TypeFifo, TypeSocket:
		if h.Size != 0 {
			return nil, r.fail(fmt.Errorf("%w: %q: %#o entry with data", ErrFormat, h.Name, h.Type()))
		}
	default:
		return nil, r.fail(fmt.Errorf("%w: %q: unknown file type %#o", ErrFormat, h.Name, h.Type()))
	}
	r.remaining = h.Size
	r.padding = pad4(h.Size)
	r.crc, r.check, r.sum = crc, h.Check, 0
	if r.remaining == 0 && crc && h.Check != 0 {
		return nil, r.fail(fmt.Errorf("%w: %q: checksum mismatch", ErrFormat, h.Name))
	}
	return h, nil
}

// Read reads data of the current entry; it returns io.EOF at its end.
func (r *Reader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if r.remaining == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.remaining {
		p = p[:r.remaining]
	}
	n, err := r.r.Read(p)
	r.off += int64(n)
	r.remaining -= int64(n)
	if r.crc {
		for _, c := range p[:n] {
			r.sum += uint32(c)
		}
		if r.remaining == 0 && r.sum != r.check {
			return n, r.fail(fmt.Errorf("%w: checksum mismatch", ErrFormat))
		}
	}
	if err == io.EOF {
		if r.remaining > 0 {
			return n, r.fail(fmt.Errorf("%w: truncated entry data: %w", ErrFormat, io.ErrUnexpectedEOF))
		}
		err = nil
	}
	if err != nil {
		return n, r.fail(err)
	}
	return n, nil
}

func (r *Reader) drainData() error {
	var buf [32 << 10]byte
	for r.remaining > 0 {
		_, err := r.Read(buf[:])
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
	}
	return nil
}

func parseHex(b []byte) (uint32, bool) {
	var v uint32
	for _, c := range b {
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, false
		}
		v = v<<4 | uint32(d)
	}
	return v, true
}
