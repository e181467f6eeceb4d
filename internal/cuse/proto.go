package cuse

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Protocol constants (include/uapi/linux/fuse.h).
const (
	kernelVersion = 7  // FUSE_KERNEL_VERSION
	minMinor      = 16 // first minor with struct fuse_ioctl_iovec
	maxMinor      = 31 // the newest minor whose messages this package knows

	opForget      = 2
	opOpen        = 14
	opRead        = 15
	opWrite       = 16
	opRelease     = 18
	opFlush       = 25
	opInterrupt   = 36
	opIoctl       = 39
	opPoll        = 40
	opBatchForget = 42
	opCuseInit    = 4096

	cuseUnrestrictedIoctl = 1 << 0 // CUSE_UNRESTRICTED_IOCTL
	ioctlRetry            = 1 << 2 // FUSE_IOCTL_RETRY
	ioctlMaxIOV           = 256    // FUSE_IOCTL_MAX_IOV

	inHeaderSize     = 40 // struct fuse_in_header
	outHeaderSize    = 16 // struct fuse_out_header
	cuseInitInSize   = 16 // struct cuse_init_in
	cuseInitOutSize  = 72 // struct cuse_init_out: 8 fields, spare[10]
	openInSize       = 8  // struct fuse_open_in
	openOutSize      = 16 // struct fuse_open_out
	releaseInSize    = 24 // struct fuse_release_in
	interruptInSize  = 8  // struct fuse_interrupt_in
	ioctlInSize      = 32 // struct fuse_ioctl_in
	ioctlOutSize     = 16 // struct fuse_ioctl_out
	ioctlIOVSize     = 16 // struct fuse_ioctl_iovec
	cuseInitInfoMax  = 4096
	minReadBuffer    = 8192 // FUSE_MIN_READ_BUFFER
	maxRequestLength = 1 << 20
)

// ErrProtocol wraps every malformed request and protocol violation.
var ErrProtocol = errors.New("cuse: malformed request")

// Header is struct fuse_in_header: who asks what.
type Header struct {
	Len    uint32 // the whole request's length
	Opcode uint32
	Unique uint64 // the request's ID, echoed by the answer
	NodeID uint64
	UID    uint32 // the caller's credentials (in the server's namespaces)
	GID    uint32
	PID    uint32 // the calling thread's ID
}

// Request is one decoded request. Exactly the field of its opcode is set;
// other opcodes carry only the header.
type Request struct {
	Header
	Init      *InitIn
	Open      *OpenIn
	Release   *ReleaseIn
	Ioctl     *IoctlIn
	Interrupt *InterruptIn
}

// InitIn is struct cuse_init_in.
type InitIn struct {
	Major, Minor uint32
	Flags        uint32
}

// OpenIn is struct fuse_open_in.
type OpenIn struct {
	Flags     uint32 // the open(2) flags
	OpenFlags uint32
}

// ReleaseIn is struct fuse_release_in.
type ReleaseIn struct {
	FH    uint64
	Flags uint32
}

// InterruptIn is struct fuse_interrupt_in.
type InterruptIn struct {
	Unique uint64 // the interrupted request
}

// IoctlIn is struct fuse_ioctl_in and the data that follows it.
type IoctlIn struct {
	FH      uint64
	Flags   uint32 // FUSE_IOCTL_* flags
	Cmd     uint32
	Arg     uint64
	InSize  uint32 // len(In)
	OutSize uint32 // total length of the out iovecs of the last retry
	In      []byte // the bytes of the in iovecs of the last retry, in order
}

