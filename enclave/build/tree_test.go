package build

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/internal/cpio"
	"github.com/cloister/cloister/internal/imagetest"
)

// files returns the tree as cpio files below prefix: the reference the
// tree writer is held to (it was the builder's own path before the writer
// streamed from the nodes). Hard links of one inode are expressed as links
// to the first one visited; cpio.WriteFiles then orders the entries and
// puts the data on the last link.
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

// compareWriters writes t with the tree writer and, as the reference, with
// cpio.WriteFiles over t.files, and fails when the archives differ.
func compareWriters(t *testing.T, tr *tree) {
	t.Helper()
	epoch := time.Unix(1700000000, 0)
	const firstIno = 3
	var got, want bytes.Buffer
	cw := cpio.NewWriter(&got)
	if _, _, err := tr.writeTree(cw, rootfsDir, uint32(epoch.Unix()), firstIno); err != nil {
		t.Fatalf("tree writer: %v", err)
	}
	must(t, cw.Close())
	cw = cpio.NewWriter(&want)
	if err := cpio.WriteFiles(cw, tr.files(rootfsDir), cpio.FilesOptions{Mtime: epoch, FirstIno: firstIno}); err != nil {
		t.Fatalf("reference writer: %v", err)
	}
	must(t, cw.Close())
	if !bytes.Equal(got.Bytes(), want.Bytes()) {
		g, w := ramdiskEntries(t, got.Bytes()), ramdiskEntries(t, want.Bytes())
		t.Fatalf("tree writer differs from cpio.WriteFiles (-want +got):\n%s", cmp.Diff(w, g))
	}
	var again bytes.Buffer
	cw = cpio.NewWriter(&again)
	if _, _, err := tr.writeTree(cw, rootfsDir, uint32(epoch.Unix()), firstIno); err != nil {
		t.Fatalf("tree writer, second time: %v", err)
	}
	must(t, cw.Close())
	if !bytes.Equal(again.Bytes(), got.Bytes()) {
		t.Fatal("writing the tree a second time gives another archive")
	}
}

func applyTestLayers(t *testing.T, layers ...[]byte) *tree {
	t.Helper()
	b, err := newBudget(&Options{})
	must(t, err)
	tr := newTree(t.TempDir(), b)
	for i, l := range layers {
		must(t, tr.applyLayer(context.Background(), bytes.NewReader(l), i+1))
	}
	tr.addMountPoints()
	return tr
}

// TestTreeWriterMatchesWriteFiles holds the streaming tree writer to
// cpio.WriteFiles: same order (names that sort around "/", such as "a-b",
// "a.b" and "a/c"), inode numbers, link counts and hard-link data placement.
func TestTreeWriterMatchesWriteFiles(t *testing.T) {
	tests := []struct {
		name   string
		layers [][]byte
	}{
		{"fixture", fixtureLayers(t)},
		{"names around the slash", [][]byte{layerTar(t, []tarEntry{
			dir("a", 0o755, 0, 0), file("a/c", 0o644, "c"), file("a-b", 0o644, "ab"), dir("a.b", 0o700, 1, 2),
			file("a.b/x", 0o600, "x"), file("a0", 0o644, ""), dir("a/z", 0o755, 0, 0), file("a/z/!", 0o644, "!"),
			dir("b", 0o755, 0, 0), dir("b/b", 0o755, 0, 0), dir("b/b-", 0o755, 0, 0), file("b/b/x", 0o644, "1"),
			file("b/b-/x", 0o644, "2"), file("b/b.", 0o644, "3"), symlink("dev", "/tmp"), dir("var", 0o700, 0, 0),
		})}},
		{"hard links across directories", [][]byte{layerTar(t, []tarEntry{
			file("z/data", 0o644, "shared"), hardlink("a/link", "z/data"), hardlink("m-link", "z/data"),
			hardlink("z/data-2", "z/data"), file("empty", 0o644, ""), hardlink("a/empty-link", "empty"),
			hardlink("b/empty-link", "empty"), file("single", 0o644, "one"),
		}), layerTar(t, []tarEntry{file(".wh.m-link", 0o644, ""), hardlink("n/new", "a/link")})}},
		{"deep", [][]byte{imagetest.Tar(
			imagetest.Entry{Name: imagetest.DeepPath(500), Data: []byte("deep")},
			imagetest.Entry{Name: strings.Repeat("d/", 250) + "e-", Data: []byte("e")},
		)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			compareWriters(t, applyTestLayers(t, tc.layers...))
		})
	}
}

// FuzzApplyLayer feeds arbitrary bytes to the layer reader as a layer
// stream, optionally compressed. It must not panic; every error must be
// ErrLayer or ErrTooLarge; and a layer it accepts must write the same
// ramdisk as cpio.WriteFiles.
func FuzzApplyLayer(f *testing.F) {
	for _, l := range fixtureLayers(f) {
		f.Add(l)
	}
	f.Add(imagetest.Tar(imagetest.SymlinkChain(3, 1500)...))
	f.Add(imagetest.Tar(imagetest.Sparse("sparse", 1<<20)))
	f.Add(imagetest.Tar(imagetest.Entry{Name: imagetest.DeepPath(3000), Data: []byte("x")}))
	f.Add(imagetest.GzipBomb(imagetest.Entry{Name: "big"}, 1<<20))
	z, err := imagetest.ZstdBomb(imagetest.Entry{Name: ".wh.big"}, 1<<20, 20)
	must(f, err)
	f.Add(z)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	must(f, tw.WriteHeader(&tar.Header{Name: "a/../b", Typeflag: tar.TypeReg, Size: 1, Mode: 0o644}))
	tw.Write([]byte("b"))
	tw.Close()
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		budget, err := newBudget(&Options{MaxImageSize: 8 << 20, MaxEntries: 4096})
		must(t, err)
		tr := newTree(t.TempDir(), budget)
		r, done, err := decompress(bytes.NewReader(b))
		if err != nil {
			if !errors.Is(err, ErrLayer) {
				t.Fatalf("decompress: %v, want ErrLayer", err)
			}
			return
		}
		defer done()
		err = tr.applyLayer(context.Background(), &countingReader{r: r, b: budget}, 1)
		if err != nil {
			if !errors.Is(err, ErrLayer) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("applyLayer: %v, want ErrLayer or ErrTooLarge", err)
			}
			return
		}
		tr.addMountPoints()
		compareWriters(t, tr)
	})
}
