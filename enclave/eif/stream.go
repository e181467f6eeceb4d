package eif

import (
	"bufio"
	"crypto"
	"fmt"
	"hash/crc32"
	"io"
)

// WriterOptions configures a [Writer]. The zero value writes an x86_64
// version 4 image with nitro's default_mem and default_cpus.
type WriterOptions struct {
	// Flags is the header flags field: 0 (x86_64) or FlagArm64.
	Flags uint16
}

// Writer streams an EIF to an io.WriteSeeker without holding section data
// in memory. Sections are written in file order, each either whole with
// [Writer.WriteSection] or incrementally between [Writer.BeginSection] and
// [Writer.EndSection]. The writer measures the image as it goes
// ([Writer.Measurements]), can append nitro's signature section
// ([Writer.Sign]) and finally [Writer.Close] seeks back to fill in the
// section sizes, the header and the CRC (computed with CRC-32 combination,
// so no data is read back). The result is byte-identical to [Marshal] of the
// same sections.
type Writer struct {
	w        io.WriteSeeker
	base     int64 // position of the header
	hdr      Header
	types    []SectionType
	pos      int64  // offset (from base) of the next byte
	crc      uint32 // CRC of all section headers and data so far
	crcLen   int64
	m        *Measurer
	open     bool  // inside a section
	secStart int64 // offset of the open section's header
	secType  SectionType
	secSize  int64
	secCRC   uint32
	bw       *bufio.Writer
	err      error
	closed   bool
	signed   bool
}

// NewWriter starts an image at w's current position by writing a
// placeholder header.
func NewWriter(w io.WriteSeeker, opts WriterOptions) (*Writer, error) {
	h := baseHeader(Header{Flags: opts.Flags})
	if err := checkWritable(h); err != nil {
		return nil, err
	}
	base, err := w.Seek(0, io.SeekCurrent)
	if err != nil {
		return nil, fmt.Errorf("eif: writer: %w", err)
	}
	ew := &Writer{w: w, base: base, hdr: h, pos: HeaderSize, m: NewMeasurer()}
	if _, err := w.Write(make([]byte, HeaderSize)); err != nil {
		return nil, fmt.Errorf("eif: write header: %w", err)
	}
	ew.bw = bufio.NewWriterSize(sectionSink{ew}, 1<<20)
	return ew, nil
}

// sectionSink receives buffered section data: it updates the section CRC,
// the measurements and writes to the file.
type sectionSink struct{ ew *Writer }

func (s sectionSink) Write(p []byte) (int, error) {
	ew := s.ew
	ew.secCRC = crc32.Update(ew.secCRC, crc32.IEEETable, p)
	ew.m.Write(p)
	n, err := ew.w.Write(p)
	ew.secSize += int64(n)
	if err == nil && n != len(p) {
		err = io.ErrShortWrite
	}
	return n, err
}

func (ew *Writer) fail(err error) error {
	if ew.err == nil {
		ew.err = err
	}
	return ew.err
}

// BeginSection starts a section of type t and returns the writer for its
// data, valid until [Writer.EndSection].
func (ew *Writer) BeginSection(t SectionType) (io.Writer, error) {
	if ew.err != nil {
		return nil, ew.err
	}
	if ew.closed || ew.open || ew.signed {
		return nil, fmt.Errorf("%w: BeginSection(%s)", ErrState, t)
	}
	if t == SectionInvalid || t > SectionMetadata {
		return nil, fmt.Errorf("%w: %d", ErrSectionType, uint16(t))
	}
	if len(ew.types) == MaxSections {
		return nil, fmt.Errorf("%w: more than %d", ErrTooManySections, MaxSections)
	}
	if _, err := ew.w.Write(make([]byte, SectionHeaderSize)); err != nil {
		return nil, ew.fail(fmt.Errorf("eif: write %s section: %w", t, err))
	}
	ew.open, ew.secStart, ew.secType, ew.secSize, ew.secCRC = true, ew.pos, t, 0, 0
	ew.m.BeginSection(t)
	return sectionData{ew}, nil
}

type sectionData struct{ ew *Writer }

func (d sectionData) Write(p []byte) (int, error) {
	if d.ew.err != nil {
		return 0, d.ew.err
	}
	if !d.ew.open {
		return 0, fmt.Errorf("%w: write after EndSection", ErrState)
	}
	n, err := d.ew.bw.Write(p)
	if err != nil {
		return n, d.ew.fail(fmt.Errorf("eif: write %s section: %w", d.ew.secType, err))
	}
	return n, nil
}

