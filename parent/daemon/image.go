package daemon

import (
	"context"
	"crypto/sha256"
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

// imageCache remembers the measurements of recently launched images by the
// SHA-256 of their content (computed while copying them), so that launching
// the same bytes again does not parse and measure them again. Nothing about
// the file (path, size, times, inode) is part of the key: only the bytes
// that boot.
var imageCache = struct {
	sync.Mutex
	m map[[sha256.Size]byte]imageInfo
}{m: map[[sha256.Size]byte]imageInfo{}}

const imageCacheSize = 64

// maxImageSize bounds the EIFs the daemon accepts (they are copied into
// memory): far above any enclave's memory today.
const maxImageSize = 64 << 30

// loadImage copies the EIF open in src into a sealed memfd, validates it and
// measures it. A signed image's signature is checked as nitro-cli does
// before launch (E59), at every launch since certificates expire. The
// caller owns the returned image and must Close it.
func loadImage(ctx context.Context, src *os.File, name string, now time.Time) (*image, error) {
	fi, err := src.Stat()
	if err != nil {
		return nil, newErr("E19", parent.ErrInvalidArgument, "cannot read EIF %s: %v", name, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, newErr("E19", parent.ErrInvalidArgument, "EIF %s is not a regular file", name)
	}
	if fi.Size() > maxImageSize {
		return nil, newErr("E19", parent.ErrInvalidArgument, "EIF %s has %d bytes, more than the %d the daemon accepts", name, fi.Size(), int64(maxImageSize))
	}
	f, sum, err := sealedCopy(ctx, src, fi.Size())
	if err != nil {
		return nil, newErr("E19", parent.ErrInvalidArgument, "cannot read EIF %s: %v", name, err)
	}
	imageCache.Lock()
	info, ok := imageCache.m[sum]
	imageCache.Unlock()
	if ok && info.measurements.PCR8 == "" {
		return &image{file: f, info: info}, nil
	}
	info, err = measureImage(f, name, fi.Size(), now)
	if err != nil {
		f.Close()
		return nil, err
	}
	imageCache.Lock()
	if len(imageCache.m) >= imageCacheSize {
		clear(imageCache.m)
	}
	imageCache.m[sum] = info
	imageCache.Unlock()
	return &image{file: f, info: info}, nil
}

// imageSeals are the seals that make a memfd immutable.
const imageSeals = unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE

// sealedCopy copies exactly size bytes of src into a new memfd, seals it
// against any change and returns it with the SHA-256 of what it holds. A
// file that shrinks while it is copied is an error; bytes beyond size are
// not read.
func sealedCopy(ctx context.Context, src *os.File, size int64) (*os.File, [sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	fd, err := unix.MemfdCreate("cloister-eif", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, sum, fmt.Errorf("memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), "cloister-eif")
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, sum, fmt.Errorf("size the in-memory copy (%d bytes): %w", size, err)
	}
	// Hashing runs beside the copy, one chunk behind it.
	const chunk = 1 << 20
	h := sha256.New()
	bufs := [2][]byte{make([]byte, chunk), make([]byte, chunk)}
	hashed := make(chan struct{}, 1)
	hashed <- struct{}{}
	var off int64
	fail := func(err error) (*os.File, [sha256.Size]byte, error) {
		<-hashed
		f.Close()
		return nil, sum, err
	}
	for i := 0; off < size; i++ {
		if err := ctx.Err(); err != nil {
			return fail(err)
		}
		buf := bufs[i%2]
		n, err := src.ReadAt(buf[:min(int64(chunk), size-off)], off)
		if n > 0 {
			if _, werr := f.WriteAt(buf[:n], off); werr != nil {
				return fail(fmt.Errorf("copy into memory: %w", werr))
			}
			off += int64(n)
			<-hashed // the previous chunk is hashed: its buffer is free
			go func(b []byte) { h.Write(b); hashed <- struct{}{} }(buf[:n])
		}
		if err != nil && !(errors.Is(err, io.EOF) && off == size) {
			if errors.Is(err, io.EOF) {
				return fail(fmt.Errorf("the file shrank to %d bytes while it was read", off))
			}
			return fail(err)
		}
	}
	<-hashed
	if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, imageSeals); err != nil {
		f.Close()
		return nil, sum, fmt.Errorf("seal the in-memory copy: %w", err)
	}
	copy(sum[:], h.Sum(nil))
	return f, sum, nil
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
