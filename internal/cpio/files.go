package cpio

import (
	"fmt"
	"io"
	"math"
	"path"
	"sort"
	"strings"
	"time"
)

// File describes one archive entry for [WriteFiles].
type File struct {
	// Path is the slash-separated path inside the archive: relative, clean,
	// without "." or ".." elements (for example "rootfs/etc/passwd").
	Path string
	// Mode is the file type (Type*) | permission bits, including setuid,
	// setgid and sticky bits (0o7777).
	Mode uint32
	UID  uint32
	GID  uint32
	// Target is the target of a symbolic link (TypeSymlink only).
	Target string
	// Link, when set on a regular file, names another regular File in the
	// same set whose content this one shares (a hard link). Link targets
	// must not themselves have Link set.
	Link string
	// RDevMajor and RDevMinor are the device number of a character or block device.
	RDevMajor, RDevMinor uint32
	// Size is the content length of a regular file.
	Size int64
	// Open returns the content of a regular file; it must yield exactly
	// Size bytes. It may be nil when Size is 0.
	Open func() (io.ReadCloser, error)
}

// FilesOptions configures [WriteFiles]. The zero value is usable.
type FilesOptions struct {
	// Mtime is the modification time written for every entry (zero value or
	// any time before 1970 = 0; times after 2106 are an error).
	Mtime time.Time
	// FirstIno is the inode number of the first entry; 0 means 1. Entries
	// get sequential numbers in sorted order, hard links share one.
	FirstIno uint32
}

// CheckPath reports whether p is acceptable as a File.Path: non-empty,
// relative, clean (path.Clean(p) == p), without "." or ".." elements and
// without NUL bytes.
func CheckPath(p string) error {
	if p == "" || p == "." || strings.HasPrefix(p, "/") || path.Clean(p) != p || p == ".." ||
		strings.HasPrefix(p, "../") || strings.ContainsRune(p, 0) || p == TrailerName {
		return fmt.Errorf("%w: bad path %q", ErrInvalidHeader, p)
	}
	return nil
}

// MtimeSeconds converts t to the 32-bit mtime field: 0 for the zero time or
// any time before the Unix epoch, an error after 2106-02-07.
func MtimeSeconds(t time.Time) (uint32, error) {
	if t.IsZero() || t.Unix() < 0 {
		return 0, nil
	}
	if t.Unix() > math.MaxUint32 {
		return 0, fmt.Errorf("%w: mtime %v does not fit in 32 bits", ErrInvalidHeader, t)
	}
	return uint32(t.Unix()), nil
}

