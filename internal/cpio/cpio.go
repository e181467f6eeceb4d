package cpio

import (
	"errors"
)

// Magic is the six-byte magic of a newc header without checksum.
const Magic = "070701"

// MagicCRC is the six-byte magic of the newc variant with a checksum field.
const MagicCRC = "070702"

// TrailerName is the name of the entry that ends an archive.
const TrailerName = "TRAILER!!!"

// headerLen is the size of a newc header before the name.
const headerLen = 110

// MaxNameLen is the longest entry name [Writer.WriteHeader] accepts, in
// bytes: PATH_MAX (4096) less the terminating NUL the header counts.
const MaxNameLen = 4095

// MaxFileSize is the largest entry data size newc can record (its size
// field has 32 bits).
const MaxFileSize = 1<<32 - 1

// EntrySize returns the bytes an entry takes in an archive: the header, a
// name of nameLen bytes with its NUL, size bytes of data, and the padding
// after each to a multiple of 4.
func EntrySize(nameLen int, size int64) int64 {
	n := int64(headerLen + nameLen + 1)
	return n + pad4(n) + size + pad4(size)
}

// File type bits of Header.Mode (the S_IF* values of stat(2)).
const (
	TypeMask    = 0o170000 // mask selecting the file type bits
	TypeSocket  = 0o140000 // socket
	TypeSymlink = 0o120000 // symbolic link; the data is the target
	TypeReg     = 0o100000 // regular file
	TypeBlock   = 0o060000 // block device
	TypeDir     = 0o040000 // directory
	TypeChar    = 0o020000 // character device
	TypeFifo    = 0o010000 // named pipe
)

// Header is one newc entry header. All numeric fields are 32-bit in the
// format; Size is an int64 only for convenience and must fit in 32 bits.
type Header struct {
	Name      string // path inside the archive, without a leading "/"
	Ino       uint32 // inode number; entries with equal Ino and Nlink > 1 are hard links
	Mode      uint32 // file type bits (Type*) | permission bits
	UID       uint32
	GID       uint32
	Nlink     uint32
	Mtime     uint32 // seconds since the Unix epoch
	Size      int64  // length of the data that follows the header
	DevMajor  uint32 // device holding the file (informational)
	DevMinor  uint32
	RDevMajor uint32 // for character and block devices: the device number
	RDevMinor uint32
	Check     uint32 // checksum field; 0 for Magic, sum of data bytes for MagicCRC
}

// Type returns the file type bits of h.Mode.
func (h *Header) Type() uint32 { return h.Mode & TypeMask }

// Errors returned by this package. Concrete errors wrap one of these.
var (
	// ErrFormat reports a malformed archive or header.
	ErrFormat = errors.New("cpio: malformed archive")
	// ErrLimit reports input exceeding a configured limit.
	ErrLimit = errors.New("cpio: limit exceeded")
	// ErrWriteTooLong reports writing more data than the header's Size.
	ErrWriteTooLong = errors.New("cpio: write too long")
	// ErrShortWrite reports a new header or Close before the previous entry's data was complete.
	ErrShortWrite = errors.New("cpio: entry data shorter than its header size")
	// ErrInvalidHeader reports a header that cannot be encoded (name empty or too long, size out of range).
	ErrInvalidHeader = errors.New("cpio: invalid header")
	// ErrClosed reports use of a closed Writer.
	ErrClosed = errors.New("cpio: writer closed")
)

func pad4(n int64) int64 { return (4 - n%4) % 4 }
