package eif

import (
	"bytes"
	"errors"
	"fmt"
)

// Format constants (aws-nitro-enclaves-image-format src/defs/mod.rs).
const (
	// Magic is the first four bytes of every EIF file.
	Magic = ".eif"
	// CurrentVersion is the version written by this package and nitro-cli.
	CurrentVersion = 4
	// HeaderSize is the size of the EIF header in bytes.
	HeaderSize = 548
	// SectionHeaderSize is the size of a section header in bytes.
	SectionHeaderSize = 12
	// MaxSections is the capacity of the header's section table.
	MaxSections = 32
	// MaxSignatureSize is the largest accepted signature section.
	MaxSignatureSize = 32768
	// DefaultMem is the default_mem value nitro-cli writes (unused by anyone).
	DefaultMem = 1 << 30
	// DefaultCPUs is the default_cpus value nitro-cli writes (unused by anyone).
	DefaultCPUs = 2
	// FlagArm64 is header flag bit 0: the image is for aarch64 (clear = x86_64).
	FlagArm64 = 1
	// crcOffset is the offset of the CRC field in the header.
	crcOffset = 544
)

// NoKernelMarker is the exact content of the kernel section of an image
// built without an enclave kernel. It is not a valid bzImage or arm64
// Image, so no hypervisor could boot it by accident.
const NoKernelMarker = "CLOISTER-NO-KERNEL\n"

// SectionType is the type of an EIF section.
type SectionType uint16

// Section types.
const (
	SectionInvalid   SectionType = 0
	SectionKernel    SectionType = 1
	SectionCmdline   SectionType = 2
	SectionRamdisk   SectionType = 3
	SectionSignature SectionType = 4
	SectionMetadata  SectionType = 5
)

// String returns the section type's name ("kernel", "cmdline", …).
func (t SectionType) String() string {
	switch t {
	case SectionKernel:
		return "kernel"
	case SectionCmdline:
		return "cmdline"
	case SectionRamdisk:
		return "ramdisk"
	case SectionSignature:
		return "signature"
	case SectionMetadata:
		return "metadata"
	}
	return fmt.Sprintf("invalid(%d)", uint16(t))
}

// Header is the decoded 548-byte EIF header.
type Header struct {
	Version        uint16
	Flags          uint16
	DefaultMem     uint64
	DefaultCPUs    uint64
	Reserved       uint16
	NumSections    uint16
	SectionOffsets [MaxSections]uint64 // file offset of each section's header
	SectionSizes   [MaxSections]uint64 // size of each section's data
	Unused         uint32
	CRC32          uint32
}

// Section is one section: its type and its data.
type Section struct {
	Type SectionType
	Data []byte
}

// Image is a whole EIF in memory: the header and the sections in file order.
// When writing, the header's table, count and CRC are computed from
// Sections; Version, Flags, DefaultMem and DefaultCPUs are taken from
// Header, zero meaning CurrentVersion, 0 (x86_64), DefaultMem and DefaultCPUs.
type Image struct {
	Header   Header
	Sections []Section
}

