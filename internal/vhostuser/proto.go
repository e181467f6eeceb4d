package vhostuser

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Request codes (front-end → back-end).
const (
	ReqGetFeatures         = 1
	ReqSetFeatures         = 2
	ReqSetOwner            = 3
	ReqResetOwner          = 4
	ReqSetMemTable         = 5
	ReqSetLogBase          = 6
	ReqSetLogFD            = 7
	ReqSetVringNum         = 8
	ReqSetVringAddr        = 9
	ReqSetVringBase        = 10
	ReqGetVringBase        = 11
	ReqSetVringKick        = 12
	ReqSetVringCall        = 13
	ReqSetVringErr         = 14
	ReqGetProtocolFeatures = 15
	ReqSetProtocolFeatures = 16
	ReqGetQueueNum         = 17
	ReqSetVringEnable      = 18
	ReqGetConfig           = 24
	ReqSetConfig           = 25
	ReqResetDevice         = 34
	ReqGetMaxMemSlots      = 36
	ReqAddMemReg           = 37
	ReqRemMemReg           = 38
	ReqSetStatus           = 39
	ReqGetStatus           = 40
)

// Header flags.
const (
	FlagVersion   = 0x1 // protocol version 1 in bits 0-1
	FlagReply     = 0x4 // set by the back-end on replies
	FlagNeedReply = 0x8 // the front-end wants a REPLY_ACK answer
	versionMask   = 0x3
)

// Virtio and vhost-user feature bits.
const (
	FeatureIndirectDesc     = 1 << 28 // VIRTIO_F_RING_INDIRECT_DESC
	FeatureEventIdx         = 1 << 29 // VIRTIO_F_RING_EVENT_IDX
	FeatureProtocolFeatures = 1 << 30 // VHOST_USER_F_PROTOCOL_FEATURES
	FeatureVersion1         = 1 << 32 // VIRTIO_F_VERSION_1
)

// Protocol feature bits (GET/SET_PROTOCOL_FEATURES).
const (
	ProtocolMQ                = 1 << 0
	ProtocolReplyAck          = 1 << 3
	ProtocolConfig            = 1 << 9
	ProtocolResetDevice       = 1 << 13
	ProtocolConfigureMemSlots = 1 << 15
)

// Limits.
const (
	headerSize = 12
	// MaxPayload bounds a message payload; larger messages end the
	// connection.
	MaxPayload = 4096
	// MaxRegions is the largest memory table accepted (QEMU sends at most 8
	// regions in SET_MEM_TABLE; with CONFIGURE_MEM_SLOTS the back-end
	// announces this many slots).
	MaxRegions = 32
	// maxFDs bounds the file descriptors accepted with one message.
	maxFDs = 8
	// vringNoFD is bit 8 of the KICK/CALL/ERR payload: no fd (polling).
	vringNoFD = 1 << 8
	// vringIndexMask selects the queue index in the KICK/CALL/ERR payload.
	vringIndexMask = 0xff
)

// Errors.
var (
	// ErrProtocol reports a malformed or unexpected message from the
	// front-end; the connection is closed.
	ErrProtocol = errors.New("vhostuser: protocol error")
	// ErrMemory reports a memory table that cannot be used (bad region,
	// failed mmap) or an address outside it.
	ErrMemory = errors.New("vhostuser: memory table")
)

// header is the 12-byte message header (native endian; little-endian on
// every host we support).
type header struct {
	Request uint32
	Flags   uint32
	Size    uint32
}

func parseHeader(b []byte) header {
	return header{
		Request: binary.LittleEndian.Uint32(b[0:]),
		Flags:   binary.LittleEndian.Uint32(b[4:]),
		Size:    binary.LittleEndian.Uint32(b[8:]),
	}
}

func (h header) encode(b []byte) {
	binary.LittleEndian.PutUint32(b[0:], h.Request)
	binary.LittleEndian.PutUint32(b[4:], h.Flags)
	binary.LittleEndian.PutUint32(b[8:], h.Size)
}

// checkHeader validates the version and payload size of a received header.
func checkHeader(h header) error {
	if h.Flags&versionMask != FlagVersion {
		return fmt.Errorf("%w: request %d: version %d", ErrProtocol, h.Request, h.Flags&versionMask)
	}
	if h.Size > MaxPayload {
		return fmt.Errorf("%w: request %d: payload of %d bytes > %d", ErrProtocol, h.Request, h.Size, MaxPayload)
	}
	return nil
}

// Region is one guest memory region of a memory table message.
type Region struct {
	GuestPhys  uint64
	Size       uint64
	UserAddr   uint64
	MmapOffset uint64
}

const regionSize = 32

func parseRegion(b []byte) Region {
	return Region{
		GuestPhys:  binary.LittleEndian.Uint64(b[0:]),
		Size:       binary.LittleEndian.Uint64(b[8:]),
		UserAddr:   binary.LittleEndian.Uint64(b[16:]),
		MmapOffset: binary.LittleEndian.Uint64(b[24:]),
	}
}

