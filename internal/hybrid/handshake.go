package hybrid

import (
	"errors"
	"fmt"
	"io"
	"strconv"
)

// MaxLineLen is the longest handshake line, '\n' included, that either side
// accepts (Firecracker's limit for the CONNECT request).
const MaxLineLen = 32

// The handshake grammar, for both lines (decided here; Firecracker is looser,
// see ParseConnect):
//
//	line = *WSP keyword 1*WSP port *WSP [CR] LF    ; at most MaxLineLen bytes
//	WSP  = SP / HTAB
//	port = 1*10DIGIT                               ; value ≤ 4294967295
//
// with keyword "CONNECT" for the request and "OK" for the reply, both ASCII
// case-insensitive.

// ParseConnect parses a complete hybrid-vsock request line, '\n' included,
// and returns the requested port. It accepts exactly the grammar above:
// the keyword CONNECT in any ASCII case; spaces or tabs before the keyword,
// between keyword and port (at least one) and after the port; one optional
// '\r' right before the final '\n' (CRLF clients such as some socat setups);
// a port of 1–10 decimal digits (leading zeros allowed) no larger than
// 4294967295. It rejects, with an error wrapping [ErrProtocol]: lines longer
// than [MaxLineLen] bytes, a missing final '\n', any '\n' or '\r' elsewhere,
// signs, hexadecimal, any other byte (NUL, non-ASCII), values that overflow
// u32, and any token after the port. (Firecracker's own parser also ignores
// extra tokens and accepts a leading '+'; no known client sends either.)
func ParseConnect(line []byte) (uint32, error) {
	return parseLine(line, "CONNECT")
}

// ParseOK parses a complete hybrid-vsock reply line, '\n' included, and
// returns its number: the host-side port allocated by Firecracker,
// cloud-hypervisor or [Server], or the guest port on vhost-device-vsock. The
// grammar and the checks are those of [ParseConnect] with keyword "OK".
func ParseOK(line []byte) (uint32, error) {
	return parseLine(line, "OK")
}

// AppendConnect appends the request line "CONNECT <port>\n" to b.
func AppendConnect(b []byte, port uint32) []byte {
	b = append(b, "CONNECT "...)
	b = strconv.AppendUint(b, uint64(port), 10)
	return append(b, '\n')
}

// AppendOK appends the reply line "OK <n>\n" to b.
func AppendOK(b []byte, n uint32) []byte {
	b = append(b, "OK "...)
	b = strconv.AppendUint(b, uint64(n), 10)
	return append(b, '\n')
}

func protoErr(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrProtocol}, a...)...)
}

func isWSP(c byte) bool { return c == ' ' || c == '\t' }

func parseLine(line []byte, keyword string) (uint32, error) {
	if len(line) > MaxLineLen {
		return 0, protoErr("%s line is %d bytes, longer than %d", keyword, len(line), MaxLineLen)
	}
	if len(line) == 0 || line[len(line)-1] != '\n' {
		return 0, protoErr("%s line does not end with a newline", keyword)
	}
	s := line[:len(line)-1]
	if len(s) > 0 && s[len(s)-1] == '\r' {
		s = s[:len(s)-1]
	}
	i := 0
	for i < len(s) && isWSP(s[i]) {
		i++
	}
	if len(s)-i < len(keyword) {
		return 0, protoErr("expected %q", keyword)
	}
	for j := 0; j < len(keyword); j++ {
		c := s[i+j]
		if 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		}
		if c != keyword[j] {
			return 0, protoErr("expected %q", keyword)
		}
	}
	i += len(keyword)
	start := i
	for i < len(s) && isWSP(s[i]) {
		i++
	}
	if i == start {
		return 0, protoErr("expected a space after %q", keyword)
	}
	start = i
	var v uint64
	for i < len(s) && '0' <= s[i] && s[i] <= '9' {
		if i-start >= 10 {
			return 0, protoErr("port has more than 10 digits")
		}
		v = v*10 + uint64(s[i]-'0')
		i++
	}
	if i == start {
		return 0, protoErr("port is not a decimal number")
	}
	if v > 0xFFFFFFFF {
		return 0, protoErr("port %d does not fit in 32 bits", v)
	}
	for i < len(s) && isWSP(s[i]) {
		i++
	}
	if i != len(s) {
		return 0, protoErr("unexpected byte %q after the port", s[i])
	}
	return uint32(v), nil
}

// ReadLine reads one handshake line from r one byte at a time, so that no
// byte after the '\n' is consumed, and returns it with its '\n'. It reads at
// most [MaxLineLen] bytes. It is robust to the line arriving in pieces: it
// keeps reading until '\n', the limit, or an error from r (set a deadline on
// r to bound the wait). Errors: a line of MaxLineLen bytes without '\n'
// wraps [ErrProtocol]; end of stream after some bytes but before '\n' wraps
// [ErrProtocol] and io.ErrUnexpectedEOF; end of stream before any byte is
// io.EOF itself; any other error from r is returned as is.
func ReadLine(r io.Reader) ([]byte, error) {
	var buf [MaxLineLen]byte
	n, empty := 0, 0
	for n < len(buf) {
		m, err := r.Read(buf[n : n+1])
		n += m
		if m == 0 && err == nil {
			if empty++; empty > 100 {
				return nil, io.ErrNoProgress
			}
			continue
		}
		if m == 1 && buf[n-1] == '\n' {
			line := make([]byte, n)
			copy(line, buf[:n])
			return line, nil
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				if n == 0 {
					return nil, io.EOF
				}
				return nil, fmt.Errorf("%w: line cut short after %d bytes: %w", ErrProtocol, n, io.ErrUnexpectedEOF)
			}
			return nil, err
		}
	}
	return nil, protoErr("no newline within %d bytes", MaxLineLen)
}
