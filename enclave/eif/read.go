package eif

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
)

// ReadOptions configures [Read]. The zero value is the strict default.
type ReadOptions struct {
	// IgnoreCRC accepts an image whose CRC does not match (describe-eif
	// reports CheckCRC instead of failing); use [CheckCRC] afterwards.
	IgnoreCRC bool
}

// Read parses and validates an untrusted EIF of the given size from r. It
// checks, in this order, and reports the first failure:
//   - the file holds a whole header (ErrTruncated) starting with ".eif" (ErrBadMagic);
//   - version is 2, 3 or 4 (ErrUnsupportedVersion);
//   - only flag bit 0 (arm64) is set and the reserved fields are zero (ErrFlags);
//   - 1 ≤ num_sections ≤ 32 (ErrTooManySections, ErrSectionCount) and the
//     unused table slots are zero (ErrBounds);
//   - sections are contiguous in table order, the first at offset 548, each
//     inside the file, and the file ends after the last (ErrBounds: no gaps,
//     overlaps or trailing bytes, as nitro-cli writes them);
//   - each section header has a known type (ErrSectionType), flags 0
//     (ErrFlags) and the size given in the table (ErrSectionHeaderMismatch);
//   - a signature section is at most 32768 bytes (ErrTooLarge);
//   - the section types obey the count and order rules: exactly one kernel
//     and one cmdline, at least one ramdisk, every ramdisk after the kernel,
//     at most one signature (version ≥ 3), exactly one metadata section in
//     version 4 (ErrSectionCount, ErrSectionOrder);
//   - the CRC matches, unless opts.IgnoreCRC (ErrCRC).
//
// Section data is read only after the layout was validated, so the memory
// allocated never exceeds size. Metadata and signature contents are not
// interpreted here (see [ParseMetadata], [DecodeSignatureSection]).
func Read(r io.ReaderAt, size int64, opts ReadOptions) (*Image, error) {
	l, err := readLayout(r, size)
	if err != nil {
		return nil, err
	}
	h := l.Header
	img := &Image{Header: h, Sections: make([]Section, len(l.Sections))}
	for i, si := range l.Sections {
		data := make([]byte, si.Size)
		if _, err := r.ReadAt(data, si.Offset); err != nil {
			return nil, readErr(err)
		}
		img.Sections[i] = Section{Type: si.Type, Data: data}
	}
	if !opts.IgnoreCRC && !CheckCRC(img) {
		return nil, fmt.Errorf("%w: header says %08x, content gives %08x", ErrCRC, h.CRC32, computeCRC(&h, img.Sections))
	}
	return img, nil
}

// Layout is an EIF's validated structure without its section data: where
// each section's data lies in the file.
type Layout struct {
	Header   Header
	Sections []SectionInfo
}

// SectionInfo locates one section's data in an EIF file.
type SectionInfo struct {
	Type   SectionType
	Offset int64 // file offset of the data (after the 12-byte section header)
	Size   int64
}

// ReadLayout validates an EIF's header, section headers and layout exactly
// as [Read] does, without reading section data and so without checking the
// CRC. It is for callers that copy sections out of an image that was
// already verified (the daemon checks the whole file before launching it).
func ReadLayout(r io.ReaderAt, size int64) (*Layout, error) {
	return readLayout(r, size)
}

func readErr(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: %w", ErrTruncated, err)
	}
	return fmt.Errorf("eif: read: %w", err)
}

// Unmarshal is [Read] over a byte slice.
func Unmarshal(b []byte, opts ReadOptions) (*Image, error) {
	return Read(byteReaderAt(b), int64(len(b)), opts)
}

type byteReaderAt []byte

