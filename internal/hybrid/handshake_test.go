package hybrid

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/google/go-cmp/cmp"
)

func TestParseConnect(t *testing.T) {
	tests := []struct {
		name string
		line string
		want uint32
		ok   bool
	}{
		{"canonical", "CONNECT 52\n", 52, true},
		{"shortest", "connect 0\n", 0, true},
		{"lower case", "connect 1234\n", 1234, true},
		{"mixed case", "CoNnEcT 9000\n", 9000, true},
		{"max u32", "CONNECT 4294967295\n", 4294967295, true},
		{"leading zeros", "CONNECT 0000000052\n", 52, true},
		{"extra spaces", "  CONNECT    52   \n", 52, true},
		{"tabs", "CONNECT\t52\t\n", 52, true},
		{"CRLF", "CONNECT 52\r\n", 52, true},
		{"exactly 32 bytes", "CONNECT " + strings.Repeat(" ", 16) + "5133133\n", 5133133, true},

		{"overflow u32", "CONNECT 4294967296\n", 0, false},
		{"eleven digits", "CONNECT 00000000052\n", 0, false},
		{"too long", "CONNECT " + strings.Repeat(" ", 17) + "5133133\n", 0, false},
		{"missing newline", "CONNECT 52", 0, false},
		{"empty", "", 0, false},
		{"only newline", "\n", 0, false},
		{"no port", "CONNECT\n", 0, false},
		{"no port with space", "CONNECT \n", 0, false},
		{"no separator", "CONNECT52\n", 0, false},
		{"hex", "CONNECT 0x34\n", 0, false},
		{"negative", "CONNECT -1\n", 0, false},
		{"plus sign", "CONNECT +52\n", 0, false},
		{"trailing token", "CONNECT 52 extra\n", 0, false},
		{"trailing garbage", "CONNECT 52x\n", 0, false},
		{"bare CR", "CONNECT 52\r\r\n", 0, false},
		{"CR inside", "CONNECT\r52\n", 0, false},
		{"two lines", "CONNECT 5\nCONNECT 6\n", 0, false},
		{"wrong keyword", "CONNEKT 52\n", 0, false},
		{"keyword prefix", "CONNECTX 52\n", 0, false},
		{"OK is not CONNECT", "OK 52\n", 0, false},
		{"NUL", "CONNECT 5\x002\n", 0, false},
		{"non-ASCII digit", "CONNECT ５２\n", 0, false},
		{"non-ASCII keyword", "CONNECİ 52\n", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseConnect([]byte(tt.line))
			if !tt.ok {
				if !errors.Is(err, ErrProtocol) {
					t.Fatalf("ParseConnect(%q) = %d, %v; want an ErrProtocol error", tt.line, got, err)
				}
				if got != 0 {
					t.Errorf("ParseConnect(%q) returned port %d with an error", tt.line, got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseConnect(%q) = %d, %v; want %d", tt.line, got, err, tt.want)
			}
		})
	}
}

func TestParseOK(t *testing.T) {
	tests := []struct {
		line string
		want uint32
		ok   bool
	}{
		{"OK 1073741824\n", 1 << 30, true},
		{"OK 52\n", 52, true}, // vhost-device-vsock answers with the guest port
		{"ok 7\r\n", 7, true},
		{"OK\n", 0, false},
		{"OK1\n", 0, false},
		{"KO 1\n", 0, false},
		{"CONNECT 1\n", 0, false},
		{"OK 1", 0, false},
		{"OK 99999999999\n", 0, false},
	}
	for _, tt := range tests {
		got, err := ParseOK([]byte(tt.line))
		if tt.ok != (err == nil) || got != tt.want {
			t.Errorf("ParseOK(%q) = %d, %v; want %d, ok=%v", tt.line, got, err, tt.want, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrProtocol) {
			t.Errorf("ParseOK(%q) error %v does not wrap ErrProtocol", tt.line, err)
		}
	}
}

func TestAppendRoundTrip(t *testing.T) {
	for _, p := range []uint32{0, 1, 52, 9000, 5133133, 1 << 30, 4294967295} {
		line := AppendConnect(nil, p)
		if len(line) > MaxLineLen {
			t.Fatalf("AppendConnect(%d) = %q is longer than MaxLineLen", p, line)
		}
		if got, err := ParseConnect(line); err != nil || got != p {
			t.Errorf("ParseConnect(AppendConnect(%d)) = %d, %v", p, got, err)
		}
		if got, err := ParseOK(AppendOK(nil, p)); err != nil || got != p {
			t.Errorf("ParseOK(AppendOK(%d)) = %d, %v", p, got, err)
		}
	}
	if diff := cmp.Diff("CONNECT 5133133\n", string(AppendConnect(nil, 5133133))); diff != "" {
		t.Errorf("AppendConnect (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff("OK 1073741824\n", string(AppendOK(nil, 1<<30))); diff != "" {
		t.Errorf("AppendOK (-want +got):\n%s", diff)
	}
}

func TestReadLine(t *testing.T) {
	tests := []struct {
		name     string
		r        func(string) io.Reader
		in       string
		want     string
		rest     string
		wantErr  error
		wantEOF  bool
		checkRem bool
	}{
		{name: "does not consume past newline", in: "CONNECT 5\nhello", want: "CONNECT 5\n", rest: "hello", checkRem: true},
		{name: "one byte at a time", r: func(s string) io.Reader { return iotest.OneByteReader(strings.NewReader(s)) }, in: "CONNECT 5\nx", want: "CONNECT 5\n", rest: "x", checkRem: true},
		{name: "data with EOF", r: func(s string) io.Reader { return iotest.DataErrReader(strings.NewReader(s)) }, in: "OK 1\n", want: "OK 1\n"},
		{name: "exactly 32", in: strings.Repeat("a", 31) + "\nrest", want: strings.Repeat("a", 31) + "\n", rest: "rest", checkRem: true},
		{name: "too long", in: strings.Repeat("a", 32) + "\n", wantErr: ErrProtocol},
		{name: "eof before any byte", in: "", wantEOF: true},
		{name: "cut short", in: "CONNECT 5", wantErr: io.ErrUnexpectedEOF},
		{name: "reader error", r: func(s string) io.Reader { return iotest.TimeoutReader(iotest.OneByteReader(strings.NewReader(s))) }, in: "CONNECT 5\n", wantErr: iotest.ErrTimeout},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := strings.NewReader(tt.in)
			var r io.Reader = src
			if tt.r != nil {
				r = tt.r(tt.in)
			}
			got, err := ReadLine(r)
			switch {
			case tt.wantEOF:
				if err != io.EOF {
					t.Fatalf("ReadLine = %q, %v; want io.EOF", got, err)
				}
				return
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) || got != nil {
					t.Fatalf("ReadLine = %q, %v; want error %v", got, err, tt.wantErr)
				}
				return
			case err != nil:
				t.Fatalf("ReadLine: %v", err)
			}
			if diff := cmp.Diff(tt.want, string(got)); diff != "" {
				t.Errorf("line (-want +got):\n%s", diff)
			}
			if tt.checkRem && tt.r == nil {
				rest, _ := io.ReadAll(src)
				if string(rest) != tt.rest {
					t.Errorf("left in stream %q, want %q", rest, tt.rest)
				}
			}
		})
	}
}

