package sandbox

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"

	"github.com/cloister/cloister/internal/cpio"
)

// maxID is the largest uid/gid a sandbox can represent (its userns maps 65536 ids).
const maxID = idsPer - 1

// mapPath turns an archive entry name into a path relative to the
// sandbox root: "rootfs/x" → "x", anything else → ".cloister/x". skip is
// true for the archive's own root ("." or "rootfs"). Names that would
// leave the root, and customer files under "/.cloister", are refused.
func mapPath(name string) (rel string, skip bool, err error) {
	n := name
	for strings.HasPrefix(n, "./") || strings.HasPrefix(n, "/") {
		n = strings.TrimPrefix(strings.TrimPrefix(n, "./"), "/")
	}
	n = path.Clean(n)
	switch {
	case n == "." || n == "" || n == "rootfs":
		return "", true, nil
	case n == ".." || strings.HasPrefix(n, "../"):
		return "", false, fmt.Errorf("entry %q leaves the archive", name)
	case strings.HasPrefix(n, "rootfs/"):
		rel = strings.TrimPrefix(n, "rootfs/")
		if rel == ".cloister" || strings.HasPrefix(rel, ".cloister/") {
			return "", false, fmt.Errorf("entry %q: /.cloister is reserved for init", name)
		}
		return rel, false, nil
	}
	return ".cloister/" + n, false, nil
}

type linkKey struct{ major, minor, ino uint32 }

// unpack extracts a newc archive into root (see [Spec.Ramdisks] for the
// layout). It never writes outside root (os.Root), never writes through a
// symbolic link at an entry's own name (an existing entry is removed
// first), applies modes (setuid/setgid/sticky included) and owners, links
// hard links, and skips device nodes, FIFOs and sockets. uid and gid must
// be below 65536.
func unpack(root *os.Root, r io.Reader) error {
	cr := cpio.NewReader(bufio.NewReaderSize(r, 256<<10), cpio.Limits{})
	links := map[linkKey]string{}
	buf := make([]byte, 1<<20) // file contents are written through it (copyData)
	for {
		h, err := cr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		rel, skip, err := mapPath(h.Name)
		if err != nil {
			return err
		}
		if skip {
			continue
		}
		if h.UID > maxID || h.GID > maxID {
			return fmt.Errorf("%q: owner %d:%d outside the sandbox's ids 0-%d", h.Name, h.UID, h.GID, maxID)
		}
		mode := cpio.FileModeOf(h.Mode)
		switch h.Type() {
		case cpio.TypeDir:
			err = unpackDir(root, rel, h, mode)
		case cpio.TypeReg:
			err = unpackFile(root, rel, h, mode, cr, links, buf)
		case cpio.TypeSymlink:
			err = unpackSymlink(root, rel, h, cr)
		default:
			// Device nodes cannot be created in a user namespace (and
			// would not be allowed by the device cgroup); FIFOs and
			// sockets are not needed. /dev is provided by the launcher.
			continue
		}
		if err != nil {
			return fmt.Errorf("%q: %w", h.Name, err)
		}
	}
}

// clearPath removes whatever is at rel unless it is a directory and keepDir.
// It reports whether rel is now an existing directory.
func clearPath(root *os.Root, rel string, keepDir bool) (isDir bool, err error) {
	fi, err := root.Lstat(rel)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if fi.IsDir() && keepDir {
		return true, nil
	}
	return false, root.Remove(rel)
}

func parentDir(root *os.Root, rel string) error {
	if d := path.Dir(rel); d != "." {
		return root.MkdirAll(d, 0o755)
	}
	return nil
}

func unpackDir(root *os.Root, rel string, h *cpio.Header, mode fs.FileMode) error {
	if err := parentDir(root, rel); err != nil {
		return err
	}
	isDir, err := clearPath(root, rel, true)
	if err != nil {
		return err
	}
	if !isDir {
		if err := root.Mkdir(rel, 0o700); err != nil {
			return err
		}
	}
	// chown before chmod: chown clears setuid/setgid bits.
	if err := root.Lchown(rel, int(h.UID), int(h.GID)); err != nil {
		return err
	}
	return root.Chmod(rel, mode.Perm()|mode&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky))
}

func unpackFile(root *os.Root, rel string, h *cpio.Header, mode fs.FileMode, data io.Reader, links map[linkKey]string, buf []byte) error {
	if err := parentDir(root, rel); err != nil {
		return err
	}
	if _, err := clearPath(root, rel, false); err != nil {
		return err
	}
	key := linkKey{h.DevMajor, h.DevMinor, h.Ino}
	if h.Nlink > 1 {
		if first, ok := links[key]; ok {
			if err := root.Link(first, rel); err != nil {
				return err
			}
			if h.Size == 0 {
				return nil
			}
			// newc puts the data on the last link.
			f, err := root.OpenFile(rel, os.O_WRONLY|os.O_TRUNC|noFollow, 0)
			if err != nil {
				return err
			}
			_, err = copyData(f, data, buf)
			return errors.Join(err, f.Close())
		}
		links[key] = rel
	}
	f, err := root.OpenFile(rel, os.O_WRONLY|os.O_CREATE|os.O_EXCL|noFollow, 0o600)
	if err != nil {
		return err
	}
	_, err = copyData(f, data, buf)
	if err == nil {
		err = f.Chown(int(h.UID), int(h.GID))
	}
	if err == nil {
		err = f.Chmod(mode.Perm() | mode&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky))
	}
	return errors.Join(err, f.Close())
}

func unpackSymlink(root *os.Root, rel string, h *cpio.Header, data io.Reader) error {
	target, err := io.ReadAll(io.LimitReader(data, h.Size))
	if err != nil {
		return err
	}
	if err := parentDir(root, rel); err != nil {
		return err
	}
	if _, err := clearPath(root, rel, false); err != nil {
		return err
	}
	if err := root.Symlink(string(target), rel); err != nil {
		return err
	}
	return root.Lchown(rel, int(h.UID), int(h.GID))
}

// copyData copies data to f through buf: in writes of len(buf), where
// io.Copy into an *os.File (its ReadFrom) would write 32 KiB at a time.
func copyData(f *os.File, data io.Reader, buf []byte) (int64, error) {
	return io.CopyBuffer(struct{ io.Writer }{f}, data, buf)
}
