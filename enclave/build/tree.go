package build

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cloister/cloister/internal/cpio"
)

// maxSymlinkHops bounds symbolic-link resolution inside the image tree (as
// Linux's MAXSYMLINKS).
const maxSymlinkHops = 40

// inode is the content of a regular file, shared by its hard links.
type inode struct {
	staged string // path of the staged content file
	size   int64
	// Set by writeTree's first pass (walk number gen): how many names the
	// inode has, the walk position of the last one (which carries the
	// data) and, once the first name is written, its inode number.
	gen   int
	names uint32
	last  int
	num   uint32
}

// node is one file of the image tree.
type node struct {
	mode     uint32 // cpio type bits | permission bits
	uid, gid uint32
	target   string // symbolic link target
	rdevMaj  uint32
	rdevMin  uint32
	ino      *inode
	children map[string]*node // directories only
	layer    int              // index of the layer that created the node
	opaque   int              // last layer whose opaque whiteout emptied this directory
	plen     int              // length of the node's path below the root ("a/b" = 3)
}

func (n *node) isDir() bool { return n.mode&cpio.TypeMask == cpio.TypeDir }

// tree is the image file system being assembled from layers.
type tree struct {
	root    *node
	staging string // directory holding staged contents
	nstaged int
	budget  *budget
	writes  int // writeTree calls, for inode.gen
}

func newTree(staging string, b *budget) *tree {
	return &tree{root: &node{mode: cpio.TypeDir | 0o755, children: map[string]*node{}}, staging: staging, budget: b}
}

// maxRawName is the longest entry name accepted before cleaning: a path of
// MaxPathLen bytes with a leading "./" and a trailing "/".
const maxRawName = MaxPathLen + 3

// cleanEntryName turns a layer entry name into path components below the
// root. It checks, before splitting the name, that it is at most
// maxRawName bytes long; then that it has no NUL, that no component is
// longer than MaxNameLen and that it does not climb above the root with "..".
func cleanEntryName(n string) ([]string, error) {
	if len(n) > maxRawName {
		return nil, fmt.Errorf("%w: the path is %d bytes, longer than %d (MaxPathLen, the most a ramdisk entry holds)",
			ErrLayer, len(n), MaxPathLen)
	}
	if strings.IndexByte(n, 0) >= 0 {
		return nil, fmt.Errorf("%w: name %q contains NUL", ErrLayer, n)
	}
	c := path.Clean("/" + n)
	// path.Clean on a rooted path never leaves "..", so check the raw name:
	// "a/../../etc" must be refused, not silently confined.
	depth := 0
	for _, e := range strings.Split(n, "/") {
		switch e {
		case "", ".":
		case "..":
			depth--
			if depth < 0 {
				return nil, fmt.Errorf("%w: %q escapes the image root", ErrLayer, n)
			}
		default:
			depth++
		}
	}
	if c == "/" {
		return nil, nil
	}
	comps := strings.Split(strings.TrimPrefix(c, "/"), "/")
	for _, e := range comps {
		if len(e) > MaxNameLen {
			return nil, fmt.Errorf("%w: file name %s is %d bytes, longer than %d (NAME_MAX)", ErrLayer, short(e), len(e), MaxNameLen)
		}
	}
	return comps, nil
}

// childPathLen returns the path length of a child called name of dir,
// checking it against MaxPathLen and MaxNameLen. Names reached through
// symbolic links are checked here, when the node is created.
func childPathLen(dir *node, name string) (int, error) {
	if len(name) > MaxNameLen {
		return 0, fmt.Errorf("%w: file name %s is %d bytes, longer than %d (NAME_MAX)", ErrLayer, short(name), len(name), MaxNameLen)
	}
	n := dir.plen + len(name)
	if dir.plen > 0 {
		n++ // the "/" between
	}
	if n > MaxPathLen {
		return 0, fmt.Errorf("%w: %s would be %d bytes below the image root (through its parent directories and symbolic links), longer than %d (MaxPathLen, the most a ramdisk entry holds)",
			ErrLayer, short(name), n, MaxPathLen)
	}
	return n, nil
}

// short quotes s for a message, cut to its first 40 bytes.
func short(s string) string {
	if len(s) <= 40 {
		return strconv.Quote(s)
	}
	return strconv.Quote(s[:40]) + "…"
}