// WriteFiles writes files to w (without closing it) in a reproducible way:
//   - entries are sorted by Path (byte order), so every directory precedes its contents;
//   - duplicate paths are an error;
//   - inode numbers are assigned sequentially from opts.FirstIno in that order;
//     the members of a hard-link group share the inode of their first member;
//   - Nlink is the group size for hard-linked files, 2 + number of direct
//     subdirectories for directories, 1 otherwise;
//   - the data of a hard-link group is written with its last member in
//     sorted order (earlier members have size 0), as the kernel expects;
//   - every entry carries opts.Mtime.
//
// It checks every path with [CheckPath], that Link names a regular file of
// the set, that a file's content has exactly Size bytes, and that the
// parent directory of every entry is either in the set or absent from it
// entirely (a parent given as a non-directory is an error).
func WriteFiles(w *Writer, files []File, opts FilesOptions) error {
	mtime, err := MtimeSeconds(opts.Mtime)
	if err != nil {
		return err
	}
	sorted := make([]*File, len(files))
	byPath := make(map[string]*File, len(files))
	for i := range files {
		f := &files[i]
		if err := CheckPath(f.Path); err != nil {
			return err
		}
		if _, dup := byPath[f.Path]; dup {
			return fmt.Errorf("%w: duplicate path %q", ErrInvalidHeader, f.Path)
		}
		byPath[f.Path] = f
		sorted[i] = f
	}
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Path < sorted[j].Path })

	subdirs := make(map[string]uint32)
	groups := make(map[string][]*File) // hard-link group keyed by the content holder's path
	for _, f := range sorted {
		if dir := path.Dir(f.Path); dir != "." {
			if p, ok := byPath[dir]; ok && p.Mode&TypeMask != TypeDir {
				return fmt.Errorf("%w: %q is inside %q, which is not a directory", ErrInvalidHeader, f.Path, dir)
			}
			if f.Mode&TypeMask == TypeDir {
				subdirs[dir]++
			}
		}
		if f.Link != "" {
			if f.Mode&TypeMask != TypeReg {
				return fmt.Errorf("%w: %q: hard link on a non-regular file", ErrInvalidHeader, f.Path)
			}
			t, ok := byPath[f.Link]
			if !ok || t.Mode&TypeMask != TypeReg || t.Link != "" {
				return fmt.Errorf("%w: %q: hard link target %q is not a regular file of the archive", ErrInvalidHeader, f.Path, f.Link)
			}
			groups[f.Link] = append(groups[f.Link], f)
		}
	}

	ino := opts.FirstIno
	if ino == 0 {
		ino = 1
	}
	inodes := make(map[string]uint32) // group holder path -> inode
	for _, f := range sorted {
		h := Header{
			Name:      f.Path,
			Mode:      f.Mode,
			UID:       f.UID,
			GID:       f.GID,
			Nlink:     1,
			Mtime:     mtime,
			RDevMajor: f.RDevMajor,
			RDevMinor: f.RDevMinor,
		}
		var content *File // file whose data goes with this entry, if any
		switch f.Mode & TypeMask {
		case TypeDir:
			h.Nlink = 2 + subdirs[f.Path]
		case TypeSymlink:
			h.Size = int64(len(f.Target))
		case TypeReg:
			holder := f.Path
			if f.Link != "" {
				holder = f.Link
			}
			members := groups[holder]
			if len(members) == 0 {
				content = f
				h.Size = f.Size
				break
			}
			// Group = holder + members; all sorted positions known: the
			// last one in sorted order carries the data.
			h.Nlink = uint32(len(members) + 1)
			holderFile := byPath[holder]
			last := holderFile.Path
			for _, m := range members {
				if m.Path > last {
					last = m.Path
				}
			}
			if n, ok := inodes[holder]; ok {
				h.Ino = n
			}
			if f.Path == last {
				content = holderFile
				h.Size = holderFile.Size
			}
		case TypeChar, TypeBlock, TypeFifo, TypeSocket:
		default:
			return fmt.Errorf("%w: %q: unknown file type %#o", ErrInvalidHeader, f.Path, f.Mode&TypeMask)
		}
		if h.Ino == 0 {
			h.Ino = ino
			ino++
			if f.Mode&TypeMask == TypeReg {
				holder := f.Path
				if f.Link != "" {
					holder = f.Link
				}
				if len(groups[holder]) > 0 {
					inodes[holder] = h.Ino
				}
			}
		}
		if err := w.WriteHeader(&h); err != nil {
			return err
		}
		if f.Mode&TypeMask == TypeSymlink {
			if _, err := io.WriteString(w, f.Target); err != nil {
				return err
			}
			continue
		}
		if content != nil && content.Size > 0 {
			if err := copyContent(w, content); err != nil {
				return err
			}
		}
	}
	return nil
}

func copyContent(w *Writer, f *File) error {
	if f.Open == nil {
		return fmt.Errorf("%w: %q: no content for %d bytes", ErrInvalidHeader, f.Path, f.Size)
	}
	rc, err := f.Open()
	if err != nil {
		return fmt.Errorf("cpio: open %q: %w", f.Path, err)
	}
	defer rc.Close()
	n, err := w.ReadFrom(rc)
	if err != nil {
		return fmt.Errorf("cpio: copy %q: %w", f.Path, err)
	}
	if n != f.Size {
		return fmt.Errorf("%w: %q: content has %d bytes, expected %d", ErrShortWrite, f.Path, n, f.Size)
	}
	// Content longer than Size is an error too.
	var one [1]byte
	if m, _ := rc.Read(one[:]); m > 0 {
		return fmt.Errorf("%w: %q: content longer than %d bytes", ErrWriteTooLong, f.Path, f.Size)
	}
	return nil
}
