package shim

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/cloister/cloister/enclave/build"
)

// ImageRequest is what an enclave image is built from: a container's root
// file system and process.
type ImageRequest struct {
	RootFS    string   // directory
	Args      []string // process.args
	Env       []string // process.env
	Cwd       string   // process.cwd
	UID, GID  uint32   // process.user
	InitPath  string   // cloister-init
	CacheDir  string   // where built images are kept, by content
	BuildTemp string   // staging directory of the builder (default: CacheDir)
	Getenv    func(string) string
	Progress  io.Writer
}

// Image is a built (or cached) EIF.
type Image struct {
	Path   string
	Key    string // hex SHA-256 of everything the image is built from
	Cached bool   // found in the cache, not built
	Size   int64
}

// imageKeyVersion changes when the key's inputs or the build change meaning.
const imageKeyVersion = "cloister-shim-image-v1"

// BuildImage returns the EIF for req from the cache, or builds it with the
// reproducible builder (enclave/build) into the cache. The cache key is
// the SHA-256 of the root file system's content (every entry's path,
// type, mode, owner, size, symlink target and file bytes, in lexical
// order), the process (args, env, cwd, user), cloister-init's bytes and
// the kernel blobs: the same container always gives the same image, and
// any change gives another. Timestamps are fixed (SOURCE_DATE_EPOCH 0).
func BuildImage(ctx context.Context, req ImageRequest) (*Image, error) {
	if len(req.Args) == 0 {
		return nil, fmt.Errorf("%w: process.args is empty: an enclave needs a command", ErrSpec)
	}
	if req.Getenv == nil {
		req.Getenv = os.Getenv
	}
	key, err := imageKey(ctx, req)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(req.CacheDir, 0o700); err != nil {
		return nil, fmt.Errorf("shim: image cache: %w", err)
	}
	path := filepath.Join(req.CacheDir, key+".eif")
	if st, err := os.Stat(path); err == nil && st.Mode().IsRegular() {
		return &Image{Path: path, Key: key, Cached: true, Size: st.Size()}, nil
	}
	epoch := time.Unix(0, 0).UTC()
	tmp := req.BuildTemp
	if tmp == "" {
		tmp = req.CacheDir
	}
	res, err := build.BuildFile(ctx, build.FromRootFS(req.RootFS), path, build.Options{
		InitPath:        req.InitPath,
		Cmd:             req.Args,
		Env:             req.Env,
		WorkingDir:      req.Cwd,
		User:            strconv.FormatUint(uint64(req.UID), 10) + ":" + strconv.FormatUint(uint64(req.GID), 10),
		Name:            "container",
		Version:         key[:12],
		SourceDateEpoch: &epoch,
		TempDir:         tmp,
		Getenv:          req.Getenv,
		Progress:        req.Progress,
	})
	if err != nil {
		return nil, fmt.Errorf("shim: build the enclave image: %w", err)
	}
	return &Image{Path: path, Key: key, Size: res.Size}, nil
}

// imageKey hashes everything the image is built from.
func imageKey(ctx context.Context, req ImageRequest) (string, error) {
	h := sha256.New()
	field := func(b []byte) {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	str := func(s string) { field([]byte(s)) }
	list := func(ss []string) {
		str(strconv.Itoa(len(ss)))
		for _, s := range ss {
			str(s)
		}
	}
	str(imageKeyVersion)
	list(req.Args)
	list(req.Env)
	str(req.Cwd)
	str(fmt.Sprintf("%d:%d", req.UID, req.GID))
	if err := hashFile(h, req.InitPath); err != nil {
		return "", fmt.Errorf("shim: cloister-init %s: %w", req.InitPath, err)
	}
	blobs := build.BlobsDir(req.Getenv)
	str(blobs)
	for _, name := range []string{"bzImage", "bzImage.config", "Image", "Image.config", "cmdline"} {
		p := filepath.Join(blobs, name)
		if _, err := os.Stat(p); err != nil {
			str("-")
			continue
		}
		str(name)
		if err := hashFile(h, p); err != nil {
			return "", fmt.Errorf("shim: kernel blob %s: %w", p, err)
		}
	}
	if err := hashTree(ctx, h, req.RootFS, str); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func hashFile(h hash.Hash, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fh := sha256.New()
	if _, err := io.Copy(fh, f); err != nil {
		return err
	}
	h.Write(fh.Sum(nil))
	return nil
}

// hashTree hashes the tree under root in lexical order (WalkDir's).
func hashTree(ctx context.Context, h hash.Hash, root string, str func(string)) error {
	st, err := os.Stat(root)
	if err != nil || !st.IsDir() {
		return fmt.Errorf("%w: root file system %s is not a directory", ErrSpec, root)
	}
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("shim: read root file system: %w", err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return fmt.Errorf("shim: read root file system: %w", err)
		}
		str(rel)
		str(strconv.FormatUint(uint64(info.Mode()), 8))
		if sys, ok := info.Sys().(*syscall.Stat_t); ok {
			str(fmt.Sprintf("%d:%d:%d", sys.Uid, sys.Gid, sys.Rdev))
		}
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return fmt.Errorf("shim: read root file system: %w", err)
			}
			str(t)
		case info.Mode().IsRegular():
			str(strconv.FormatInt(info.Size(), 10))
			if err := hashFile(h, p); err != nil {
				if errors.Is(err, fs.ErrPermission) {
					return fmt.Errorf("shim: read root file system: %w (the shim runs as root)", err)
				}
				return fmt.Errorf("shim: read root file system: %w", err)
			}
		}
		return nil
	})
}
