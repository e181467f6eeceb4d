package daemon

import (
	"encoding/hex"
	"encoding/json"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/cloister/cloister/enclave/eif"
	"github.com/cloister/cloister/parent"
)

// imageInfo is what the daemon needs to know about an EIF before launching it.
type imageInfo struct {
	size         int64
	noKernel     bool
	measurements parent.Measurements
	pcrs         map[int]string // measured boot PCRs for the emulated NSM
	name         string
	version      string
	metadata     json.RawMessage
}

// imageKey identifies one version of an image file.
type imageKey struct {
	path  string
	size  int64
	mtime time.Time
	ino   uint64
}

// imageCache remembers the measurements of recently launched images so
// that launching the same image again does not read and hash it again. A
// changed file (size, mtime or inode) is measured anew.
var imageCache = struct {
	sync.Mutex
	m map[imageKey]imageInfo
}{m: map[imageKey]imageInfo{}}

const imageCacheSize = 64

// inspectImage reads, validates and measures the EIF at path. A signed
// image's signature is checked as nitro-cli does before launch (E59), at
// every launch since certificates expire.
func inspectImage(path string, now time.Time) (imageInfo, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return imageInfo{}, newErr("E19", ErrInvalidArgument, "cannot read EIF: %v", err)
	}
	key := imageKey{path: path, size: fi.Size(), mtime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		key.ino = st.Ino
	}
	imageCache.Lock()
	info, ok := imageCache.m[key]
	imageCache.Unlock()
	if ok && info.measurements.PCR8 == "" {
		return info, nil
	}
	info, err = measureImage(path, fi.Size(), now)
	if err != nil {
		return imageInfo{}, err
	}
	imageCache.Lock()
	if len(imageCache.m) >= imageCacheSize {
		clear(imageCache.m)
	}
	imageCache.m[key] = info
	imageCache.Unlock()
	return info, nil
}

func measureImage(path string, size int64, now time.Time) (imageInfo, error) {
	img, err := eif.Open(path, eif.ReadOptions{})
	if err != nil {
		return imageInfo{}, newErr("E35", ErrInvalidArgument, "%s is not a valid EIF: %v", path, err)
	}
	m, err := eif.Measure(img)
	if err != nil {
		return imageInfo{}, newErr("E35", ErrInvalidArgument, "measuring %s: %v", path, err)
	}
	if m.PCR8 != nil {
		if _, err := eif.VerifySignature(img, now); err != nil {
			return imageInfo{}, newErr("E59", ErrInvalidArgument, "signature of %s does not verify: %v", path, err)
		}
	}
	info := imageInfo{
		size:     size,
		noKernel: eif.IsNoKernel(img),
		measurements: parent.Measurements{
			HashAlgorithm: parent.HashAlgorithm,
			PCR0:          hex.EncodeToString(m.PCR0[:]),
			PCR1:          hex.EncodeToString(m.PCR1[:]),
			PCR2:          hex.EncodeToString(m.PCR2[:]),
		},
		pcrs: map[int]string{
			0: hex.EncodeToString(m.PCR0[:]),
			1: hex.EncodeToString(m.PCR1[:]),
			2: hex.EncodeToString(m.PCR2[:]),
		},
	}
	if m.PCR8 != nil {
		info.measurements.PCR8 = hex.EncodeToString(m.PCR8[:])
		info.pcrs[8] = info.measurements.PCR8
	}
	if sec := img.Section(eif.SectionMetadata); sec != nil {
		md, err := eif.ParseMetadata(sec.Data)
		if err != nil {
			return imageInfo{}, newErr("E35", ErrInvalidArgument, "metadata of %s: %v", path, err)
		}
		info.name, info.version = md.ImageName, md.ImageVersion
		if b, err := json.Marshal(md); err == nil {
			info.metadata = b
		}
	}
	return info, nil
}
