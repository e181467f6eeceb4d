//go:build linux

package unotify

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// diag asks one network namespace whether a Unix socket still exists
// (NETLINK_SOCK_DIAG, an exact lookup by inode and cookie, as ss(8) does).
type diag struct {
	mu  sync.Mutex
	fd  int
	seq atomic.Uint32
}

// newDiag opens a sock_diag socket with socket (in the namespace to ask).
func newDiag(socket func(domain, typ, proto int) (int, error)) (*diag, error) {
	fd, err := socket(unix.AF_NETLINK, unix.SOCK_DGRAM, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("unotify: sock_diag socket: %w", err)
	}
	tv := unix.NsecToTimeval(int64(time.Second))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("unotify: sock_diag socket: %w", err)
	}
	return &diag{fd: fd}, nil
}

// Sizes of struct nlmsghdr, struct unix_diag_req and struct unix_diag_msg.
const (
	nlmsgHdrLen    = 16
	unixDiagReqLen = 24
)

// alive reports whether the Unix socket with inode ino and cookie exists
// in the namespace. An error means the answer is unknown.
func (d *diag) alive(ino, cookie uint64) (bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	seq := d.seq.Add(1)
	req := make([]byte, nlmsgHdrLen+unixDiagReqLen)
	binary.NativeEndian.PutUint32(req[0:], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST)
	binary.NativeEndian.PutUint32(req[8:], seq)
	r := req[nlmsgHdrLen:]
	r[0] = unix.AF_UNIX
	binary.NativeEndian.PutUint32(r[4:], 0xffffffff) // udiag_states: all
	binary.NativeEndian.PutUint32(r[8:], uint32(ino))
	binary.NativeEndian.PutUint32(r[16:], uint32(cookie))
	binary.NativeEndian.PutUint32(r[20:], uint32(cookie>>32))
	if err := unix.Sendto(d.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return false, fmt.Errorf("unotify: sock_diag request: %w", err)
	}
	buf := make([]byte, 8192)
	for {
		n, _, err := unix.Recvfrom(d.fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return false, fmt.Errorf("unotify: sock_diag answer: %w", err)
		}
		msgs, err := parseNetlink(buf[:n])
		if err != nil {
			return false, err
		}
		for _, m := range msgs {
			if m.seq != seq {
				continue // an answer to an earlier, abandoned request
			}
			switch m.typ {
			case unix.NLMSG_ERROR:
				if len(m.data) < 4 {
					return false, errors.New("unotify: sock_diag: short error message")
				}
				switch e := -int32(binary.NativeEndian.Uint32(m.data)); unix.Errno(e) {
				case unix.ENOENT, unix.ESTALE:
					return false, nil
				default:
					return false, fmt.Errorf("unotify: sock_diag: %w", unix.Errno(e))
				}
			case unix.SOCK_DIAG_BY_FAMILY:
				return true, nil
			}
		}
	}
}

type nlMsg struct {
	typ  uint16
	seq  uint32
	data []byte
}

// parseNetlink splits a netlink datagram into its messages.
func parseNetlink(b []byte) ([]nlMsg, error) {
	var out []nlMsg
	for len(b) >= nlmsgHdrLen {
		l := int(binary.NativeEndian.Uint32(b[0:]))
		if l < nlmsgHdrLen || l > len(b) {
			return nil, errors.New("unotify: sock_diag: malformed netlink message")
		}
		out = append(out, nlMsg{typ: binary.NativeEndian.Uint16(b[4:]), seq: binary.NativeEndian.Uint32(b[8:]), data: b[nlmsgHdrLen:l]})
		l = (l + 3) &^ 3
		if l > len(b) {
			break
		}
		b = b[l:]
	}
	return out, nil
}

func (d *diag) close() {
	if d != nil {
		unix.Close(d.fd)
	}
}
