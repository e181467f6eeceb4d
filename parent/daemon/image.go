package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cloister/cloister/enclave/eif"
	"github.com/cloister/cloister/parent"
)

// An enclave boots exactly the bytes the daemon measured. The daemon opens
// the caller's EIF once (with the caller's file permissions, see
// openAsCaller), copies it into a sealed memfd, and measures that copy; the
// monitor and the backend read only the memfd (handed over as descriptor
// ImageFD), never the path. Rewriting, truncating or renaming the file after
// run-enclave was called changes nothing about what boots or what is
// attested: a sealed memfd cannot be written, grown or shrunk by anyone.

// image is an EIF loaded for one launch: the sealed copy and what the daemon
// learned from it.
type image struct {
	file *os.File // sealed memfd holding the exact bytes that boot
	info imageInfo
}

// Close releases the daemon's descriptor of the copy.
func (img *image) Close() error { return img.file.Close() }

// imageInfo is what the daemon needs to know about an EIF before launching it.
type imageInfo struct {
	size         int64
	noKernel     bool
	measurements parent.Measurements
	pcrs         pcrSet // measured boot PCRs for the emulated NSM
	name         string
	version      string
	metadata     json.RawMessage
}

// imageCache keeps the sealed copies of recently launched (unsigned) images
// with their measurements. A launch of the same path looks up the copy kept
// for it, but reuses it only after comparing, byte for byte, what it reads
// from the caller's file now with the copy: the path is a hint, the proof is
// the bytes. Nothing about the file's metadata (size aside, as a first
// filter) is trusted. A hit costs two reads and a comparison instead of a
// new copy (page allocation), a parse and a measurement.
var imageCache = struct {
	sync.Mutex
	m     map[string]*cachedImage // by path
	bytes int64
	tick  uint64
}{m: map[string]*cachedImage{}}

type cachedImage struct {
	file *os.File // the sealed copy; each launch gets its own descriptor
	info imageInfo
	used uint64 // imageCache.tick at the last use
}

// The cache holds at most this many copies, and this many bytes of them.
const (
	imageCacheEntries = 16
	imageCacheBytes   = 1 << 30
)

// maxImageSize bounds the EIFs the daemon accepts (they are copied into
// memory): far above any enclave's memory today.
const maxImageSize = 64 << 30

// loadImage copies the EIF open in src into a sealed memfd, validates it and
// measures it, or reuses the sealed copy of a previous launch of name when
// src holds exactly its bytes. A signed image's signature is checked as
// nitro-cli does before launch (E59), at every launch since certificates
// expire (signed images are not cached). The caller owns the returned image
// and must Close it.
func loadImage(ctx context.Context, src *os.File, name string, now time.Time) (*image, error) {
	fi, err := src.Stat()
	if err != nil {
		return nil, newErr("E19", parent.ErrInvalidArgument, "cannot read EIF %s: %v", name, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, newErr("E19", parent.ErrInvalidArgument, "EIF %s is not a regular file", name)
	}
	size := fi.Size()
	if size > maxImageSize {
		return nil, newErr("E19", parent.ErrInvalidArgument, "EIF %s has %d bytes, more than the %d the daemon accepts", name, size, int64(maxImageSize))
	}
	if f, info := cachedCopy(name, size); f != nil {
		same, err := sameBytes(ctx, src, f, size)
		if err != nil {
			f.Close()
			return nil, newErr("E19", parent.ErrInvalidArgument, "cannot read EIF %s: %v", name, err)
		}
		if same {
			return &image{file: f, info: info}, nil
		}
		f.Close()
	}
	f, err := sealedCopy(ctx, src, size)
	if err != nil {
		return nil, newErr("E19", parent.ErrInvalidArgument, "cannot read EIF %s: %v", name, err)
	}
	info, err := measureImage(f, name, size, now)
	if err != nil {
		f.Close()
		return nil, err
	}
	if info.measurements.PCR8 == "" {
		keepCopy(name, f, info)
	}
	return &image{file: f, info: info}, nil
}

// cachedCopy returns a new descriptor of the copy kept for name if it has
// size bytes, and its measurements.
func cachedCopy(name string, size int64) (*os.File, imageInfo) {
	imageCache.Lock()
	defer imageCache.Unlock()
	c := imageCache.m[name]
	if c == nil || c.info.size != size {
		return nil, imageInfo{}
	}
	fd, err := unix.FcntlInt(c.file.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, imageInfo{}
	}
	imageCache.tick++
	c.used = imageCache.tick
	return os.NewFile(uintptr(fd), c.file.Name()), c.info
}

// keepCopy remembers f (through a descriptor of its own) as the copy of
// name, evicting the least recently used copies beyond the cache's bounds.
func keepCopy(name string, f *os.File, info imageInfo) {
	if info.size > imageCacheBytes {
		return
	}
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return
	}
	imageCache.Lock()
	defer imageCache.Unlock()
	if old := imageCache.m[name]; old != nil {
		imageCache.bytes -= old.info.size
		old.file.Close()
	}
	imageCache.tick++
	imageCache.m[name] = &cachedImage{file: os.NewFile(uintptr(fd), f.Name()), info: info, used: imageCache.tick}
	imageCache.bytes += info.size
	for len(imageCache.m) > imageCacheEntries || imageCache.bytes > imageCacheBytes {
		var oldest string
		for k, c := range imageCache.m {
			if oldest == "" || c.used < imageCache.m[oldest].used {
				oldest = k
			}
		}
		imageCache.bytes -= imageCache.m[oldest].info.size
		imageCache.m[oldest].file.Close()
		delete(imageCache.m, oldest)
	}
}