// EndSection completes the open section: it writes its 12-byte header in
// place and records its offset and size in the EIF header.
func (ew *Writer) EndSection() error {
	if ew.err != nil {
		return ew.err
	}
	if !ew.open {
		return fmt.Errorf("%w: EndSection without BeginSection", ErrState)
	}
	if err := ew.bw.Flush(); err != nil {
		return ew.fail(fmt.Errorf("eif: write %s section: %w", ew.secType, err))
	}
	if ew.secType == SectionSignature && ew.secSize > MaxSignatureSize {
		return ew.fail(fmt.Errorf("%w: signature section of %d bytes", ErrTooLarge, ew.secSize))
	}
	sh := sectionHeader(ew.secType, uint64(ew.secSize))
	if _, err := ew.w.Seek(ew.base+ew.secStart, io.SeekStart); err != nil {
		return ew.fail(fmt.Errorf("eif: seek: %w", err))
	}
	if _, err := ew.w.Write(sh); err != nil {
		return ew.fail(fmt.Errorf("eif: write %s section header: %w", ew.secType, err))
	}
	end := ew.secStart + SectionHeaderSize + ew.secSize
	if _, err := ew.w.Seek(ew.base+end, io.SeekStart); err != nil {
		return ew.fail(fmt.Errorf("eif: seek: %w", err))
	}
	i := len(ew.types)
	ew.hdr.SectionOffsets[i] = uint64(ew.secStart)
	ew.hdr.SectionSizes[i] = uint64(ew.secSize)
	ew.types = append(ew.types, ew.secType)
	ew.crc = crc32Combine(ew.crc, crc32.ChecksumIEEE(sh), SectionHeaderSize)
	ew.crc = crc32Combine(ew.crc, ew.secCRC, ew.secSize)
	ew.crcLen += SectionHeaderSize + ew.secSize
	ew.pos = end
	ew.open = false
	return nil
}

// WriteSection writes a whole section of type t with the content of r.
func (ew *Writer) WriteSection(t SectionType, r io.Reader) (int64, error) {
	dst, err := ew.BeginSection(t)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(dst, r)
	if err != nil {
		return n, ew.fail(err)
	}
	return n, ew.EndSection()
}

// Measurements returns the PCRs of the sections written so far (PCR8 once
// [Writer.Sign] was called).
func (ew *Writer) Measurements() Measurements { return ew.m.Sum() }

// Sign appends the signature section over the current PCR0 (see [Sign] for
// the format and accepted keys). It must come after every other section.
func (ew *Writer) Sign(certPEM []byte, key crypto.Signer) error {
	if ew.err != nil {
		return ew.err
	}
	if ew.open || ew.signed || ew.closed {
		return fmt.Errorf("%w: Sign", ErrState)
	}
	cert, err := ParseCertificate(certPEM)
	if err != nil {
		return err
	}
	data, err := signatureSection(certPEM, cert, key, ew.m.Sum().PCR0)
	if err != nil {
		return err
	}
	dst, err := ew.BeginSection(SectionSignature)
	if err != nil {
		return err
	}
	if _, err := dst.Write(data); err != nil {
		return err
	}
	if err := ew.EndSection(); err != nil {
		return err
	}
	ew.m.SetSigningCertificate(cert.Raw)
	ew.signed = true
	return nil
}

// Close checks the section layout (the rules of [Read]), writes the final
// header with the CRC and leaves w positioned at the end of the image. It
// returns the image's measurements. It does not close w.
func (ew *Writer) Close() (Measurements, error) {
	if ew.err != nil {
		return Measurements{}, ew.err
	}
	if ew.open || ew.closed {
		return Measurements{}, fmt.Errorf("%w: Close", ErrState)
	}
	if err := checkLayout(ew.hdr.Version, ew.types); err != nil {
		return Measurements{}, ew.fail(err)
	}
	ew.hdr.NumSections = uint16(len(ew.types))
	hb := ew.hdr.encode()
	ew.hdr.CRC32 = crc32Combine(crc32.ChecksumIEEE(hb[:crcOffset]), ew.crc, ew.crcLen)
	hb = ew.hdr.encode()
	if _, err := ew.w.Seek(ew.base, io.SeekStart); err != nil {
		return Measurements{}, ew.fail(fmt.Errorf("eif: seek: %w", err))
	}
	if _, err := ew.w.Write(hb); err != nil {
		return Measurements{}, ew.fail(fmt.Errorf("eif: write header: %w", err))
	}
	if _, err := ew.w.Seek(ew.base+ew.pos, io.SeekStart); err != nil {
		return Measurements{}, ew.fail(fmt.Errorf("eif: seek: %w", err))
	}
	ew.closed = true
	return ew.m.Sum(), nil
}

// Header returns the header written by Close (valid after Close).
func (ew *Writer) Header() Header { return ew.hdr }
