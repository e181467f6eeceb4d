package build

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/cloister/cloister/internal/imagetest"
)

// hostileCase is one hostile layer and what building it must report.
type hostileCase struct {
	name  string
	layer func(t testing.TB) []byte // the stored layer blob
	opts  func(o *Options)
	want  error
	msg   []string // substrings the error message must hold
}

func tarLayer(entries ...imagetest.Entry) func(testing.TB) []byte {
	return func(testing.TB) []byte { return imagetest.Tar(entries...) }
}

func hostileCases() []hostileCase {
	const mib = 1 << 20
	return []hostileCase{
		// A 100 KB name 50,000 directories deep: before the fix the tree
		// held every prefix of it as a separate path string (2.6 GB).
		{name: "deep path", layer: tarLayer(imagetest.Entry{Name: imagetest.DeepPath(50000), Data: []byte("x")}),
			want: ErrLayer, msg: []string{"100001 bytes", "longer than 4088"}},
		{name: "path of depth 4000", layer: tarLayer(imagetest.Entry{Name: imagetest.DeepPath(4000), Data: []byte("x")}),
			want: ErrLayer, msg: []string{"8001 bytes", "longer than 4088"}},
		{name: "long file name", layer: tarLayer(imagetest.Entry{Name: "dir/" + strings.Repeat("n", 256), Data: []byte("x")}),
			want: ErrLayer, msg: []string{"256 bytes", "longer than 255"}},
		// Short entry names that reach 80,000 levels through 40 symbolic
		// links (1.7 GB for 20 links before the fix).
		{name: "deep through symbolic links", layer: tarLayer(imagetest.SymlinkChain(40, 2000)...),
			want: ErrLayer, msg: []string{"longer than 4088"}},
		{name: "long name through a symbolic link", layer: tarLayer(
			imagetest.Entry{Name: "s", Typeflag: imagetest.TypeSymlink, Linkname: strings.Repeat("n", 300)},
			imagetest.Entry{Name: "s/f", Data: []byte("x")}),
			want: ErrLayer, msg: []string{"300 bytes", "longer than 255"}},
		// A 3 KB layer whose sparse file expands to 4 GiB, past the default
		// cap, or to 5 GiB, more than a ramdisk entry holds.
		{name: "sparse file past the default cap", layer: tarLayer(imagetest.Sparse("big", 4<<30-1)),
			want: ErrTooLarge, msg: []string{"MaxImageSize", "4294967296"}},
		{name: "sparse file past the ramdisk format", layer: tarLayer(imagetest.Sparse("big", 5<<30)),
			want: ErrLayer, msg: []string{"5368709120 bytes", "at most 4294967295"}},
		{name: "sparse file", layer: tarLayer(imagetest.Sparse("big", 512*mib)),
			opts: func(o *Options) { o.MaxImageSize = 64 * mib },
			want: ErrTooLarge, msg: []string{"MaxImageSize", "67108864"}},
		// Gzip bombs: a regular file (staged to disk before the fix) and
		// a whiteout whose content the tar reader skips (decompressed in
		// full, twice, before the fix).
		{name: "gzip bomb file", layer: func(testing.TB) []byte { return imagetest.GzipBomb(imagetest.Entry{Name: "big"}, 256*mib) },
			opts: func(o *Options) { o.MaxImageSize = 64 * mib },
			want: ErrTooLarge, msg: []string{"MaxImageSize", "67108864"}},
		{name: "gzip bomb whiteout", layer: func(testing.TB) []byte { return imagetest.GzipBomb(imagetest.Entry{Name: ".wh.big"}, 256*mib) },
			opts: func(o *Options) { o.MaxImageSize = 64 * mib },
			want: ErrTooLarge, msg: []string{"decompressed", "MaxImageSize", "67108864"}},
		// A zstd bomb whose frame asks for a 512 MiB window (1 GB of memory
		// before the fix).
		{name: "zstd bomb with a 512 MiB window", layer: func(t testing.TB) []byte {
			b, err := imagetest.ZstdBomb(imagetest.Entry{Name: ".wh.big"}, 256*mib, 29)
			must(t, err)
			return b
		}, want: ErrLayer, msg: []string{"zstd", "window"}},
		{name: "zstd bomb", layer: func(t testing.TB) []byte {
			b, err := imagetest.ZstdBomb(imagetest.Entry{Name: ".wh.big"}, 256*mib, 20)
			must(t, err)
			return b
		}, opts: func(o *Options) { o.MaxImageSize = 64 * mib },
			want: ErrTooLarge, msg: []string{"decompressed", "MaxImageSize", "67108864"}},
		{name: "too many entries", layer: tarLayer(imagetest.ManyFiles(2001)...),
			opts: func(o *Options) { o.MaxEntries = 2000 },
			want: ErrTooLarge, msg: []string{"MaxEntries", "2000"}},
		{name: "too many implicit directories", layer: tarLayer(imagetest.Entry{Name: imagetest.DeepPath(2000), Data: []byte("x")}),
			opts: func(o *Options) { o.MaxEntries = 1000 },
			want: ErrTooLarge, msg: []string{"MaxEntries", "1000"}},
	}
}

