package imagetest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/klauspost/compress/zstd"
)

// readTar returns name → expanded size of every entry of a tar stream.
func readTar(t *testing.T, r io.Reader) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		n, err := io.Copy(io.Discard, tr)
		if err != nil {
			t.Fatal(err)
		}
		out[h.Name] = n
	}
}

// TestFixturesAreWhatTheySay reads every kind of fixture back with the
// standard readers.
func TestFixturesAreWhatTheySay(t *testing.T) {
	const mib = 1 << 20
	long := DeepPath(100)
	got := readTar(t, bytes.NewReader(Tar(
		Entry{Name: long, Data: []byte("deep")},
		Sparse("sparse", 3*mib),
		Entry{Name: "l", Typeflag: TypeSymlink, Linkname: strings.Repeat("x", 200)},
	)))
	if got[long] != 4 || got["sparse"] != 3*mib || len(got) != 3 {
		t.Fatalf("tar entries: %v", got)
	}

	zr, err := gzip.NewReader(bytes.NewReader(GzipBomb(Entry{Name: "g"}, 2*mib)))
	if err != nil {
		t.Fatal(err)
	}
	if got := readTar(t, zr); got["g"] != 2*mib {
		t.Fatalf("gzip bomb: %v", got)
	}
	zb, err := ZstdBomb(Entry{Name: "z"}, 2*mib, 21)
	if err != nil {
		t.Fatal(err)
	}
	zd, err := zstd.NewReader(bytes.NewReader(zb))
	if err != nil {
		t.Fatal(err)
	}
	defer zd.Close()
	if got := readTar(t, zd); got["z"] != 2*mib {
		t.Fatalf("zstd bomb: %v", got)
	}
	if _, err := ZstdBomb(Entry{Name: "z"}, mib, 9); err == nil {
		t.Fatal("window log 9 accepted")
	}

	dir := t.TempDir()
	layer := Tar(ManyFiles(3)...)
	if err := WriteOCILayout(filepath.Join(dir, "oci"), layer); err != nil {
		t.Fatal(err)
	}
	idx, err := layout.ImageIndexFromPath(filepath.Join(dir, "oci"))
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil || len(im.Manifests) != 1 {
		t.Fatalf("OCI layout index: %v, %v", im, err)
	}
	img, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	ls, err := img.Layers()
	if err != nil || len(ls) != 1 {
		t.Fatalf("OCI layout layers: %v, %v", ls, err)
	}
	if err := WriteDockerArchive(filepath.Join(dir, "a.tar"), layer); err != nil {
		t.Fatal(err)
	}
	aimg, err := tarball.ImageFromPath(filepath.Join(dir, "a.tar"), nil)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := aimg.ConfigFile()
	if err != nil || len(cf.Config.Cmd) != 1 || cf.Config.Cmd[0] != Cmd[0] {
		t.Fatalf("docker archive configuration: %v, %v", cf, err)
	}
	als, err := aimg.Layers()
	if err != nil || len(als) != 1 {
		t.Fatalf("docker archive layers: %v, %v", als, err)
	}
	rc, err := als[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if got := readTar(t, rc); len(got) != 3 {
		t.Fatalf("docker archive layer: %v", got)
	}
}