type zeroReader struct{}

func (zeroReader) Read([]byte) (int, error) { return 0, nil }

func TestReadLineNoProgress(t *testing.T) {
	if _, err := ReadLine(zeroReader{}); !errors.Is(err, io.ErrNoProgress) {
		t.Fatalf("ReadLine(zero reader) error = %v, want io.ErrNoProgress", err)
	}
}

func FuzzParseConnect(f *testing.F) {
	for _, s := range []string{
		"CONNECT 52\n", "connect 0\n", "CONNECT 4294967295\n", "CONNECT 4294967296\n", "  CoNnEcT\t7 \r\n",
		"CONNECT 52 x\n", "CONNECT\n", "OK 5\n", "CONNECT 5", "CONNECT +5\n", strings.Repeat("9", 40) + "\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		port, err := ParseConnect(line)
		if err != nil {
			if !errors.Is(err, ErrProtocol) || port != 0 {
				t.Fatalf("ParseConnect(%q) = %d, %v: errors must be ErrProtocol with port 0", line, port, err)
			}
			return
		}
		if len(line) > MaxLineLen || line[len(line)-1] != '\n' || bytes.Count(line, []byte("\n")) != 1 {
			t.Fatalf("ParseConnect accepted malformed line %q", line)
		}
		// An accepted line means the same as the canonical one.
		if got, err := ParseConnect(AppendConnect(nil, port)); err != nil || got != port {
			t.Fatalf("canonical form of %q does not round-trip: %d, %v", line, got, err)
		}
		// ReadLine hands exactly the accepted line back from a stream.
		got, err := ReadLine(io.MultiReader(bytes.NewReader(line), strings.NewReader("tail")))
		if err != nil || !bytes.Equal(got, line) {
			t.Fatalf("ReadLine(%q + tail) = %q, %v", line, got, err)
		}
		// ParseOK rejects every CONNECT line.
		if _, err := ParseOK(line); err == nil {
			t.Fatalf("ParseOK accepted request line %q", line)
		}
	})
}

func FuzzParseOK(f *testing.F) {
	for _, s := range []string{"OK 1073741824\n", "ok 0\r\n", "OK\n", "OK 1", "OK 42949672950\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		n, err := ParseOK(line)
		if err != nil {
			if !errors.Is(err, ErrProtocol) || n != 0 {
				t.Fatalf("ParseOK(%q) = %d, %v: errors must be ErrProtocol with 0", line, n, err)
			}
			return
		}
		if got, err := ParseOK(AppendOK(nil, n)); err != nil || got != n {
			t.Fatalf("canonical form of %q does not round-trip: %d, %v", line, got, err)
		}
	})
}
