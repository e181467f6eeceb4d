package build

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"

	"github.com/cloister/cloister/internal/cpio"
)

// Defaults of Options.MaxImageSize and Options.MaxEntries.
const (
	DefaultMaxImageSize int64 = 4 << 30
	DefaultMaxEntries   int64 = 1_000_000
)

// Fixed limits on image layers: those of the ramdisk format and of Linux,
// not options.
const (
	// MaxPathLen is the longest path of a file below the image root, in
	// bytes: the ramdisk entry "rootfs/<path>" must fit cpio.MaxNameLen.
	// It also bounds the depth of the tree (at most 2044 levels).
	MaxPathLen = cpio.MaxNameLen - len(rootfsDir+"/")
	// MaxNameLen is the longest file name (one path component), Linux's NAME_MAX.
	MaxNameLen = 255
	// MaxConfigSize is the largest image configuration (or docker archive
	// manifest.json) read into memory.
	MaxConfigSize = 16 << 20
	// MaxZstdWindow is the largest zstd window a layer may ask for: the
	// zstd command's own default limit (--memory=128MB). A decoder keeps
	// that much of the decompressed stream in memory.
	MaxZstdWindow = 128 << 20
)

// maxResolveSteps bounds the path components walked to resolve one entry's
// parent directory, symbolic links included (twice the deepest tree).
const maxResolveSteps = 2 * (MaxPathLen/2 + 1)

// rootfsDir is the customer ramdisk directory holding the image file system.
const rootfsDir = "rootfs"

// ErrTooLarge reports an image that exceeds Options.MaxImageSize or
// Options.MaxEntries; the error is a *LimitError.
var ErrTooLarge = errors.New("build: image too large")

// LimitError reports the layer at which an image exceeded one of the
// builder's caps. It wraps ErrTooLarge.
type LimitError struct {
	// Option names the Options field of the cap: "MaxImageSize" or "MaxEntries".
	Option string
	// Limit is the cap's value (bytes or entries).
	Limit int64
	// What says what exceeded it.
	What string
	// Layer is the 1-based index of the layer being applied.
	Layer int
}

func (e *LimitError) Error() string {
	unit := "bytes"
	if e.Option == "MaxEntries" {
		unit = "entries"
	}
	return fmt.Sprintf("%v: layer %d: %s exceed %s, %d %s; raise it only for an image you trust",
		ErrTooLarge, e.Layer, e.What, e.Option, e.Limit, unit)
}

func (e *LimitError) Unwrap() error { return ErrTooLarge }

// budget tracks what the layers of one build have used against the caps.
// Every count only grows: files later replaced or deleted still count,
// since they were read, staged and kept in memory.
type budget struct {
	maxSize    int64
	maxEntries int64
	layer      int   // the layer being applied (1-based)
	read       int64 // decompressed layer bytes read
	size       int64 // ramdisk bytes of everything created (sparse files expanded)
	entries    int64 // layer entries plus implicitly created parent directories
}

func newBudget(o *Options) (*budget, error) {
	b := &budget{maxSize: o.MaxImageSize, maxEntries: o.MaxEntries}
	if b.maxSize < 0 || b.maxEntries < 0 {
		return nil, fmt.Errorf("%w: MaxImageSize and MaxEntries must not be negative", ErrOptions)
	}
	if b.maxSize == 0 {
		b.maxSize = DefaultMaxImageSize
	}
	if b.maxEntries == 0 {
		b.maxEntries = DefaultMaxEntries
	}
	return b, nil
}

// entry counts one more entry (a layer entry or an implicit directory).
func (b *budget) entry() error {
	if b.entries >= b.maxEntries {
		return &LimitError{Option: "MaxEntries", Limit: b.maxEntries, What: "layer entries and the directories they imply", Layer: b.layer}
	}
	b.entries++
	return nil
}

// ramdisk counts a ramdisk entry for a path of pathLen bytes below the
// image root with size bytes of data, before it is created.
func (b *budget) ramdisk(pathLen int, size int64) error {
	n := cpio.EntrySize(len(rootfsDir)+1+pathLen, size)
	if n > b.maxSize-b.size {
		return &LimitError{Option: "MaxImageSize", Limit: b.maxSize, What: "the files of the image (sparse files at their full size)", Layer: b.layer}
	}
	b.size += n
	return nil
}

// countingReader counts the decompressed bytes read from a layer against
// the budget and fails once they pass maxSize.
type countingReader struct {
	r io.Reader
	b *budget
}

func (c *countingReader) Read(p []byte) (int, error) {
	left := c.b.maxSize - c.b.read
	if left <= 0 {
		// One byte past the cap tells a stream that ends exactly at it
		// from one that goes on.
		var one [1]byte
		if n, err := io.ReadFull(c.r, one[:]); n == 0 {
			return 0, err // io.EOF, or the stream's own error
		}
		return 0, &LimitError{Option: "MaxImageSize", Limit: c.b.maxSize, What: "the layers' decompressed data", Layer: c.b.layer}
	}
	if int64(len(p)) > left {
		p = p[:left]
	}
	n, err := c.r.Read(p)
	c.b.read += int64(n)
	return n, err
}

var (
	gzipMagic = []byte{0x1f, 0x8b}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// decompress returns the tar stream of a stored layer blob: gunzipped or
// un-zstd'ed according to its magic number (as container runtimes do,
// whatever the media type says), else the blob itself. Zstd frames may ask
// for a window of at most MaxZstdWindow; the zstd decoder runs without
// goroutines of its own.
func decompress(blob io.Reader) (io.Reader, func(), error) {
	br := bufio.NewReader(blob)
	head, _ := br.Peek(4)
	switch {
	case bytes.HasPrefix(head, gzipMagic):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: gzip: %w", ErrLayer, err)
		}
		return zr, func() { zr.Close() }, nil
	case bytes.HasPrefix(head, zstdMagic):
		zr, err := zstd.NewReader(br, zstd.WithDecoderMaxWindow(MaxZstdWindow), zstd.WithDecoderLowmem(false),
			zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, nil, fmt.Errorf("%w: zstd: %w", ErrLayer, err)
		}
		return zstdReader{zr}, zr.Close, nil
	}
	return br, func() {}, nil
}

// zstdReader names the zstd window limit in the decoder's error.
type zstdReader struct{ d *zstd.Decoder }

func (z zstdReader) Read(p []byte) (int, error) {
	n, err := z.d.Read(p)
	if errors.Is(err, zstd.ErrWindowSizeExceeded) {
		err = fmt.Errorf("%w: zstd frame asks for a window larger than %d MiB, the most the builder (like the zstd command) accepts: %w",
			ErrLayer, MaxZstdWindow>>20, err)
	}
	return n, err
}