// Errors. Every error returned by this package wraps one of these.
var (
	// ErrBadMagic: the file does not start with ".eif".
	ErrBadMagic = errors.New("eif: bad magic (not an EIF file)")
	// ErrUnsupportedVersion: the header version is not 2, 3 or 4.
	ErrUnsupportedVersion = errors.New("eif: unsupported EIF version")
	// ErrCRC: the header CRC does not match the content.
	ErrCRC = errors.New("eif: CRC mismatch")
	// ErrBounds: a section lies outside the file, overlaps another, leaves a
	// gap, or the file has trailing bytes or non-zero unused table slots.
	ErrBounds = errors.New("eif: section out of bounds")
	// ErrTooManySections: more than MaxSections sections.
	ErrTooManySections = errors.New("eif: too many sections")
	// ErrSectionOrder: a ramdisk precedes the kernel.
	ErrSectionOrder = errors.New("eif: sections in a forbidden order")
	// ErrSectionCount: a section type occurs a forbidden number of times.
	ErrSectionCount = errors.New("eif: wrong number of sections of a type")
	// ErrSectionHeaderMismatch: a section header's size differs from the header table.
	ErrSectionHeaderMismatch = errors.New("eif: section header disagrees with the EIF header")
	// ErrSectionType: a section type outside 1..5.
	ErrSectionType = errors.New("eif: invalid section type")
	// ErrFlags: reserved header or section-header bits or fields are set.
	ErrFlags = errors.New("eif: reserved flags set")
	// ErrTooLarge: a signature section (or metadata) exceeds its limit.
	ErrTooLarge = errors.New("eif: too large")
	// ErrTruncated: the file ends inside the header or a section.
	ErrTruncated = errors.New("eif: truncated file")
	// ErrSignature: the signature section or its COSE_Sign1 is malformed.
	ErrSignature = errors.New("eif: invalid signature section")
	// ErrSignatureVerify: the signature does not verify or signs another PCR0.
	ErrSignatureVerify = errors.New("eif: signature verification failed")
	// ErrCertificate: the signing certificate cannot be parsed.
	ErrCertificate = errors.New("eif: invalid signing certificate")
	// ErrCertificateNotValidTime: the signing certificate is expired or not yet valid.
	ErrCertificateNotValidTime = errors.New("eif: signing certificate not valid at this time")
	// ErrNotSigned: the image has no signature section.
	ErrNotSigned = errors.New("eif: image is not signed")
	// ErrKey: the signing key is not ECDSA P-256/384/521 or does not match the certificate.
	ErrKey = errors.New("eif: unsupported signing key")
	// ErrMetadata: the metadata is not valid JSON of the expected shape.
	ErrMetadata = errors.New("eif: invalid metadata")
	// ErrState: a Writer method was called out of order.
	ErrState = errors.New("eif: writer used out of order")
)

// IsNoKernel reports whether img's kernel section is exactly [NoKernelMarker].
func IsNoKernel(img *Image) bool {
	for _, s := range img.Sections {
		if s.Type == SectionKernel {
			return bytes.Equal(s.Data, []byte(NoKernelMarker))
		}
	}
	return false
}

// Section returns the first section of type t, or nil.
func (img *Image) Section(t SectionType) *Section {
	for i := range img.Sections {
		if img.Sections[i].Type == t {
			return &img.Sections[i]
		}
	}
	return nil
}

// Ramdisks returns the data of every ramdisk section in file order.
func (img *Image) Ramdisks() [][]byte {
	var out [][]byte
	for _, s := range img.Sections {
		if s.Type == SectionRamdisk {
			out = append(out, s.Data)
		}
	}
	return out
}

// checkLayout checks the section-type rules shared by readers and writers:
// at most MaxSections, only known types, exactly one kernel and one cmdline,
// at least one ramdisk, all ramdisks after the kernel, at most one
// signature (version ≥ 3) and exactly one metadata section for version 4
// (none before version 4).
func checkLayout(version uint16, types []SectionType) error {
	if len(types) > MaxSections {
		return fmt.Errorf("%w: %d (max %d)", ErrTooManySections, len(types), MaxSections)
	}
	var counts [6]int
	kernelAt := -1
	for i, t := range types {
		if t == SectionInvalid || t > SectionMetadata {
			return fmt.Errorf("%w: section %d has type %d", ErrSectionType, i, uint16(t))
		}
		counts[t]++
		switch t {
		case SectionKernel:
			kernelAt = i
		case SectionRamdisk:
			if kernelAt < 0 {
				return fmt.Errorf("%w: ramdisk section %d comes before the kernel section", ErrSectionOrder, i)
			}
		}
	}
	if counts[SectionKernel] != 1 {
		return fmt.Errorf("%w: %d kernel sections (want 1)", ErrSectionCount, counts[SectionKernel])
	}
	if counts[SectionCmdline] != 1 {
		return fmt.Errorf("%w: %d cmdline sections (want 1)", ErrSectionCount, counts[SectionCmdline])
	}
	if counts[SectionRamdisk] < 1 {
		return fmt.Errorf("%w: no ramdisk section", ErrSectionCount)
	}
	if counts[SectionSignature] > 1 {
		return fmt.Errorf("%w: %d signature sections (max 1)", ErrSectionCount, counts[SectionSignature])
	}
	if counts[SectionSignature] > 0 && version < 3 {
		return fmt.Errorf("%w: signature section in a version %d image", ErrSectionCount, version)
	}
	switch {
	case version >= 4 && counts[SectionMetadata] != 1:
		return fmt.Errorf("%w: %d metadata sections (version 4 requires exactly 1)", ErrSectionCount, counts[SectionMetadata])
	case version < 4 && counts[SectionMetadata] != 0:
		return fmt.Errorf("%w: metadata section in a version %d image", ErrSectionCount, version)
	}
	return nil
}
