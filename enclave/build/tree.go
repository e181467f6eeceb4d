package build

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
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
}

func (n *node) isDir() bool { return n.mode&cpio.TypeMask == cpio.TypeDir }

// tree is the image file system being assembled from layers.
type tree struct {
	root    *node
	staging string // directory holding staged contents
	nstaged int
}

func newTree(staging string) *tree {
	return &tree{root: &node{mode: cpio.TypeDir | 0o755, children: map[string]*node{}}, staging: staging}
}

// cleanEntryName turns a layer entry name into path components below the
// root. It rejects names that climb above the root with "..".
func cleanEntryName(n string) ([]string, error) {
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
	return strings.Split(strings.TrimPrefix(c, "/"), "/"), nil
}

// resolveDir returns the directory node at comps (relative to the root),
// following symbolic links inside the tree (absolute targets restart at
// the image root; ".." stops at the root) and creating missing directories
// (mode 0755, owner 0:0) as container runtimes do.
func (t *tree) resolveDir(comps []string, layer int) (*node, error) {
	stack := []*node{t.root}
	queue := append([]string(nil), comps...)
	hops := 0
	for len(queue) > 0 {
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
			child = &node{mode: cpio.TypeDir | 0o755, children: map[string]*node{}, layer: layer}
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

// lookup returns the node at comps without following a final symbolic link.
func (t *tree) lookup(comps []string) (*node, error) {
	if len(comps) == 0 {
		return t.root, nil
	}
	dir, err := t.resolveDir(comps[:len(comps)-1], 0)
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

// applyLayer applies one uncompressed layer tar stream.
func (t *tree) applyLayer(ctx context.Context, r io.Reader, layer int) error {
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
			return fmt.Errorf("%w: layer %d: %w", ErrLayer, layer, err)
		}
		if err := t.applyEntry(hdr, tr, layer); err != nil {
			return fmt.Errorf("layer %d: %s: %w", layer, hdr.Name, err)
		}
	}
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
	dir, err := t.resolveDir(comps[:len(comps)-1], layer)
	if err != nil {
		return err
	}
	if base == whiteoutOpaque {
		for name, c := range dir.children {
			if c.layer < layer {
				delete(dir.children, name)
			}
		}
		return nil
	}
	if strings.HasPrefix(base, whiteoutPrefix) {
		delete(dir.children, strings.TrimPrefix(base, whiteoutPrefix))
		return nil
	}
	if hdr.Uid < 0 || hdr.Gid < 0 || int64(hdr.Uid) > 1<<32-1 || int64(hdr.Gid) > 1<<32-1 {
		return fmt.Errorf("%w: uid/gid out of range", ErrLayer)
	}
	n := &node{mode: uint32(hdr.Mode) & 0o7777, uid: uint32(hdr.Uid), gid: uint32(hdr.Gid), layer: layer}
	switch hdr.Typeflag {
	case tar.TypeDir:
		if old := dir.children[base]; old != nil && old.isDir() {
			old.mode, old.uid, old.gid = cpio.TypeDir|n.mode, n.uid, n.gid
			return nil
		}
		n.mode |= cpio.TypeDir
		n.children = map[string]*node{}
	case tar.TypeReg: // archive/tar already turns the old TypeRegA into TypeReg
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
			return fmt.Errorf("%w: bad symbolic link target %q", ErrLayer, hdr.Linkname)
		}
		n.mode |= cpio.TypeSymlink
		n.target = hdr.Linkname
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
	dir.children[base] = n
	return nil
}

// stage copies a regular file's content to the staging directory.
func (t *tree) stage(r io.Reader, size int64) (*inode, error) {
	if size < 0 {
		return nil, fmt.Errorf("%w: negative size", ErrLayer)
	}
	if size == 0 {
		return &inode{}, nil
	}
	t.nstaged++
	p := filepath.Join(t.staging, strconv.Itoa(t.nstaged))
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	n, err := io.Copy(f, io.LimitReader(r, size))
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

// files returns the tree as cpio files below prefix. Hard links of one
// inode are expressed as links to the first one visited; cpio.WriteFiles
// then orders the entries and puts the data on the last link.
func (t *tree) files(prefix string) []cpio.File {
	var out []cpio.File
	holders := map[*inode]string{}
	var walk func(n *node, p string)
	walk = func(n *node, p string) {
		f := cpio.File{Path: p, Mode: n.mode, UID: n.uid, GID: n.gid, Target: n.target, RDevMajor: n.rdevMaj, RDevMinor: n.rdevMin}
		if n.mode&cpio.TypeMask == cpio.TypeReg && n.ino != nil {
			if h, ok := holders[n.ino]; ok && n.ino.size > 0 {
				f.Link = h
			} else {
				holders[n.ino] = p
				f.Size = n.ino.size
				if n.ino.size > 0 {
					staged := n.ino.staged
					f.Open = func() (io.ReadCloser, error) { return os.Open(staged) }
				}
			}
		}
		out = append(out, f)
		if n.isDir() {
			names := make([]string, 0, len(n.children))
			for name := range n.children {
				names = append(names, name)
			}
			sort.Strings(names) // deterministic choice of hard-link holders
			for _, name := range names {
				walk(n.children[name], p+"/"+name)
			}
		}
	}
	walk(t.root, prefix)
	return out
}
