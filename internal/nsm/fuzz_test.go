package nsm_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/internal/nsm"
)

// FuzzDecodeRequest checks that DecodeRequest never panics, that every
// error wraps ErrMalformed, and that an accepted request re-encodes to
// bytes that decode to the same request (the encoding is canonical, so a
// second encode is byte-identical).
func FuzzDecodeRequest(f *testing.F) {
	for _, g := range requestGoldens() {
		f.Add(unhex(f, g.hex))
	}
	f.Add(unhex(f, "a1"+hAttestation+"a0"))
	f.Add(unhex(f, "a1"+hExtendPCR+"a2"+hData+"41 09"+hIndex+"19 00 10"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := nsm.DecodeRequest(b)
		if err != nil {
			if r != nil {
				t.Fatalf("value %#v returned with error %v", r, err)
			}
			if !errors.Is(err, nsm.ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		enc, err := nsm.EncodeRequest(r)
		if err != nil {
			t.Fatalf("re-encode %#v: %v", r, err)
		}
		r2, err := nsm.DecodeRequest(enc)
		if err != nil {
			t.Fatalf("decode of re-encoding %x: %v", enc, err)
		}
		if d := cmp.Diff(r, r2); d != "" {
			t.Fatalf("round trip changed the request (-first +second):\n%s", d)
		}
		enc2, _ := nsm.EncodeRequest(r2)
		if !bytes.Equal(enc, enc2) {
			t.Fatalf("encoding not canonical: %x vs %x", enc, enc2)
		}
	})
}

// FuzzDecodeResponse: same properties for responses.
func FuzzDecodeResponse(f *testing.F) {
	for _, g := range responseGoldens() {
		f.Add(unhex(f, g.hex))
	}
	f.Add(unhex(f, "a1"+hExtendPCR+"a2"+hData+"41 01"+"65 65 78 74 72 61"+"f5"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := nsm.DecodeResponse(b)
		if err != nil {
			if r != nil {
				t.Fatalf("value %#v returned with error %v", r, err)
			}
			if !errors.Is(err, nsm.ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		enc, err := nsm.EncodeResponse(r)
		if err != nil {
			t.Fatalf("re-encode %#v: %v", r, err)
		}
		r2, err := nsm.DecodeResponse(enc)
		if err != nil {
			t.Fatalf("decode of re-encoding %x: %v", enc, err)
		}
		if d := cmp.Diff(r, r2); d != "" {
			t.Fatalf("round trip changed the response (-first +second):\n%s", d)
		}
	})
}

// FuzzReadFrame checks that ReadFrame never panics or over-reads, returns
// exactly the framed payload when it succeeds, and consumes exactly 4+N
// bytes.
func FuzzReadFrame(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 0x60}, uint16(4096))
	f.Add([]byte{0, 0, 0, 0}, uint16(4096))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1}, uint16(12288))
	f.Add([]byte{0, 0, 0x10, 0x01}, uint16(4096))
	f.Add([]byte{0, 0, 0, 3, 1}, uint16(16))
	f.Fuzz(func(t *testing.T, b []byte, max uint16) {
		r := bytes.NewReader(b)
		msg, err := nsm.ReadFrame(r, int(max))
		if err != nil {
			if msg != nil {
				t.Fatalf("payload returned with error %v", err)
			}
			var fe *nsm.FrameSizeError
			switch {
			case len(b) == 0:
				if err != io.EOF {
					t.Fatalf("empty input: %v, want io.EOF", err)
				}
			case errors.As(err, &fe):
				n := binary.BigEndian.Uint32(b)
				if fe.Size != n || (n != 0 && uint64(n) <= uint64(max)) {
					t.Fatalf("FrameSizeError %+v for prefix %d max %d", fe, n, max)
				}
				if !errors.Is(err, nsm.ErrFrame) {
					t.Fatal("FrameSizeError does not wrap ErrFrame")
				}
				if r.Len() != len(b)-4 {
					t.Fatalf("read %d payload bytes of a refused frame", len(b)-4-r.Len())
				}
			case !errors.Is(err, io.ErrUnexpectedEOF):
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		n := binary.BigEndian.Uint32(b)
		if int(n) != len(msg) || n == 0 || int(n) > int(max) || !bytes.Equal(msg, b[4:4+n]) {
			t.Fatalf("ReadFrame = %x for input %x max %d", msg, b, max)
		}
		if r.Len() != len(b)-4-int(n) {
			t.Fatalf("consumed %d bytes, want %d", len(b)-r.Len(), 4+n)
		}
	})
}

func TestFrameRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	msgs := [][]byte{{0x60}, bytes.Repeat([]byte{1}, nsm.MaxRequestSize), bytes.Repeat([]byte{2}, nsm.MaxResponseSize)}
	for _, m := range msgs {
		if err := nsm.WriteFrame(&buf, m); err != nil {
			t.Fatalf("WriteFrame(%d bytes): %v", len(m), err)
		}
	}
	if got := buf.Bytes()[:5]; !bytes.Equal(got, []byte{0, 0, 0, 1, 0x60}) {
		t.Fatalf("first frame = %x, want 0000000160", got)
	}
	for _, m := range msgs {
		got, err := nsm.ReadFrame(&buf, nsm.MaxResponseSize)
		if err != nil || !bytes.Equal(got, m) {
			t.Fatalf("ReadFrame = %d bytes, %v; want %d bytes", len(got), err, len(m))
		}
	}
	if _, err := nsm.ReadFrame(&buf, nsm.MaxResponseSize); err != io.EOF {
		t.Fatalf("ReadFrame at end = %v, want io.EOF", err)
	}
	for _, n := range []int{0, nsm.MaxResponseSize + 1} {
		if err := nsm.WriteFrame(io.Discard, make([]byte, n)); !errors.Is(err, nsm.ErrFrame) {
			t.Errorf("WriteFrame(%d bytes) = %v, want ErrFrame", n, err)
		}
	}
	// Request limit applied by the reader.
	buf.Reset()
	nsm.WriteFrame(&buf, make([]byte, nsm.MaxRequestSize+1))
	var fe *nsm.FrameSizeError
	if _, err := nsm.ReadFrame(&buf, nsm.MaxRequestSize); !errors.As(err, &fe) || fe.Size != nsm.MaxRequestSize+1 {
		t.Fatalf("ReadFrame over limit = %v, want FrameSizeError{4097}", err)
	}
	// Truncated payload.
	if _, err := nsm.ReadFrame(bytes.NewReader([]byte{0, 0, 0, 5, 1, 2}), 100); err != io.ErrUnexpectedEOF {
		t.Fatalf("truncated frame: %v, want io.ErrUnexpectedEOF", err)
	}
	if _, err := nsm.ReadFrame(bytes.NewReader([]byte{0, 0}), 100); err != io.ErrUnexpectedEOF {
		t.Fatalf("truncated header: %v, want io.ErrUnexpectedEOF", err)
	}
}
