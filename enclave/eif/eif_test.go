package eif

import (
	"bytes"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestMarshalLayout(t *testing.T) {
	img := testImage()
	b, err := Marshal(img)
	if err != nil {
		t.Fatal(err)
	}
	be := binary.BigEndian
	if string(b[:4]) != ".eif" || be.Uint16(b[4:]) != 4 || be.Uint16(b[6:]) != 0 ||
		be.Uint64(b[8:]) != 1<<30 || be.Uint64(b[16:]) != 2 || be.Uint16(b[26:]) != 5 {
		t.Fatalf("header fields wrong: % x", b[:32])
	}
	// Independent walk of the layout: sections follow each other from 548.
	off := uint64(548)
	for i, s := range img.Sections {
		if got := be.Uint64(b[28+8*i:]); got != off {
			t.Fatalf("section %d offset %d, want %d", i, got, off)
		}
		if got := be.Uint64(b[284+8*i:]); got != uint64(len(s.Data)) {
			t.Fatalf("section %d size %d", i, got)
		}
		if be.Uint16(b[off:]) != uint16(s.Type) || be.Uint16(b[off+2:]) != 0 || be.Uint64(b[off+4:]) != uint64(len(s.Data)) {
			t.Fatalf("section %d header % x", i, b[off:off+12])
		}
		if !bytes.Equal(b[off+12:off+12+uint64(len(s.Data))], s.Data) {
			t.Fatalf("section %d data", i)
		}
		off += 12 + uint64(len(s.Data))
	}
	if off != uint64(len(b)) {
		t.Fatalf("length %d, want %d", len(b), off)
	}
	// CRC: zlib crc32 over header[0:544] and then everything after the header.
	want := crc32.Update(crc32.ChecksumIEEE(b[:544]), crc32.IEEETable, b[548:])
	if got := be.Uint32(b[544:]); got != want {
		t.Fatalf("crc %08x, want %08x", got, want)
	}
	got, err := Unmarshal(b, ReadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(img.Sections, got.Sections); diff != "" {
		t.Fatalf("round trip (-want +got):\n%s", diff)
	}
}

func TestCRCCombine(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, 7, 12, 548, 4096, 100003} {
		a := make([]byte, r.IntN(1000))
		b := make([]byte, n)
		for i := range a {
			a[i] = byte(r.Uint32())
		}
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		want := crc32.ChecksumIEEE(append(append([]byte(nil), a...), b...))
		if got := crc32Combine(crc32.ChecksumIEEE(a), crc32.ChecksumIEEE(b), int64(len(b))); got != want {
			t.Errorf("len %d: %08x, want %08x", n, got, want)
		}
	}
}

// memFile is an in-memory io.WriteSeeker.
type memFile struct {
	b   []byte
	pos int64
}

func (m *memFile) Write(p []byte) (int, error) {
	if need := m.pos + int64(len(p)); need > int64(len(m.b)) {
		m.b = append(m.b, make([]byte, need-int64(len(m.b)))...)
	}
	copy(m.b[m.pos:], p)
	m.pos += int64(len(p))
	return len(p), nil
}

func (m *memFile) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
		m.pos = off
	case io.SeekCurrent:
		m.pos += off
	case io.SeekEnd:
		m.pos = int64(len(m.b)) + off
	}
	return m.pos, nil
}

