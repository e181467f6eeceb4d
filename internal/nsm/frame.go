package nsm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/cloister/cloister/internal/wellknown"
)

// Port is the vsock port on the parent (CID 3) where the Cloister daemon
// serves the emulated security module in the microvm and sandbox worlds:
// 0x4E534D, "NSM" in ASCII.
const Port = wellknown.NSMPort

// WriteFrame writes msg as one frame of the NSM stream protocol: a 4-byte
// big-endian length followed by msg, in a single Write. It refuses an empty
// msg or one longer than [MaxResponseSize] (the larger of the two limits)
// with an error wrapping [ErrFrame].
func WriteFrame(w io.Writer, msg []byte) error {
	if len(msg) == 0 || len(msg) > MaxResponseSize {
		return fmt.Errorf("%w: refusing to send a %d-byte message (1..%d)", ErrFrame, len(msg), MaxResponseSize)
	}
	buf := make([]byte, 4+len(msg))
	binary.BigEndian.PutUint32(buf, uint32(len(msg)))
	copy(buf[4:], msg)
	_, err := w.Write(buf)
	return err
}

// ReadFrame reads one frame of the NSM stream protocol and returns its
// payload. It checks the length prefix before allocating: a length of zero
// or above max fails with a *FrameSizeError (wrapping [ErrFrame]). It
// returns io.EOF, unwrapped, only when r ends cleanly before the first
// byte of a frame; a frame cut short gives io.ErrUnexpectedEOF.
func ReadFrame(r io.Reader, max int) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == 0 || uint64(n) > uint64(max) {
		return nil, &FrameSizeError{Size: n, Max: max}
	}
	msg := make([]byte, n)
	if _, err := io.ReadFull(r, msg); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return msg, nil
}

// FrameSizeError is a frame whose length prefix is zero or larger than the
// reader's limit. The frame's payload has not been read, so the stream
// cannot be resynchronised: the connection must be closed.
type FrameSizeError struct {
	Size uint32 // the length prefix
	Max  int    // the reader's limit
}

// Error describes the refused length.
func (e *FrameSizeError) Error() string {
	return fmt.Sprintf("nsm: bad frame: length %d outside 1..%d", e.Size, e.Max)
}

// Unwrap returns [ErrFrame].
func (e *FrameSizeError) Unwrap() error { return ErrFrame }