// ParseRequest decodes one request as read from /dev/cuse. It fails with
// an error wrapping [ErrProtocol] when b is shorter than a header, its
// length field differs from len(b), or the opcode's fixed part is missing;
// an ioctl's in_size must equal the bytes that follow. Unknown opcodes are
// not an error (they are answered ENOSYS). The returned slices alias b.
func ParseRequest(b []byte) (Request, error) {
	var r Request
	if len(b) < inHeaderSize {
		return r, fmt.Errorf("%w: %d bytes, shorter than a header", ErrProtocol, len(b))
	}
	le := binary.LittleEndian
	r.Header = Header{
		Len: le.Uint32(b[0:]), Opcode: le.Uint32(b[4:]), Unique: le.Uint64(b[8:]), NodeID: le.Uint64(b[16:]),
		UID: le.Uint32(b[24:]), GID: le.Uint32(b[28:]), PID: le.Uint32(b[32:]),
	}
	if uint64(r.Len) != uint64(len(b)) {
		return r, fmt.Errorf("%w: header says %d bytes, read %d", ErrProtocol, r.Len, len(b))
	}
	body := b[inHeaderSize:]
	need := func(n int, what string) error {
		if len(body) < n {
			return fmt.Errorf("%w: %s of %d bytes, want at least %d", ErrProtocol, what, len(body), n)
		}
		return nil
	}
	switch r.Opcode {
	case opCuseInit:
		if err := need(cuseInitInSize, "CUSE_INIT"); err != nil {
			return r, err
		}
		r.Init = &InitIn{Major: le.Uint32(body[0:]), Minor: le.Uint32(body[4:]), Flags: le.Uint32(body[12:])}
	case opOpen:
		if err := need(openInSize, "FUSE_OPEN"); err != nil {
			return r, err
		}
		r.Open = &OpenIn{Flags: le.Uint32(body[0:]), OpenFlags: le.Uint32(body[4:])}
	case opRelease:
		if err := need(releaseInSize, "FUSE_RELEASE"); err != nil {
			return r, err
		}
		r.Release = &ReleaseIn{FH: le.Uint64(body[0:]), Flags: le.Uint32(body[8:])}
	case opInterrupt:
		if err := need(interruptInSize, "FUSE_INTERRUPT"); err != nil {
			return r, err
		}
		r.Interrupt = &InterruptIn{Unique: le.Uint64(body[0:])}
	case opIoctl:
		if err := need(ioctlInSize, "FUSE_IOCTL"); err != nil {
			return r, err
		}
		io := &IoctlIn{
			FH: le.Uint64(body[0:]), Flags: le.Uint32(body[8:]), Cmd: le.Uint32(body[12:]), Arg: le.Uint64(body[16:]),
			InSize: le.Uint32(body[24:]), OutSize: le.Uint32(body[28:]),
		}
		data := body[ioctlInSize:]
		if uint64(io.InSize) != uint64(len(data)) {
			return r, fmt.Errorf("%w: FUSE_IOCTL in_size %d with %d bytes of data", ErrProtocol, io.InSize, len(data))
		}
		io.In = data
		r.Ioctl = io
	}
	return r, nil
}

// appendOutHeader appends struct fuse_out_header for an answer of
// bodyLen bytes after the header.
func appendOutHeader(b []byte, unique uint64, errno int32, bodyLen int) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(outHeaderSize+bodyLen))
	b = binary.LittleEndian.AppendUint32(b, uint32(errno))
	return binary.LittleEndian.AppendUint64(b, unique)
}

// errorReply is an answer carrying only an error (a negative errno).
func errorReply(unique uint64, errno int32) []byte {
	return appendOutHeader(make([]byte, 0, outHeaderSize), unique, errno, 0)
}

// initReply is the answer to CUSE_INIT: struct cuse_init_out and the
// device info "DEVNAME=<name>\0".
func initReply(unique uint64, minor uint32, name string) []byte {
	info := "DEVNAME=" + name + "\x00"
	b := appendOutHeader(make([]byte, 0, outHeaderSize+cuseInitOutSize+len(info)), unique, 0, cuseInitOutSize+len(info))
	le := binary.LittleEndian
	b = le.AppendUint32(b, kernelVersion)
	b = le.AppendUint32(b, minor)
	b = le.AppendUint32(b, 0)                     // unused
	b = le.AppendUint32(b, cuseUnrestrictedIoctl) // flags
	b = le.AppendUint32(b, 4096)                  // max_read (the kernel's minimum)
	b = le.AppendUint32(b, 4096)                  // max_write
	b = le.AppendUint32(b, 0)                     // dev_major: allocate
	b = le.AppendUint32(b, 0)                     // dev_minor
	b = append(b, make([]byte, 40)...)            // spare[10]
	return append(b, info...)
}

// openReply is the answer to FUSE_OPEN: struct fuse_open_out.
func openReply(unique, fh uint64) []byte {
	b := appendOutHeader(make([]byte, 0, outHeaderSize+openOutSize), unique, 0, openOutSize)
	b = binary.LittleEndian.AppendUint64(b, fh)
	return append(b, make([]byte, 8)...) // open_flags, padding
}

// ioctlReply is the answer to FUSE_IOCTL: struct fuse_ioctl_out then the
// output bytes, or the iovecs of a retry.
func ioctlReply(unique uint64, r IoctlReply) []byte {
	le := binary.LittleEndian
	if r.Retry {
		n := ioctlOutSize + ioctlIOVSize*(len(r.In)+len(r.Out))
		b := appendOutHeader(make([]byte, 0, outHeaderSize+n), unique, 0, n)
		b = le.AppendUint32(b, 0)
		b = le.AppendUint32(b, ioctlRetry)
		b = le.AppendUint32(b, uint32(len(r.In)))
		b = le.AppendUint32(b, uint32(len(r.Out)))
		for _, v := range append(append([]IOVec{}, r.In...), r.Out...) {
			b = le.AppendUint64(b, v.Base)
			b = le.AppendUint64(b, v.Len)
		}
		return b
	}
	b := appendOutHeader(make([]byte, 0, outHeaderSize+ioctlOutSize+len(r.Data)), unique, 0, ioctlOutSize+len(r.Data))
	b = le.AppendUint32(b, uint32(r.Result))
	b = append(b, make([]byte, 12)...) // flags, in_iovs, out_iovs
	return append(b, r.Data...)
}