// sameBytes reports whether the first size bytes of src are exactly those
// of the sealed copy kept. Large images are compared in two halves at once.
func sameBytes(ctx context.Context, src, kept *os.File, size int64) (bool, error) {
	if size < 4<<20 {
		return sameRange(ctx, src, kept, 0, size)
	}
	half := size / 2 &^ (1<<20 - 1)
	type result struct {
		same bool
		err  error
	}
	second := make(chan result, 1)
	go func() {
		same, err := sameRange(ctx, src, kept, half, size)
		second <- result{same, err}
	}()
	same, err := sameRange(ctx, src, kept, 0, half)
	r := <-second
	if err != nil {
		return false, err
	}
	if r.err != nil {
		return false, r.err
	}
	return same && r.same, nil
}

// sameRange compares the bytes [off, end) of src and kept.
func sameRange(ctx context.Context, src, kept *os.File, off, end int64) (bool, error) {
	const chunk = 1 << 20
	a, b := make([]byte, chunk), make([]byte, chunk)
	for off < end {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		n := min(int64(chunk), end-off)
		if _, err := src.ReadAt(a[:n], off); err != nil {
			if errors.Is(err, io.EOF) {
				return false, nil // it shrank: not the same, and the copy says so
			}
			return false, err
		}
		if _, err := kept.ReadAt(b[:n], off); err != nil {
			return false, fmt.Errorf("read the kept copy: %w", err)
		}
		if !bytes.Equal(a[:n], b[:n]) {
			return false, nil
		}
		off += n
	}
	return true, nil
}

// imageSeals are the seals that make a memfd immutable.
const imageSeals = unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE

// sealedCopy copies exactly size bytes of src into a new memfd and seals it
// against any change. A file that shrinks while it is copied is an error;
// bytes beyond size are not read.
func sealedCopy(ctx context.Context, src *os.File, size int64) (*os.File, error) {
	fd, err := unix.MemfdCreate("cloister-eif", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), "cloister-eif")
	fail := func(err error) (*os.File, error) {
		f.Close()
		return nil, err
	}
	if err := f.Truncate(size); err != nil {
		return fail(fmt.Errorf("size the in-memory copy (%d bytes): %w", size, err))
	}
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return fail(err)
		}
		n, err := src.ReadAt(buf[:min(int64(len(buf)), size-off)], off)
		if n > 0 {
			if _, werr := f.WriteAt(buf[:n], off); werr != nil {
				return fail(fmt.Errorf("copy into memory: %w", werr))
			}
			off += int64(n)
		}
		if err != nil && !(errors.Is(err, io.EOF) && off == size) {
			if errors.Is(err, io.EOF) {
				return fail(fmt.Errorf("the file shrank to %d bytes while it was read", off))
			}
			return fail(err)
		}
	}
	if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, imageSeals); err != nil {
		return fail(fmt.Errorf("seal the in-memory copy: %w", err))
	}
	return f, nil
}

// ImageFD is the descriptor on which a monitor started for one enclave
// (not a spare) receives its enclave's image, the daemon's sealed copy.
const ImageFD = 3

// checkSealed reports whether f is a sealed memfd, which nobody can change.
func checkSealed(f *os.File) error {
	seals, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0)
	if err != nil {
		return fmt.Errorf("the image is not the daemon's sealed copy: %w", err)
	}
	if seals&imageSeals != imageSeals {
		return fmt.Errorf("the image is not sealed (seals %#x)", seals)
	}
	return nil
}

// measureImage validates and measures the EIF held in f. name is only used
// in messages; no message echoes the file's content.
func measureImage(f *os.File, name string, size int64, now time.Time) (imageInfo, error) {
	img, err := eif.Read(f, size, eif.ReadOptions{})
	if err != nil {
		return imageInfo{}, newErr("E35", parent.ErrInvalidArgument, "%s is not a valid EIF: %v", name, err)
	}
	m, err := eif.Measure(img)
	if err != nil {
		return imageInfo{}, newErr("E35", parent.ErrInvalidArgument, "measuring %s: %v", name, err)
	}
	if m.PCR8 != nil {
		if _, err := eif.VerifySignature(img, now); err != nil {
			return imageInfo{}, newErr("E59", parent.ErrInvalidArgument, "signature of %s does not verify: %v", name, err)
		}
	}
	pcrs := pcrsOf(m)
	info := imageInfo{size: size, noKernel: eif.IsNoKernel(img), pcrs: pcrs, measurements: measurementsOf(pcrs)}
	if sec := img.Section(eif.SectionMetadata); sec != nil {
		md, err := eif.ParseMetadata(sec.Data)
		if err != nil {
			return imageInfo{}, newErr("E35", parent.ErrInvalidArgument, "metadata of %s: %v", name, err)
		}
		info.name, info.version = md.ImageName, md.ImageVersion
		if b, err := json.Marshal(md); err == nil {
			info.metadata = b
		}
	}
	return info, nil
}
