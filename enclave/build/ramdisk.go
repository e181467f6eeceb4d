package build

import (
	"cmp"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/cloister/cloister/internal/cpio"
)

// The tree of an image built from layers is written to the customer
// ramdisk straight from its nodes, in the order and with the inode
// numbers, link counts and hard-link data placement of cpio.WriteFiles
// (TestTreeWriterMatchesWriteFiles and FuzzApplyLayer hold it to that),
// but without a cpio.File, and so without a full path string, per entry:
// memory stays proportional to the number of entries and the lengths of
// their names, whatever the depth of the tree.

// sortKey is one element of a directory's sorted walk: a child itself
// (its path is dir/name), or, for a child directory, the block of its
// descendants (paths dir/name/…), which sorts as if named name + "/".
type sortKey struct {
	name string
	n    *node
	sub  bool
}

// keyByte returns byte i of k's sort name, or -1 past its end.
func (k sortKey) keyByte(i int) int {
	switch {
	case i < len(k.name):
		return int(k.name[i])
	case i == len(k.name) && k.sub:
		return '/'
	}
	return -1
}

// compareKeys orders keys as their full paths sort in byte order. Names
// hold no "/", so keys differ at or before the end of the shorter name.
func compareKeys(a, b sortKey) int {
	n := min(len(a.name), len(b.name))
	if c := strings.Compare(a.name[:n], b.name[:n]); c != 0 {
		return c
	}
	return cmp.Compare(a.keyByte(n), b.keyByte(n))
}

// walkSorted calls visit for every node below dir (whose path is buf) in
// byte order of their full paths. The path passed to visit is only valid
// during the call.
func walkSorted(dir *node, buf []byte, visit func(path []byte, n *node) error) error {
	keys := make([]sortKey, 0, len(dir.children))
	for name, c := range dir.children {
		keys = append(keys, sortKey{name: name, n: c})
		if c.isDir() {
			keys = append(keys, sortKey{name: name, n: c, sub: true})
		}
	}
	slices.SortFunc(keys, compareKeys)
	for _, k := range keys {
		p := append(append(buf, '/'), k.name...)
		var err error
		if k.sub {
			err = walkSorted(k.n, p, visit)
		} else {
			err = visit(p, k.n)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// walk visits the root (path prefix) and then every node below it, in
// path order.
func (t *tree) walk(prefix string, visit func(path []byte, n *node) error) error {
	buf := make([]byte, 0, cpio.MaxNameLen+1)
	buf = append(buf, prefix...)
	if err := visit(buf, t.root); err != nil {
		return err
	}
	return walkSorted(t.root, buf, visit)
}

// mountPoints are the directories nitro-cli adds to the image root when
// the image lacks them, with their modes.
var mountPoints = []struct {
	name string
	mode uint32
}{{"dev", 0o755}, {"run", 0o755}, {"sys", 0o755}, {"var", 0o755}, {"proc", 0o755}, {"tmp", 0o1777}}

// addMountPoints adds the mountPoints the image lacks (of any type) to the tree.
func (t *tree) addMountPoints() {
	for _, m := range mountPoints {
		if t.root.children[m.name] == nil {
			t.root.children[m.name] = &node{mode: cpio.TypeDir | m.mode, children: map[string]*node{}, plen: len(m.name)}
		}
	}
}

// writeTree writes the tree below prefix to cw, numbering inodes from
// ino, and returns the next free inode number and the number of entries.
func (t *tree) writeTree(cw *cpio.Writer, prefix string, mtime, ino uint32) (uint32, int, error) {
	// First pass: the names of each inode with content, and the position
	// of the last one. As in cpio.WriteFiles, empty files are never
	// hard links: each name is an inode of its own.
	t.writes++
	gen := t.writes
	pos := 0
	_ = t.walk(prefix, func(_ []byte, n *node) error {
		if i := n.ino; n.mode&cpio.TypeMask == cpio.TypeReg && i != nil && i.size > 0 {
			if i.gen != gen {
				i.gen, i.names, i.num = gen, 0, 0
			}
			i.names++
			i.last = pos
		}
		pos++
		return nil
	})
	total := pos
	pos = 0
	err := t.walk(prefix, func(path []byte, n *node) error {
		h := cpio.Header{Name: string(path), Mode: n.mode, UID: n.uid, GID: n.gid, Nlink: 1, Mtime: mtime,
			RDevMajor: n.rdevMaj, RDevMinor: n.rdevMin}
		var data *inode // content written with this entry
		var link *inode // inode with several names this entry is one of
		switch n.mode & cpio.TypeMask {
		case cpio.TypeDir:
			h.Nlink = 2
			for _, c := range n.children {
				if c.isDir() {
					h.Nlink++
				}
			}
		case cpio.TypeSymlink:
			h.Size = int64(len(n.target))
		case cpio.TypeReg:
			i := n.ino
			switch {
			case i == nil || i.size == 0:
			case i.names > 1:
				link = i
				h.Nlink, h.Ino = i.names, i.num
				if pos == i.last {
					data, h.Size = i, i.size
				}
			default:
				data, h.Size = i, i.size
			}
		}
		if h.Ino == 0 {
			h.Ino = ino
			ino++
			if link != nil {
				link.num = h.Ino
			}
		}
		pos++
		if err := cw.WriteHeader(&h); err != nil {
			return err
		}
		if n.mode&cpio.TypeMask == cpio.TypeSymlink {
			_, err := io.WriteString(cw, n.target)
			return err
		}
		if data != nil {
			return copyStaged(cw, data, h.Name)
		}
		return nil
	})
	return ino, total, err
}

// copyStaged writes a staged file's content, which must have its recorded size.
func copyStaged(cw *cpio.Writer, ino *inode, name string) error {
	f, err := os.Open(ino.staged)
	if err != nil {
		return fmt.Errorf("cpio: open %q: %w", name, err)
	}
	defer f.Close()
	n, err := cw.ReadFrom(f)
	if err != nil {
		return fmt.Errorf("cpio: copy %q: %w", name, err)
	}
	if n != ino.size {
		return fmt.Errorf("%w: %q: content has %d bytes, expected %d", cpio.ErrShortWrite, name, n, ino.size)
	}
	return nil
}
