package unotify

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const afUnix = 1

func rawVM(family uint16, port, cid uint32, flags byte, extra ...byte) []byte {
	b := make([]byte, 16)
	binary.LittleEndian.PutUint16(b[0:], family)
	binary.LittleEndian.PutUint32(b[4:], port)
	binary.LittleEndian.PutUint32(b[8:], cid)
	b[12] = flags
	return append(b, extra...)
}

func TestParseSockaddrVM(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      []byte
		want    SockaddrVM
		wantErr error
	}{
		{"parent", rawVM(AFVsock, 5000, 3, 0), NewSockaddrVM(3, 5000), nil},
		{"any", rawVM(AFVsock, PortAny, CIDAny, 0), NewSockaddrVM(CIDAny, PortAny), nil},
		{"to host flag", rawVM(AFVsock, 1, 2, FlagToHost), SockaddrVM{Port: 1, CID: 2, Flags: 1, Raw: [16]byte(rawVM(AFVsock, 1, 2, 1))}, nil},
		{"longer than 16", rawVM(AFVsock, 7, 3, 0, 0xff, 0xff), NewSockaddrVM(3, 7), nil},
		{"reserved bytes kept", func() []byte { b := rawVM(AFVsock, 7, 3, 0); b[2], b[15] = 9, 9; return b }(),
			SockaddrVM{Port: 7, CID: 3, Raw: [16]byte(func() []byte { b := rawVM(AFVsock, 7, 3, 0); b[2], b[15] = 9, 9; return b }())}, nil},
		{"short", rawVM(AFVsock, 7, 3, 0)[:15], SockaddrVM{}, ErrAddrShort},
		{"empty", nil, SockaddrVM{}, ErrAddrShort},
		{"unix family", rawVM(afUnix, 7, 3, 0), SockaddrVM{}, ErrAddrFamily},
		{"family high byte", rawVM(AFVsock|0x100, 7, 3, 0), SockaddrVM{}, ErrAddrFamily},
		{"unknown flag", rawVM(AFVsock, 7, 3, 0x02), SockaddrVM{}, ErrAddrFlags},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseSockaddrVM(tc.in)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("error = %v, want %v", err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("address (-want +got):\n%s", diff)
			}
		})
	}
}

// FuzzParseSockaddrVM checks that the decoder never panics, accepts only
// what Linux accepts, and that an accepted address survives a round trip.
func FuzzParseSockaddrVM(f *testing.F) {
	f.Add(rawVM(AFVsock, 5000, 3, 0))
	f.Add(rawVM(AFVsock, PortAny, CIDAny, 1))
	f.Add(rawVM(afUnix, 0, 0, 0))
	f.Add([]byte{40, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := ParseSockaddrVM(b)
		valid := len(b) >= 16 && binary.LittleEndian.Uint16(b) == AFVsock && b[12]&^1 == 0
		if (err == nil) != valid {
			t.Fatalf("ParseSockaddrVM(%x) error = %v, Linux would accept: %v", b, err, valid)
		}
		if err != nil {
			return
		}
		if string(a.Bytes()) != string(b[:16]) {
			t.Fatalf("bytes %x, want %x", a.Bytes(), b[:16])
		}
		again, err := ParseSockaddrVM(a.Bytes())
		if err != nil || again != a {
			t.Fatalf("round trip: %+v, %v; want %+v", again, err, a)
		}
	})
}

func BenchmarkParseSockaddrVM(b *testing.B) {
	in := rawVM(AFVsock, 5000, 3, 0)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseSockaddrVM(in); err != nil {
			b.Fatal(err)
		}
	}
}
