package unotify

import (
	"encoding/binary"
	"errors"
)

// AF_VSOCK addresses (linux/vm_sockets.h).
const (
	// AFVsock is AF_VSOCK.
	AFVsock = 40
	// SockaddrVMSize is sizeof(struct sockaddr_vm).
	SockaddrVMSize = 16
	// CIDAny is VMADDR_CID_ANY; PortAny is VMADDR_PORT_ANY.
	CIDAny  = 0xFFFFFFFF
	PortAny = 0xFFFFFFFF
	// CIDHost is VMADDR_CID_HOST; CIDParent is the Nitro parent's CID
	// (VMADDR_CID_PARENT on Nitro), where an enclave finds its parent.
	CIDHost   = 2
	CIDParent = 3
	// FlagToHost is VMADDR_FLAG_TO_HOST, the only svm_flags bit Linux
	// accepts.
	FlagToHost = 0x01
	// MaxSockaddr is sizeof(struct sockaddr_storage): the longest address
	// the socket calls copy from the caller.
	MaxSockaddr = 128
)

// Errors of [ParseSockaddrVM], as Linux's vsock_addr_cast reports them.
var (
	// ErrAddrShort: fewer than 16 bytes (the kernel's EFAULT; connect and
	// bind turn every address error into EINVAL).
	ErrAddrShort = errors.New("unotify: sockaddr_vm shorter than 16 bytes")
	// ErrAddrFamily: svm_family is not AF_VSOCK (EAFNOSUPPORT).
	ErrAddrFamily = errors.New("unotify: address family is not AF_VSOCK")
	// ErrAddrFlags: svm_flags has bits other than VMADDR_FLAG_TO_HOST (EINVAL).
	ErrAddrFlags = errors.New("unotify: unknown sockaddr_vm flags")
)

// SockaddrVM is struct sockaddr_vm: family, reserved1, port, cid, flags,
// zero[3]. Raw keeps the bytes as given, which Linux reports back
// unchanged by getpeername.
type SockaddrVM struct {
	Port  uint32
	CID   uint32
	Flags uint8
	Raw   [SockaddrVMSize]byte
}

// ParseSockaddrVM decodes the first 16 bytes of b as Linux's
// vsock_addr_cast and vsock_addr_validate do: at least 16 bytes, family
// AF_VSOCK, no flags but VMADDR_FLAG_TO_HOST. The reserved and zero bytes
// are not checked (Linux does not either). Bytes after the 16th are
// ignored.
func ParseSockaddrVM(b []byte) (SockaddrVM, error) {
	if len(b) < SockaddrVMSize {
		return SockaddrVM{}, ErrAddrShort
	}
	if binary.LittleEndian.Uint16(b[0:2]) != AFVsock {
		return SockaddrVM{}, ErrAddrFamily
	}
	a := SockaddrVM{
		Port:  binary.LittleEndian.Uint32(b[4:8]),
		CID:   binary.LittleEndian.Uint32(b[8:12]),
		Flags: b[12],
	}
	if a.Flags&^FlagToHost != 0 {
		return SockaddrVM{}, ErrAddrFlags
	}
	copy(a.Raw[:], b)
	return a, nil
}

// NewSockaddrVM returns the address (cid, port) with no flags.
func NewSockaddrVM(cid, port uint32) SockaddrVM {
	a := SockaddrVM{Port: port, CID: cid}
	binary.LittleEndian.PutUint16(a.Raw[0:2], AFVsock)
	binary.LittleEndian.PutUint32(a.Raw[4:8], port)
	binary.LittleEndian.PutUint32(a.Raw[8:12], cid)
	return a
}

// Bytes returns the 16 bytes of the address (as given when parsed).
func (a SockaddrVM) Bytes() []byte { return a.Raw[:] }
