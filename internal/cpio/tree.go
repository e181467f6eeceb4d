package cpio

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"time"
)

// TreeOptions configures [AddTree] and [CollectTree]. The zero value is usable.
type TreeOptions struct {
	// Prefix is prepended to every path inside the archive (for example
	// "rootfs"); the prefix directory itself is added as an entry with the
	// mode of the tree's root directory.
	Prefix string
	// Mtime, FirstIno: see [FilesOptions].
	Mtime    time.Time
	FirstIno uint32
	// KeepOwner keeps the uid and gid found on disk; by default every
	// entry is owned by 0:0.
	KeepOwner bool
}

// CollectTree walks the directory dir (without following symbolic links)
// and returns one [File] per entry below it, paths prefixed with
// opts.Prefix. Regular files with a link count above one that share a
// device and inode are returned as hard links of the first one in path
// order. Content is read lazily from disk when the archive is written.
func CollectTree(dir string, opts TreeOptions) ([]File, error) {
	var files []File
	type key struct{ dev, ino uint64 }
	seen := make(map[key]string)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		name := path.Join(opts.Prefix, rel)
		if rel == "." {
			if opts.Prefix == "" {
				return nil
			}
			name = path.Clean(opts.Prefix)
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		f := File{Path: name, Mode: unixMode(fi.Mode())}
		st := statOf(fi)
		if opts.KeepOwner {
			f.UID, f.GID = st.uid, st.gid
		}
		switch f.Mode & TypeMask {
		case TypeReg:
			if st.ok && st.nlink > 1 {
				k := key{st.dev, st.ino}
				if first, ok := seen[k]; ok {
					f.Link = first
					break
				}
				seen[k] = name
			}
			f.Size = fi.Size()
			src := p
			f.Open = func() (io.ReadCloser, error) { return os.Open(src) }
		case TypeSymlink:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			f.Target = t
		case TypeChar, TypeBlock:
			f.RDevMajor, f.RDevMinor = st.rdevMajor, st.rdevMinor
		}
		files = append(files, f)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cpio: walk %s: %w", dir, err)
	}
	return files, nil
}

// AddTree writes the directory tree dir to w with [CollectTree] and
// [WriteFiles] (sorted, sequential inodes, fixed mtime, owner 0:0 unless
// KeepOwner). It does not close w.
func AddTree(w *Writer, dir string, opts TreeOptions) error {
	files, err := CollectTree(dir, opts)
	if err != nil {
		return err
	}
	return WriteFiles(w, files, FilesOptions{Mtime: opts.Mtime, FirstIno: opts.FirstIno})
}

// unixMode converts an fs.FileMode into stat(2) mode bits.
func unixMode(m fs.FileMode) uint32 {
	u := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		u |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		u |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		u |= 0o1000
	}
	switch {
	case m.IsDir():
		u |= TypeDir
	case m&fs.ModeSymlink != 0:
		u |= TypeSymlink
	case m&fs.ModeNamedPipe != 0:
		u |= TypeFifo
	case m&fs.ModeSocket != 0:
		u |= TypeSocket
	case m&fs.ModeDevice != 0 && m&fs.ModeCharDevice != 0:
		u |= TypeChar
	case m&fs.ModeDevice != 0:
		u |= TypeBlock
	default:
		u |= TypeReg
	}
	return u
}

// FileModeOf converts stat(2) mode bits (type and permissions) into an fs.FileMode.
func FileModeOf(mode uint32) fs.FileMode {
	m := fs.FileMode(mode & 0o777)
	if mode&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if mode&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if mode&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	switch mode & TypeMask {
	case TypeDir:
		m |= fs.ModeDir
	case TypeSymlink:
		m |= fs.ModeSymlink
	case TypeFifo:
		m |= fs.ModeNamedPipe
	case TypeSocket:
		m |= fs.ModeSocket
	case TypeChar:
		m |= fs.ModeDevice | fs.ModeCharDevice
	case TypeBlock:
		m |= fs.ModeDevice
	}
	return m
}
