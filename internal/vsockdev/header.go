package vsockdev

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cloister/cloister/internal/wellknown"
)

// HeaderSize is the size of struct virtio_vsock_hdr.
const HeaderSize = 44

// Socket types (Header.Type).
const (
	TypeStream    = 1
	TypeSeqpacket = 2
)

// Operations (Header.Op).
const (
	OpInvalid       = 0
	OpRequest       = 1
	OpResponse      = 2
	OpRST           = 3
	OpShutdown      = 4
	OpRW            = 5
	OpCreditUpdate  = 6
	OpCreditRequest = 7
)

// SHUTDOWN flags (Header.Flags).
const (
	ShutdownRcv  = 1 // the sender will receive no more data
	ShutdownSend = 2 // the sender will send no more data
	shutdownBoth = ShutdownRcv | ShutdownSend
)

// Well-known CIDs.
const (
	// HostCID is VMADDR_CID_HOST, the CID Linux guests use for the host.
	HostCID = wellknown.HostCID
	// ParentCID is the parent instance on Nitro; the device accepts both.
	ParentCID = wellknown.ParentCID
)

// MaxPacketPayload is the largest payload of one packet
// (VIRTIO_VSOCK_MAX_PKT_BUF_SIZE, 64 KiB).
const MaxPacketPayload = 64 << 10

// ErrShortHeader reports fewer than HeaderSize bytes.
var ErrShortHeader = errors.New("vsockdev: packet shorter than the 44-byte header")

// Header is struct virtio_vsock_hdr: 44 bytes, little-endian, packed.
type Header struct {
	SrcCID   uint64
	DstCID   uint64
	SrcPort  uint32
	DstPort  uint32
	Len      uint32
	Type     uint16
	Op       uint16
	Flags    uint32
	BufAlloc uint32
	FwdCnt   uint32
}

// ParseHeader decodes the first HeaderSize bytes of b. It checks only the
// length; field validation is the device's job.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, fmt.Errorf("%w: %d bytes", ErrShortHeader, len(b))
	}
	return Header{
		SrcCID:   binary.LittleEndian.Uint64(b[0:]),
		DstCID:   binary.LittleEndian.Uint64(b[8:]),
		SrcPort:  binary.LittleEndian.Uint32(b[16:]),
		DstPort:  binary.LittleEndian.Uint32(b[20:]),
		Len:      binary.LittleEndian.Uint32(b[24:]),
		Type:     binary.LittleEndian.Uint16(b[28:]),
		Op:       binary.LittleEndian.Uint16(b[30:]),
		Flags:    binary.LittleEndian.Uint32(b[32:]),
		BufAlloc: binary.LittleEndian.Uint32(b[36:]),
		FwdCnt:   binary.LittleEndian.Uint32(b[40:]),
	}, nil
}

// Put encodes h into b[:HeaderSize]; b must be at least HeaderSize long.
func (h *Header) Put(b []byte) {
	_ = b[HeaderSize-1]
	binary.LittleEndian.PutUint64(b[0:], h.SrcCID)
	binary.LittleEndian.PutUint64(b[8:], h.DstCID)
	binary.LittleEndian.PutUint32(b[16:], h.SrcPort)
	binary.LittleEndian.PutUint32(b[20:], h.DstPort)
	binary.LittleEndian.PutUint32(b[24:], h.Len)
	binary.LittleEndian.PutUint16(b[28:], h.Type)
	binary.LittleEndian.PutUint16(b[30:], h.Op)
	binary.LittleEndian.PutUint32(b[32:], h.Flags)
	binary.LittleEndian.PutUint32(b[36:], h.BufAlloc)
	binary.LittleEndian.PutUint32(b[40:], h.FwdCnt)
}

// Bytes returns the 44-byte encoding of h.
func (h Header) Bytes() []byte {
	b := make([]byte, HeaderSize)
	h.Put(b)
	return b
}

// opName names an operation for logs.
func opName(op uint16) string {
	switch op {
	case OpRequest:
		return "REQUEST"
	case OpResponse:
		return "RESPONSE"
	case OpRST:
		return "RST"
	case OpShutdown:
		return "SHUTDOWN"
	case OpRW:
		return "RW"
	case OpCreditUpdate:
		return "CREDIT_UPDATE"
	case OpCreditRequest:
		return "CREDIT_REQUEST"
	}
	return fmt.Sprintf("op(%d)", op)
}