// resolveDir returns the directory node at comps (relative to the root),
// following symbolic links inside the tree (absolute targets restart at
// the image root; ".." stops at the root). With create, missing
// directories are created (mode 0755, owner 0:0) as container runtimes do,
// each counted against the budget and checked against MaxPathLen and
// MaxNameLen; without it a missing directory is an error. At most
// maxResolveSteps components are walked, symbolic links included.
func (t *tree) resolveDir(comps []string, layer int, create bool) (*node, error) {
	stack := []*node{t.root}
	queue := append([]string(nil), comps...)
	hops, steps := 0, 0
	for len(queue) > 0 {
		if steps++; steps > maxResolveSteps {
			return nil, fmt.Errorf("%w: resolving the parent of %s walks more than %d path components", ErrLayer, short(strings.Join(comps, "/")), maxResolveSteps)
		}
		c := queue[0]
		queue = queue[1:]
		cur := stack[len(stack)-1]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(stack) > 1 {
				stack = stack[:len(stack)-1]
			}
			continue
		}
		child := cur.children[c]
		if child == nil {
			if !create {
				return nil, fmt.Errorf("%w: %q: a parent directory does not exist", ErrLayer, strings.Join(comps, "/"))
			}
			plen, err := childPathLen(cur, c)
			if err != nil {
				return nil, err
			}
			if err := t.budget.entry(); err != nil {
				return nil, err
			}
			if err := t.budget.ramdisk(plen, 0); err != nil {
				return nil, err
			}
			child = &node{mode: cpio.TypeDir | 0o755, children: map[string]*node{}, layer: layer, plen: plen}
			cur.children[c] = child
		}
		switch child.mode & cpio.TypeMask {
		case cpio.TypeDir:
			stack = append(stack, child)
		case cpio.TypeSymlink:
			hops++
			if hops > maxSymlinkHops {
				return nil, fmt.Errorf("%w: too many levels of symbolic links in %q", ErrLayer, strings.Join(comps, "/"))
			}
			if strings.HasPrefix(child.target, "/") {
				stack = stack[:1]
			}
			queue = append(strings.Split(child.target, "/"), queue...)
		default:
			return nil, fmt.Errorf("%w: %q: a parent component is not a directory", ErrLayer, strings.Join(comps, "/"))
		}
	}
	return stack[len(stack)-1], nil
}

// lookup returns the node at comps without following a final symbolic
// link or creating anything.
func (t *tree) lookup(comps []string) (*node, error) {
	if len(comps) == 0 {
		return t.root, nil
	}
	dir, err := t.resolveDir(comps[:len(comps)-1], 0, false)
	if err != nil {
		return nil, err
	}
	n := dir.children[comps[len(comps)-1]]
	if n == nil {
		return nil, fmt.Errorf("%w: hard link target %q does not exist", ErrLayer, strings.Join(comps, "/"))
	}
	return n, nil
}

const (
	whiteoutPrefix = ".wh."
	whiteoutOpaque = ".wh..wh..opq"
)

// applyLayer applies one uncompressed layer tar stream. Its errors wrap
// ErrLayer, or ErrTooLarge (a *LimitError) when the layer passes a cap.
func (t *tree) applyLayer(ctx context.Context, r io.Reader, layer int) error {
	t.budget.layer = layer
	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return layerError(layer, "", err, true)
		}
		if err := t.budget.entry(); err != nil {
			return err
		}
		if err := t.applyEntry(hdr, tr, layer); err != nil {
			return layerError(layer, hdr.Name, err, false)
		}
	}
}

// layerError places err at layer (and entry name) unless it already
// carries its own place (*LimitError). With bad, an error without a class
// of its own (one reading the layer) is wrapped with ErrLayer.
func layerError(layer int, name string, err error, bad bool) error {
	var le *LimitError
	if errors.As(err, &le) {
		return err
	}
	where := fmt.Sprintf("layer %d", layer)
	if name != "" {
		where += ": " + short(name)
	}
	if !bad || errors.Is(err, ErrLayer) {
		return fmt.Errorf("%s: %w", where, err)
	}
	return fmt.Errorf("%w: %s: %w", ErrLayer, where, err)
}