func (b byteReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off > int64(len(b)) {
		return 0, io.EOF
	}
	n := copy(p, b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Open reads and validates the EIF file at path with [Read].
func Open(path string, opts ReadOptions) (*Image, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("eif: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("eif: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("eif: %s is not a regular file", path)
	}
	img, err := Read(f, fi.Size(), opts)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return img, nil
}

func readLayout(r io.ReaderAt, size int64) (*Layout, error) {
	if size < 4 {
		return nil, fmt.Errorf("%w: %d bytes", ErrTruncated, size)
	}
	var magic [4]byte
	if _, err := r.ReadAt(magic[:], 0); err != nil {
		return nil, readErr(err)
	}
	if string(magic[:]) != Magic {
		return nil, ErrBadMagic // the bytes are not echoed: messages reach callers who may not read the file
	}
	if size < HeaderSize {
		return nil, fmt.Errorf("%w: %d bytes, the header alone has %d", ErrTruncated, size, HeaderSize)
	}
	hb := make([]byte, HeaderSize)
	if _, err := r.ReadAt(hb, 0); err != nil {
		return nil, readErr(err)
	}
	h := decodeHeader(hb)
	if h.Version < 2 || h.Version > CurrentVersion {
		return nil, fmt.Errorf("%w: version %d (supported: 2 to %d)", ErrUnsupportedVersion, h.Version, CurrentVersion)
	}
	if h.Flags&^FlagArm64 != 0 || h.Reserved != 0 || h.Unused != 0 {
		return nil, fmt.Errorf("%w: flags %#x, reserved %#x, unused %#x", ErrFlags, h.Flags, h.Reserved, h.Unused)
	}
	n := int(h.NumSections)
	if n > MaxSections {
		return nil, fmt.Errorf("%w: header declares %d (max %d)", ErrTooManySections, n, MaxSections)
	}
	if n == 0 {
		return nil, fmt.Errorf("%w: header declares no section", ErrSectionCount)
	}
	for i := n; i < MaxSections; i++ {
		if h.SectionOffsets[i] != 0 || h.SectionSizes[i] != 0 {
			return nil, fmt.Errorf("%w: unused section slot %d is not zero", ErrBounds, i)
		}
	}
	types := make([]SectionType, n)
	expected := uint64(HeaderSize)
	var sh [SectionHeaderSize]byte
	for i := 0; i < n; i++ {
		off, sz := h.SectionOffsets[i], h.SectionSizes[i]
		if off != expected {
			return nil, fmt.Errorf("%w: section %d at offset %d, expected %d (gap or overlap)", ErrBounds, i, off, expected)
		}
		if sz > uint64(size) || off+SectionHeaderSize+sz > uint64(size) {
			return nil, fmt.Errorf("%w: section %d (offset %d, size %d) ends beyond the file (%d bytes)", ErrBounds, i, off, sz, size)
		}
		if _, err := r.ReadAt(sh[:], int64(off)); err != nil {
			return nil, readErr(err)
		}
		t := SectionType(binary.BigEndian.Uint16(sh[0:]))
		flags := binary.BigEndian.Uint16(sh[2:])
		hsz := binary.BigEndian.Uint64(sh[4:])
		if t == SectionInvalid || t > SectionMetadata {
			return nil, fmt.Errorf("%w: section %d has type %d", ErrSectionType, i, uint16(t))
		}
		if flags != 0 {
			return nil, fmt.Errorf("%w: section %d header flags %#x", ErrFlags, i, flags)
		}
		if hsz != sz {
			return nil, fmt.Errorf("%w: section %d header says %d bytes, table says %d", ErrSectionHeaderMismatch, i, hsz, sz)
		}
		if t == SectionSignature && sz > MaxSignatureSize {
			return nil, fmt.Errorf("%w: signature section of %d bytes (max %d)", ErrTooLarge, sz, MaxSignatureSize)
		}
		types[i] = t
		expected = off + SectionHeaderSize + sz
	}
	if expected != uint64(size) {
		return nil, fmt.Errorf("%w: %d trailing bytes after the last section", ErrBounds, uint64(size)-expected)
	}
	if err := checkLayout(h.Version, types); err != nil {
		return nil, err
	}
	l := &Layout{Header: h, Sections: make([]SectionInfo, n)}
	for i := 0; i < n; i++ {
		l.Sections[i] = SectionInfo{Type: types[i], Offset: int64(h.SectionOffsets[i]) + SectionHeaderSize, Size: int64(h.SectionSizes[i])}
	}
	return l, nil
}

// FileLayout validates the header and section table of the EIF in f and
// returns its layout, without reading the sections: for an image whose
// CRC was checked when its bytes were last trusted to change (a sealed
// copy [Read] or [CheckFile] validated).
func FileLayout(f *os.File) (*Layout, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("eif: %w", err)
	}
	return readLayout(f, fi.Size())
}

// CheckFile validates the EIF in f like [Read] — layout and CRC — while
// holding only a small buffer in memory, and returns its layout. Callers
// then copy the sections they need straight from the file.
func CheckFile(f *os.File) (*Layout, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("eif: %w", err)
	}
	l, err := readLayout(f, fi.Size())
	if err != nil {
		return nil, err
	}
	// Sections follow the header back to back up to the end of the file
	// (readLayout checked it), so after the header the CRC covers
	// [HeaderSize, EOF) in one run.
	crc := crc32.ChecksumIEEE(l.Header.encode()[:crcOffset])
	buf := make([]byte, 256<<10)
	for off := int64(HeaderSize); off < fi.Size(); {
		n, err := f.ReadAt(buf[:min(int64(len(buf)), fi.Size()-off)], off)
		crc = crc32.Update(crc, crc32.IEEETable, buf[:n])
		off += int64(n)
		if err != nil && !(errors.Is(err, io.EOF) && off == fi.Size()) {
			return nil, readErr(err)
		}
	}
	if crc != l.Header.CRC32 {
		return nil, fmt.Errorf("%w: header says %08x, content gives %08x", ErrCRC, l.Header.CRC32, crc)
	}
	return l, nil
}