// TestHostileLayers builds each hostile layer from an OCI layout and checks
// that the build fails with the right error class and message, writes
// nothing, leaves no staged file behind and allocates little (the bytes
// allocated are logged; they are not timing-dependent).
func TestHostileLayers(t *testing.T) {
	for _, tc := range hostileCases() {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "layout")
			must(t, imagetest.WriteOCILayout(dir, tc.layer(t)))
			opts := baseOptions(t)
			opts.TempDir = t.TempDir()
			if tc.opts != nil {
				tc.opts(&opts)
			}
			out := filepath.Join(t.TempDir(), "out.eif")
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			_, err := BuildFile(context.Background(), FromOCILayout(dir), out, opts)
			runtime.ReadMemStats(&after)
			alloc := after.TotalAlloc - before.TotalAlloc
			t.Logf("error: %v", err)
			t.Logf("allocated %d MiB", alloc>>20)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			for _, s := range tc.msg {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Errorf("output file: %v, want none", err)
			}
			if left, _ := os.ReadDir(opts.TempDir); len(left) != 0 {
				t.Errorf("staging left %d entries behind", len(left))
			}
			if alloc > 128<<20 {
				t.Errorf("allocated %d MiB, want at most 128 MiB", alloc>>20)
			}
		})
	}
}

// TestLimitError checks what a LimitError carries for errors.As.
func TestLimitError(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "layout")
	must(t, imagetest.WriteOCILayout(dir, imagetest.Tar(imagetest.ManyFiles(10)...)))
	opts := baseOptions(t)
	opts.MaxEntries = 5
	_, err := Build(context.Background(), FromOCILayout(dir), &memWS{}, opts)
	var le *LimitError
	if !errors.As(err, &le) {
		t.Fatalf("got %v, want a *LimitError", err)
	}
	if le.Option != "MaxEntries" || le.Limit != 5 || le.Layer != 1 {
		t.Fatalf("LimitError = %+v", le)
	}
}

// TestLimitsAtTheEdge builds images exactly at the entry cap and at a path
// of exactly MaxPathLen bytes; one more fails.
func TestLimitsAtTheEdge(t *testing.T) {
	longest := strings.Repeat(strings.Repeat("p", 254)+"/", 16)
	longest += strings.Repeat("q", MaxPathLen-len(longest))
	tests := []struct {
		name    string
		entries []imagetest.Entry
		opts    func(o *Options)
		want    error
	}{
		{"entries at the cap", imagetest.ManyFiles(100), func(o *Options) { o.MaxEntries = 100 }, nil},
		{"one entry past the cap", imagetest.ManyFiles(101), func(o *Options) { o.MaxEntries = 100 }, ErrTooLarge},
		{"path of MaxPathLen bytes", []imagetest.Entry{{Name: longest, Data: []byte("x")}}, nil, nil},
		{"path one byte longer", []imagetest.Entry{{Name: longest + "q", Data: []byte("x")}}, nil, ErrLayer},
		{"name of 255 bytes", []imagetest.Entry{{Name: strings.Repeat("n", 255)}}, nil, nil},
		{"file content at the size cap", []imagetest.Entry{{Name: "f", Data: make([]byte, 1<<20)}},
			func(o *Options) { o.MaxImageSize = 1<<20 + 64<<10 }, nil},
		{"file content past the size cap", []imagetest.Entry{{Name: "f", Data: make([]byte, 1<<20)}},
			func(o *Options) { o.MaxImageSize = 1 << 20 }, ErrTooLarge},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "layout")
			must(t, imagetest.WriteOCILayout(dir, imagetest.Tar(tc.entries...)))
			opts := baseOptions(t)
			if tc.opts != nil {
				tc.opts(&opts)
			}
			out := &memWS{}
			_, err := Build(context.Background(), FromOCILayout(dir), out, opts)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if err != nil {
				return
			}
			ents := ramdiskEntries(t, parseEIF(t, out.b).section(3, 1))
			for _, e := range tc.entries {
				if _, ok := ents["rootfs/"+e.Name]; !ok {
					t.Errorf("%.40s… missing from the ramdisk", e.Name)
				}
			}
		})
	}
}

// failingAtEOF is a blob whose reader fails at its end, as a registry
// layer's verifying reader does when the digest does not match.
type failingAtEOF struct{ r io.Reader }

func (f failingAtEOF) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if err == io.EOF {
		return n, errors.New("digest mismatch")
	}
	return n, err
}

func (failingAtEOF) Close() error { return nil }

// TestLayerReadToItsEnd: the tar archive ends before its blob (padding,
// the gzip trailer), and a registry blob's digest is only checked at its
// end, so a layer must be read to the end and a failure there refused.
func TestLayerReadToItsEnd(t *testing.T) {
	budget, err := newBudget(&Options{MaxImageSize: 8 << 20, MaxEntries: 4096})
	if err != nil {
		t.Fatal(err)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(layerTar(t, []tarEntry{{hdr: tar.Header{Name: "f", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1}, data: "x"}}))
	zw.Close()
	tr := newTree(t.TempDir(), budget)
	l := layer{desc: "sha256:bad", open: func() (io.ReadCloser, error) { return failingAtEOF{bytes.NewReader(gz.Bytes())}, nil }}
	if err := applyLayer(context.Background(), tr, l, 1, nil); !errors.Is(err, ErrLayer) || !strings.Contains(err.Error(), "digest mismatch") {
		t.Fatalf("applyLayer = %v, want the blob's end-of-stream failure as ErrLayer", err)
	}
}