func (r Region) encode(b []byte) {
	binary.LittleEndian.PutUint64(b[0:], r.GuestPhys)
	binary.LittleEndian.PutUint64(b[8:], r.Size)
	binary.LittleEndian.PutUint64(b[16:], r.UserAddr)
	binary.LittleEndian.PutUint64(b[24:], r.MmapOffset)
}

// parseMemTable decodes a SET_MEM_TABLE payload: u32 nregions, u32 padding,
// then nregions regions. The count must match the payload size and the
// number of file descriptors.
func parseMemTable(p []byte, nfds int) ([]Region, error) {
	if len(p) < 8 {
		return nil, fmt.Errorf("%w: SET_MEM_TABLE payload of %d bytes", ErrProtocol, len(p))
	}
	n := binary.LittleEndian.Uint32(p)
	if n == 0 || n > MaxRegions || uint64(len(p)) < 8+uint64(n)*regionSize {
		return nil, fmt.Errorf("%w: SET_MEM_TABLE with %d regions in %d bytes", ErrProtocol, n, len(p))
	}
	if int(n) != nfds {
		return nil, fmt.Errorf("%w: SET_MEM_TABLE with %d regions and %d fds", ErrProtocol, n, nfds)
	}
	regs := make([]Region, n)
	for i := range regs {
		regs[i] = parseRegion(p[8+regionSize*i:])
	}
	return regs, nil
}

// vringAddr is the SET_VRING_ADDR payload.
type vringAddr struct {
	Index uint32
	Flags uint32
	Desc  uint64
	Used  uint64
	Avail uint64
	Log   uint64
}

const vringAddrSize = 40

func parseVringAddr(p []byte) (vringAddr, error) {
	if len(p) < vringAddrSize {
		return vringAddr{}, fmt.Errorf("%w: SET_VRING_ADDR payload of %d bytes", ErrProtocol, len(p))
	}
	return vringAddr{
		Index: binary.LittleEndian.Uint32(p[0:]),
		Flags: binary.LittleEndian.Uint32(p[4:]),
		Desc:  binary.LittleEndian.Uint64(p[8:]),
		Used:  binary.LittleEndian.Uint64(p[16:]),
		Avail: binary.LittleEndian.Uint64(p[24:]),
		Log:   binary.LittleEndian.Uint64(p[32:]),
	}, nil
}

func u64Payload(p []byte, req uint32) (uint64, error) {
	if len(p) < 8 {
		return 0, fmt.Errorf("%w: request %d: payload of %d bytes, want 8", ErrProtocol, req, len(p))
	}
	return binary.LittleEndian.Uint64(p), nil
}

func statePayload(p []byte, req uint32) (index, num uint32, err error) {
	if len(p) < 8 {
		return 0, 0, fmt.Errorf("%w: request %d: payload of %d bytes, want 8", ErrProtocol, req, len(p))
	}
	return binary.LittleEndian.Uint32(p), binary.LittleEndian.Uint32(p[4:]), nil
}

// requestName names a request code for logs.
func requestName(r uint32) string {
	names := map[uint32]string{
		ReqGetFeatures: "GET_FEATURES", ReqSetFeatures: "SET_FEATURES", ReqSetOwner: "SET_OWNER",
		ReqResetOwner: "RESET_OWNER", ReqSetMemTable: "SET_MEM_TABLE", ReqSetLogBase: "SET_LOG_BASE",
		ReqSetLogFD: "SET_LOG_FD", ReqSetVringNum: "SET_VRING_NUM", ReqSetVringAddr: "SET_VRING_ADDR",
		ReqSetVringBase: "SET_VRING_BASE", ReqGetVringBase: "GET_VRING_BASE", ReqSetVringKick: "SET_VRING_KICK",
		ReqSetVringCall: "SET_VRING_CALL", ReqSetVringErr: "SET_VRING_ERR",
		ReqGetProtocolFeatures: "GET_PROTOCOL_FEATURES", ReqSetProtocolFeatures: "SET_PROTOCOL_FEATURES",
		ReqGetQueueNum: "GET_QUEUE_NUM", ReqSetVringEnable: "SET_VRING_ENABLE", ReqGetConfig: "GET_CONFIG",
		ReqSetConfig: "SET_CONFIG", ReqResetDevice: "RESET_DEVICE", ReqGetMaxMemSlots: "GET_MAX_MEM_SLOTS",
		ReqAddMemReg: "ADD_MEM_REG", ReqRemMemReg: "REM_MEM_REG", ReqSetStatus: "SET_STATUS",
		ReqGetStatus: "GET_STATUS",
	}
	if n, ok := names[r]; ok {
		return n
	}
	return fmt.Sprintf("request(%d)", r)
}

// mustReply reports whether the front-end waits for a reply to r regardless
// of REPLY_ACK.
func mustReply(r uint32) bool {
	switch r {
	case ReqGetFeatures, ReqGetProtocolFeatures, ReqGetVringBase, ReqGetConfig,
		ReqGetQueueNum, ReqGetMaxMemSlots, ReqGetStatus, ReqSetLogBase:
		return true
	}
	return false
}
