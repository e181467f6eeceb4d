package eif

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
)

// encode returns the 548 header bytes of h.
func (h *Header) encode() []byte {
	b := make([]byte, HeaderSize)
	copy(b, Magic)
	be := binary.BigEndian
	be.PutUint16(b[4:], h.Version)
	be.PutUint16(b[6:], h.Flags)
	be.PutUint64(b[8:], h.DefaultMem)
	be.PutUint64(b[16:], h.DefaultCPUs)
	be.PutUint16(b[24:], h.Reserved)
	be.PutUint16(b[26:], h.NumSections)
	for i := 0; i < MaxSections; i++ {
		be.PutUint64(b[28+8*i:], h.SectionOffsets[i])
		be.PutUint64(b[284+8*i:], h.SectionSizes[i])
	}
	be.PutUint32(b[540:], h.Unused)
	be.PutUint32(b[544:], h.CRC32)
	return b
}

func decodeHeader(b []byte) Header {
	be := binary.BigEndian
	h := Header{
		Version:     be.Uint16(b[4:]),
		Flags:       be.Uint16(b[6:]),
		DefaultMem:  be.Uint64(b[8:]),
		DefaultCPUs: be.Uint64(b[16:]),
		Reserved:    be.Uint16(b[24:]),
		NumSections: be.Uint16(b[26:]),
		Unused:      be.Uint32(b[540:]),
		CRC32:       be.Uint32(b[544:]),
	}
	for i := 0; i < MaxSections; i++ {
		h.SectionOffsets[i] = be.Uint64(b[28+8*i:])
		h.SectionSizes[i] = be.Uint64(b[284+8*i:])
	}
	return h
}

func sectionHeader(t SectionType, size uint64) []byte {
	var b [SectionHeaderSize]byte
	binary.BigEndian.PutUint16(b[0:], uint16(t))
	binary.BigEndian.PutUint64(b[4:], size)
	return b[:]
}

// baseHeader returns the fixed fields of a header to write, applying the
// documented defaults.
func baseHeader(h Header) Header {
	out := Header{Version: h.Version, Flags: h.Flags, DefaultMem: h.DefaultMem, DefaultCPUs: h.DefaultCPUs}
	if out.Version == 0 {
		out.Version = CurrentVersion
	}
	if out.DefaultMem == 0 {
		out.DefaultMem = DefaultMem
	}
	if out.DefaultCPUs == 0 {
		out.DefaultCPUs = DefaultCPUs
	}
	return out
}

func checkWritable(h Header) error {
	if h.Version < 2 || h.Version > CurrentVersion {
		return fmt.Errorf("%w: %d", ErrUnsupportedVersion, h.Version)
	}
	if h.Flags&^FlagArm64 != 0 {
		return fmt.Errorf("%w: header flags %#x", ErrFlags, h.Flags)
	}
	return nil
}

// ComputeHeader returns the header that [Write] would write for img: the
// fixed fields of img.Header (with defaults), the section count, offsets,
// sizes and the CRC. It checks the layout rules that [Read] enforces.
func ComputeHeader(img *Image) (Header, error) {
	h := baseHeader(img.Header)
	if err := checkWritable(h); err != nil {
		return Header{}, err
	}
	types := make([]SectionType, len(img.Sections))
	for i, s := range img.Sections {
		types[i] = s.Type
	}
	if err := checkLayout(h.Version, types); err != nil {
		return Header{}, err
	}
	for _, s := range img.Sections {
		if s.Type == SectionSignature && len(s.Data) > MaxSignatureSize {
			return Header{}, fmt.Errorf("%w: signature section of %d bytes (max %d)", ErrTooLarge, len(s.Data), MaxSignatureSize)
		}
	}
	h.NumSections = uint16(len(img.Sections))
	off := uint64(HeaderSize)
	for i, s := range img.Sections {
		h.SectionOffsets[i] = off
		h.SectionSizes[i] = uint64(len(s.Data))
		off += SectionHeaderSize + uint64(len(s.Data))
	}
	h.CRC32 = computeCRC(&h, img.Sections)
	return h, nil
}

// computeCRC returns nitro's CRC of a header (its bytes before the CRC
// field) followed by the given sections.
func computeCRC(h *Header, sections []Section) uint32 {
	crc := crc32.ChecksumIEEE(h.encode()[:crcOffset])
	for _, s := range sections {
		crc = crc32.Update(crc, crc32.IEEETable, sectionHeader(s.Type, uint64(len(s.Data))))
		crc = crc32.Update(crc, crc32.IEEETable, s.Data)
	}
	return crc
}

// CheckCRC reports whether img.Header.CRC32 equals the CRC of img's header
// and sections as they are (nitro-cli describe-eif's CheckCRC).
func CheckCRC(img *Image) bool {
	return computeCRC(&img.Header, img.Sections) == img.Header.CRC32
}

// Write writes img to w in nitro's layout (see [ComputeHeader]).
func Write(w io.Writer, img *Image) error {
	h, err := ComputeHeader(img)
	if err != nil {
		return err
	}
	if _, err := w.Write(h.encode()); err != nil {
		return fmt.Errorf("eif: write header: %w", err)
	}
	for _, s := range img.Sections {
		if _, err := w.Write(sectionHeader(s.Type, uint64(len(s.Data)))); err != nil {
			return fmt.Errorf("eif: write %s section: %w", s.Type, err)
		}
		if _, err := w.Write(s.Data); err != nil {
			return fmt.Errorf("eif: write %s section: %w", s.Type, err)
		}
	}
	return nil
}

// Marshal returns the bytes [Write] would write.
func Marshal(img *Image) ([]byte, error) {
	var buf bytes.Buffer
	if err := Write(&buf, img); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