// ExtractSections writes the data of secs, in order, from the image file
// src to a new file at path (mode 0600) with [CopySections].
func ExtractSections(path string, src *os.File, secs ...SectionInfo) error {
	dst, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("eif: %w", err)
	}
	if err := CopySections(dst, src, secs...); err != nil {
		dst.Close()
		return err
	}
	if err := dst.Close(); err != nil {
		return fmt.Errorf("eif: %w", err)
	}
	return nil
}

// ExtractImage writes a copy of the whole image file src to a new file at
// path (mode 0600), the kernel copying the bytes where it can, as
// [ExtractSections] does; src's file offset is left alone. It is for a
// loader that reads the EIF itself (QEMU's nitro-enclave machine).
func ExtractImage(path string, src *os.File) error {
	fi, err := src.Stat()
	if err != nil {
		return fmt.Errorf("eif: %w", err)
	}
	dst, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("eif: %w", err)
	}
	if err := copySection(dst, src, 0, fi.Size()); err != nil {
		dst.Close()
		return fmt.Errorf("eif: copy image: %w", err)
	}
	if err := dst.Close(); err != nil {
		return fmt.Errorf("eif: %w", err)
	}
	return nil
}

// CopySections appends the data of secs, in order, from the image file src
// to dst. Where the two files allow it the kernel copies the bytes
// (copy_file_range) without passing them through this process. It reads
// src at the sections' offsets and leaves src's file offset alone, so
// several readers may share one descriptor.
func CopySections(dst, src *os.File, secs ...SectionInfo) error {
	for _, s := range secs {
		if err := copySection(dst, src, s.Offset, s.Size); err != nil {
			return fmt.Errorf("eif: extract %s section: %w", s.Type, err)
		}
	}
	return nil
}

// copyThroughMemory copies n bytes at off in src to dst's offset.
func copyThroughMemory(dst, src *os.File, off, n int64) error {
	w, err := io.Copy(onlyWriter{dst}, io.NewSectionReader(src, off, n))
	if err == nil && w != n {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// onlyWriter hides dst's ReadFrom, which would read src from its own offset.
type onlyWriter struct{ io.Writer }
