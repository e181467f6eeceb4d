package cuse_test

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/cloister/cloister/internal/cuse"
)

// FuzzParseRequest decodes arbitrary bytes as a request from the kernel:
// it never panics, and what it accepts is consistent with the bytes.
func FuzzParseRequest(f *testing.F) {
	le := binary.LittleEndian
	mk := func(op uint32, body []byte) []byte {
		b := le.AppendUint32(nil, uint32(40+len(body)))
		b = le.AppendUint32(b, op)
		b = le.AppendUint64(b, 2)
		b = append(b, make([]byte, 24)...)
		return append(b, body...)
	}
	ioctl := le.AppendUint64(nil, 1)
	ioctl = le.AppendUint32(ioctl, 2)
	ioctl = le.AppendUint32(ioctl, 0xc0200a00)
	ioctl = le.AppendUint64(ioctl, 0x1000)
	ioctl = le.AppendUint32(ioctl, 4)
	ioctl = le.AppendUint32(ioctl, 36)
	ioctl = append(ioctl, "data"...)
	f.Add(mk(39, ioctl))
	f.Add(mk(4096, make([]byte, 16)))
	f.Add(mk(14, make([]byte, 8)))
	f.Add(mk(18, make([]byte, 24)))
	f.Add(mk(36, make([]byte, 8)))
	f.Add(mk(15, make([]byte, 40)))
	f.Add(mk(39, ioctl[:20]))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := cuse.ParseRequest(b)
		if err != nil {
			if !errors.Is(err, cuse.ErrProtocol) {
				t.Fatalf("error %v does not wrap ErrProtocol", err)
			}
			return
		}
		if int(r.Len) != len(b) || r.Opcode != le.Uint32(b[4:]) || r.Unique != le.Uint64(b[8:]) {
			t.Fatalf("header %+v does not match the bytes", r.Header)
		}
		set := 0
		for _, p := range []bool{r.Init != nil, r.Open != nil, r.Release != nil, r.Ioctl != nil, r.Interrupt != nil} {
			if p {
				set++
			}
		}
		if set > 1 {
			t.Fatalf("%d bodies decoded", set)
		}
		if r.Ioctl != nil && (int(r.Ioctl.InSize) != len(r.Ioctl.In) || 40+32+len(r.Ioctl.In) != len(b)) {
			t.Fatalf("ioctl in_size %d with %d bytes in a %d-byte request", r.Ioctl.InSize, len(r.Ioctl.In), len(b))
		}
	})
}