func (t *tree) applyEntry(hdr *tar.Header, r io.Reader, layer int) error {
	switch hdr.Typeflag {
	case tar.TypeXGlobalHeader:
		return nil
	}
	comps, err := cleanEntryName(hdr.Name)
	if err != nil {
		return err
	}
	if len(comps) == 0 {
		return nil // the root directory itself: keep 0755 root:root
	}
	base := comps[len(comps)-1]
	dir, err := t.resolveDir(comps[:len(comps)-1], layer, true)
	if err != nil {
		return err
	}
	if base == whiteoutOpaque {
		// Entries of earlier layers go; once done, a second marker in the
		// same layer has nothing left to remove.
		if dir.opaque == layer {
			return nil
		}
		for name, c := range dir.children {
			if c.layer < layer {
				delete(dir.children, name)
			}
		}
		dir.opaque = layer
		return nil
	}
	if strings.HasPrefix(base, whiteoutPrefix) {
		delete(dir.children, strings.TrimPrefix(base, whiteoutPrefix))
		return nil
	}
	if hdr.Uid < 0 || hdr.Gid < 0 || int64(hdr.Uid) > 1<<32-1 || int64(hdr.Gid) > 1<<32-1 {
		return fmt.Errorf("%w: uid/gid out of range", ErrLayer)
	}
	plen, err := childPathLen(dir, base)
	if err != nil {
		return err
	}
	n := &node{mode: uint32(hdr.Mode) & 0o7777, uid: uint32(hdr.Uid), gid: uint32(hdr.Gid), layer: layer, plen: plen}
	var data int64 // ramdisk data bytes of the new entry
	switch hdr.Typeflag {
	case tar.TypeDir:
		if old := dir.children[base]; old != nil && old.isDir() {
			old.mode, old.uid, old.gid = cpio.TypeDir|n.mode, n.uid, n.gid
			return nil
		}
		n.mode |= cpio.TypeDir
		n.children = map[string]*node{}
	case tar.TypeReg: // archive/tar already turns the old TypeRegA into TypeReg
		if hdr.Size < 0 || hdr.Size > cpio.MaxFileSize {
			return fmt.Errorf("%w: file of %d bytes; a ramdisk entry holds at most %d", ErrLayer, hdr.Size, int64(cpio.MaxFileSize))
		}
		// Counted before staging: for a sparse file hdr.Size is the
		// expanded size, which staging writes out in full.
		if err := t.budget.ramdisk(plen, hdr.Size); err != nil {
			return err
		}
		n.mode |= cpio.TypeReg
		ino, err := t.stage(r, hdr.Size)
		if err != nil {
			return err
		}
		n.ino = ino
	case tar.TypeLink:
		lc, err := cleanEntryName(hdr.Linkname)
		if err != nil {
			return err
		}
		target, err := t.lookup(lc)
		if err != nil {
			return err
		}
		if target.mode&cpio.TypeMask != cpio.TypeReg {
			return fmt.Errorf("%w: hard link to %q, which is not a regular file", ErrLayer, hdr.Linkname)
		}
		if target == dir.children[base] {
			return nil // link to itself
		}
		n.mode, n.uid, n.gid, n.ino = target.mode, target.uid, target.gid, target.ino
	case tar.TypeSymlink:
		if hdr.Linkname == "" || strings.IndexByte(hdr.Linkname, 0) >= 0 || len(hdr.Linkname) > 4095 {
			return fmt.Errorf("%w: bad symbolic link target %s", ErrLayer, short(hdr.Linkname))
		}
		n.mode |= cpio.TypeSymlink
		n.target = hdr.Linkname
		data = int64(len(hdr.Linkname))
	case tar.TypeChar, tar.TypeBlock:
		if hdr.Typeflag == tar.TypeChar {
			n.mode |= cpio.TypeChar
		} else {
			n.mode |= cpio.TypeBlock
		}
		if hdr.Devmajor < 0 || hdr.Devminor < 0 || hdr.Devmajor > 1<<32-1 || hdr.Devminor > 1<<32-1 {
			return fmt.Errorf("%w: device number out of range", ErrLayer)
		}
		n.rdevMaj, n.rdevMin = uint32(hdr.Devmajor), uint32(hdr.Devminor)
	case tar.TypeFifo:
		n.mode |= cpio.TypeFifo
	default:
		return fmt.Errorf("%w: unsupported tar entry type %q", ErrLayer, hdr.Typeflag)
	}
	if hdr.Typeflag != tar.TypeReg {
		if err := t.budget.ramdisk(plen, data); err != nil {
			return err
		}
	}
	dir.children[base] = n
	return nil
}

// stage copies a regular file's content (size bytes, already counted
// against the budget) to the staging directory.
func (t *tree) stage(r io.Reader, size int64) (*inode, error) {
	if size == 0 {
		return &inode{}, nil
	}
	t.nstaged++
	p := filepath.Join(t.staging, strconv.Itoa(t.nstaged))
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	n, err := io.Copy(f, layerReader{io.LimitReader(r, size)})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	if n != size {
		return nil, fmt.Errorf("%w: content truncated (%d of %d bytes)", ErrLayer, n, size)
	}
	return &inode{staged: p, size: size}, nil
}

// layerReader classes the errors of reading a layer (a truncated or
// corrupt stream) as ErrLayer, apart from those that have a class already.
type layerReader struct{ r io.Reader }

func (l layerReader) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	var le *LimitError
	if err != nil && err != io.EOF && !errors.As(err, &le) && !errors.Is(err, ErrLayer) {
		err = fmt.Errorf("%w: reading the layer: %w", ErrLayer, err)
	}
	return n, err
}