func TestStreamWriterMatchesMarshal(t *testing.T) {
	img := testImage()
	big := make([]byte, 3<<20+17) // crosses the writer's buffer and the parallel hashing threshold
	for i := range big {
		big[i] = byte(i * 7)
	}
	img.Sections[4].Data = big
	want, err := Marshal(img)
	if err != nil {
		t.Fatal(err)
	}
	wantM, err := Measure(img)
	if err != nil {
		t.Fatal(err)
	}
	mf := &memFile{b: []byte("prefix")} // the image may start at a non-zero position
	mf.pos = 6
	w, err := NewWriter(mf, WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range img.Sections {
		dst, err := w.BeginSection(s.Type)
		if err != nil {
			t.Fatal(err)
		}
		for p := s.Data; len(p) > 0; {
			n := min(len(p), 1000+len(p)/3)
			if _, err := dst.Write(p[:n]); err != nil {
				t.Fatal(err)
			}
			p = p[n:]
		}
		if err := w.EndSection(); err != nil {
			t.Fatal(err)
		}
	}
	m, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(mf.b[6:], want) {
		t.Fatal("streamed image differs from Marshal")
	}
	if mf.pos != int64(len(mf.b)) {
		t.Fatalf("writer left at %d, want end %d", mf.pos, len(mf.b))
	}
	if diff := cmp.Diff(wantM, m); diff != "" {
		t.Fatalf("measurements (-want +got):\n%s", diff)
	}
}

func TestStreamWriterRejectsBadLayout(t *testing.T) {
	w, err := NewWriter(&memFile{}, WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteSection(SectionKernel, bytes.NewReader([]byte("k"))); err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteSection(SectionCmdline, bytes.NewReader(nil)); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Close(); !errors.Is(err, ErrSectionCount) {
		t.Fatalf("Close without ramdisk/metadata: %v", err)
	}
}

// independentPCRs recomputes PCR0/1/2 from raw section bytes with nitro's
// formulas, without the Measurer.
func independentPCRs(img *Image) (p0, p1, p2 string) {
	var all, boot, app []byte
	rd := 0
	for _, s := range img.Sections {
		switch s.Type {
		case SectionKernel, SectionCmdline:
			all, boot = append(all, s.Data...), append(boot, s.Data...)
		case SectionRamdisk:
			all = append(all, s.Data...)
			if rd == 0 {
				boot = append(boot, s.Data...)
			} else {
				app = append(app, s.Data...)
			}
			rd++
		}
	}
	ext := func(b []byte) string {
		d := sha512.Sum384(b)
		e := sha512.Sum384(append(make([]byte, 48), d[:]...))
		return hex.EncodeToString(e[:])
	}
	return ext(all), ext(boot), ext(app)
}

func TestMeasure(t *testing.T) {
	img := testImage()
	m, err := Measure(img)
	if err != nil {
		t.Fatal(err)
	}
	p0, p1, p2 := independentPCRs(img)
	got := [3]string{hex.EncodeToString(m.PCR0[:]), hex.EncodeToString(m.PCR1[:]), hex.EncodeToString(m.PCR2[:])}
	if diff := cmp.Diff([3]string{p0, p1, p2}, got); diff != "" {
		t.Fatalf("PCRs (-want +got):\n%s", diff)
	}
	if m.PCR8 != nil {
		t.Fatal("PCR8 set on an unsigned image")
	}
	// Metadata is not measured.
	img.Sections[2].Data = []byte("{}")
	m2, _ := Measure(img)
	if m2.PCR0 != m.PCR0 {
		t.Fatal("metadata changed PCR0")
	}
	j, err := BuildInfo{Measurements: m}.MarshalJSONTest()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"Measurements":{"HashAlgorithm":"Sha384 { ... }","PCR0":"` + p0 + `","PCR1":"` + p1 + `","PCR2":"` + p2 + `"}}`
	if j != want {
		t.Fatalf("JSON\n got %s\nwant %s", j, want)
	}
}

func TestAWSPCRVectors(t *testing.T) {
	tests := []struct{ in, want string }{
		{"arn:aws:iam::123456789012:role/Webserver", "78fce75db17cd4e0a3fb8dad3ad128ca5e77edbb2b2c7f75329dccd99aa5f6ef4fc1f1a452e315b9e98f9e312e6921e6"},
		{"i-1234567890abcdef0", "08f996b5d43e047a9eb51e7f548bfee7e164fd7dc8f65541f2ac09d6545ac812719327281c401a67a10fcba87ae79ce0"},
	}
	p3 := PCR3ForRoleARN(tests[0].in)
	p4 := PCR4ForInstanceID(tests[1].in)
	if got := hex.EncodeToString(p3[:]); got != tests[0].want {
		t.Errorf("PCR3 = %s", got)
	}
	if got := hex.EncodeToString(p4[:]); got != tests[1].want {
		t.Errorf("PCR4 = %s", got)
	}
}

func TestPCRFromReader(t *testing.T) {
	data := []byte("hello pcr")
	got, err := PCRFromReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	d := sha512.Sum384(data)
	if want := Extend(PCR{}, d[:]); got != want || PCRFromBytes(data) != want {
		t.Fatal("PCRFromReader differs from SHA384(0^48 ‖ SHA384(data))")
	}
}

func TestIsNoKernel(t *testing.T) {
	img := testImage()
	if IsNoKernel(img) {
		t.Fatal("normal image reported as no-kernel")
	}
	img.Sections[0].Data = []byte(NoKernelMarker)
	if !IsNoKernel(img) {
		t.Fatal("marker not detected")
	}
}

func TestOpen(t *testing.T) {
	b, err := Marshal(testImage())
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "x.eif")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(p, ReadOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(filepath.Dir(p), ReadOptions{}); err == nil {
		t.Fatal("Open of a directory succeeded")
	}
}

func TestReadRejects(t *testing.T) {
	valid, err := Marshal(testImage())
	if err != nil {
		t.Fatal(err)
	}
	be := binary.BigEndian
	// fix recomputes the CRC so that only the intended defect remains.
	fix := func(b []byte) []byte {
		be.PutUint32(b[544:], crc32.Update(crc32.ChecksumIEEE(b[:544]), crc32.IEEETable, b[548:]))
		return b
	}
	mut := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), valid...)) }
	sec := func(b []byte, i int) uint64 { return be.Uint64(b[28+8*i:]) }
	rebuild := func(img *Image, version uint16) []byte {
		// Write without the writer's checks.
		h := baseHeader(Header{Version: version})
		h.NumSections = uint16(len(img.Sections))
		off := uint64(HeaderSize)
		for i, s := range img.Sections {
			h.SectionOffsets[i], h.SectionSizes[i] = off, uint64(len(s.Data))
			off += 12 + uint64(len(s.Data))
		}
		h.CRC32 = computeCRC(&h, img.Sections)
		var buf bytes.Buffer
		buf.Write(h.encode())
		for _, s := range img.Sections {
			buf.Write(sectionHeader(s.Type, uint64(len(s.Data))))
			buf.Write(s.Data)
		}
		return buf.Bytes()
	}
	secs := func(types ...SectionType) *Image {
		img := &Image{}
		for _, t := range types {
			img.Sections = append(img.Sections, Section{Type: t, Data: []byte{byte(t)}})
		}
		return img
	}
	K, C, R, S, M := SectionKernel, SectionCmdline, SectionRamdisk, SectionSignature, SectionMetadata
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrTruncated},
		{"bad magic", mut(func(b []byte) []byte { b[0] = 'x'; return b }), ErrBadMagic},
		{"short header", valid[:100], ErrTruncated},
		{"version 5", mut(func(b []byte) []byte { be.PutUint16(b[4:], 5); return fix(b) }), ErrUnsupportedVersion},
		{"version 1", mut(func(b []byte) []byte { be.PutUint16(b[4:], 1); return fix(b) }), ErrUnsupportedVersion},
		{"header flags", mut(func(b []byte) []byte { be.PutUint16(b[6:], 2); return fix(b) }), ErrFlags},
		{"reserved", mut(func(b []byte) []byte { be.PutUint16(b[24:], 1); return fix(b) }), ErrFlags},
		{"33 sections", mut(func(b []byte) []byte { be.PutUint16(b[26:], 33); return fix(b) }), ErrTooManySections},
		{"0 sections", mut(func(b []byte) []byte { be.PutUint16(b[26:], 0); return fix(b) }), ErrSectionCount},
		{"unused slot", mut(func(b []byte) []byte { be.PutUint64(b[28+8*10:], 1); return fix(b) }), ErrBounds},
		{"offset overlap", mut(func(b []byte) []byte { be.PutUint64(b[28+8*1:], sec(b, 1)-1); return fix(b) }), ErrBounds},
		{"huge size", mut(func(b []byte) []byte { be.PutUint64(b[284:], 1<<63); return fix(b) }), ErrBounds},
		{"truncated file", valid[:len(valid)-3], ErrBounds},
		{"trailing bytes", append(append([]byte(nil), valid...), 0), ErrBounds},
		{"section flags", mut(func(b []byte) []byte { b[sec(b, 0)+3] = 1; return fix(b) }), ErrFlags},
		{"section type 6", mut(func(b []byte) []byte { b[sec(b, 0)+1] = 6; return fix(b) }), ErrSectionType},
		{"section type 0", mut(func(b []byte) []byte { b[sec(b, 0)+1] = 0; return fix(b) }), ErrSectionType},
		{"section size mismatch", mut(func(b []byte) []byte { b[sec(b, 1)+11]++; return fix(b) }), ErrSectionHeaderMismatch},
		{"crc", mut(func(b []byte) []byte { b[len(b)-1] ^= 1; return b }), ErrCRC},
		{"ramdisk before kernel", rebuild(secs(R, K, C, M), 4), ErrSectionOrder},
		{"two kernels", rebuild(secs(K, K, C, M, R), 4), ErrSectionCount},
		{"no cmdline", rebuild(secs(K, M, R), 4), ErrSectionCount},
		{"no ramdisk", rebuild(secs(K, C, M), 4), ErrSectionCount},
		{"no metadata v4", rebuild(secs(K, C, R), 4), ErrSectionCount},
		{"two metadata", rebuild(secs(K, C, M, M, R), 4), ErrSectionCount},
		{"two signatures", rebuild(secs(K, C, M, R, S, S), 4), ErrSectionCount},
		{"signature in v2", rebuild(secs(K, C, R, S), 2), ErrSectionCount},
		{"metadata in v3", rebuild(secs(K, C, M, R), 3), ErrSectionCount},
		{"big signature", rebuild(&Image{Sections: []Section{{K, []byte{1}}, {C, nil}, {M, nil}, {R, nil}, {S, make([]byte, MaxSignatureSize+1)}}}, 4), ErrTooLarge},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			img, err := Unmarshal(tc.in, ReadOptions{})
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if img != nil {
				t.Fatal("image returned with an error")
			}
		})
	}
	// v2 and v3 images without metadata are accepted.
	for _, v := range []uint16{2, 3} {
		if _, err := Unmarshal(rebuild(secs(K, C, R, R), v), ReadOptions{}); err != nil {
			t.Errorf("version %d: %v", v, err)
		}
	}
	// IgnoreCRC reports instead of failing.
	bad := mut(func(b []byte) []byte { b[len(b)-1] ^= 1; return b })
	img, err := Unmarshal(bad, ReadOptions{IgnoreCRC: true})
	if err != nil || CheckCRC(img) {
		t.Fatalf("IgnoreCRC: %v, CheckCRC %v", err, img != nil && CheckCRC(img))
	}
}

func FuzzRead(f *testing.F) {
	valid, _ := Marshal(testImage())
	f.Add(valid)
	img := testImage()
	cert, key := testCert(f, ellipticP384(), timeNow().Add(-1e12), timeNow().Add(1e12))
	if err := Sign(img, cert, key); err == nil {
		signed, _ := Marshal(img)
		f.Add(signed)
	}
	f.Add(valid[:HeaderSize])
	f.Fuzz(func(t *testing.T, b []byte) {
		img, err := Unmarshal(b, ReadOptions{IgnoreCRC: true})
		if err != nil {
			if img != nil {
				t.Fatal("image with error")
			}
			return
		}
		// Everything downstream of a parsed image must not panic either.
		_, _ = Describe(img)
		_, _ = VerifySignature(img, timeNow())
		out, err := Marshal(img)
		if err != nil {
			t.Fatalf("re-marshal of a parsed image: %v", err)
		}
		if len(out) != len(b) {
			t.Fatalf("re-marshal changed the size: %d → %d", len(b), len(out))
		}
	})
}

func BenchmarkMeasurer(b *testing.B) {
	data := make([]byte, 64<<20)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		m := NewMeasurer()
		m.BeginSection(SectionRamdisk)
		m.BeginSection(SectionRamdisk)
		for p := data; len(p) > 0; p = p[1<<20:] {
			m.Write(p[:1<<20])
		}
		m.Sum()
	}
}
