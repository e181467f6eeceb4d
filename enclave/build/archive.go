package build

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// maxArchiveLinks bounds the links followed to find one file of a docker
// archive.
const maxArchiveLinks = 16

// archiveImage is one image of a docker archive.
type archiveImage struct {
	repoTags []string
	config   *v1.ConfigFile
	id       string // "sha256:" and the configuration's digest
	layers   []layer
}

// readDockerArchive reads the image configuration and the layer list of a
// `docker save` archive: manifest.json names, per image, the configuration
// file and the layer files, which are opened as stored (compressed or
// not) when applied. tag (nil when the archive holds one image) selects
// the image by its repository tag, as go-containerregistry's tarball
// package does. The manifest and the configuration are read into memory
// only up to MaxConfigSize.
func readDockerArchive(archive string, tag *name.Tag) (*archiveImage, error) {
	raw, err := readArchiveFile(archive, "manifest.json")
	if err != nil {
		return nil, err
	}
	var m tarball.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("manifest.json: %w", err)
	}
	var d *tarball.Descriptor
	if tag == nil {
		if len(m) != 1 {
			return nil, fmt.Errorf("the archive holds %d images; append @repo:tag to choose one", len(m))
		}
		d = &m[0]
	} else {
	find:
		for i := range m {
			for _, s := range m[i].RepoTags {
				if t, err := name.NewTag(s); err == nil && t.Name() == tag.Name() {
					d = &m[i]
					break find
				}
			}
		}
		if d == nil {
			return nil, fmt.Errorf("tag %s not found in the archive", tag)
		}
	}
	rawCfg, err := readArchiveFile(archive, d.Config)
	if err != nil {
		return nil, err
	}
	cf, err := v1.ParseConfigFile(bytes.NewReader(rawCfg))
	if err != nil {
		return nil, fmt.Errorf("image configuration: %w", err)
	}
	if len(cf.RootFS.DiffIDs) != len(d.Layers) {
		return nil, fmt.Errorf("manifest.json names %d layers but the image configuration %d", len(d.Layers), len(cf.RootFS.DiffIDs))
	}
	sum := sha256.Sum256(rawCfg)
	img := &archiveImage{repoTags: d.RepoTags, config: cf, id: "sha256:" + hex.EncodeToString(sum[:])}
	for i, p := range d.Layers {
		img.layers = append(img.layers, layer{desc: cf.RootFS.DiffIDs[i].String(),
			open: func() (io.ReadCloser, error) { return openArchiveFile(archive, p) }})
	}
	return img, nil
}

// readArchiveFile reads the file p of the archive, of at most MaxConfigSize bytes.
func readArchiveFile(archive, p string) ([]byte, error) {
	rc, err := openArchiveFile(archive, p)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, MaxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	if len(b) > MaxConfigSize {
		return nil, fmt.Errorf("%s is larger than %d bytes (MaxConfigSize)", p, MaxConfigSize)
	}
	return b, nil
}

// archiveFile is one file of an open archive; closing it closes the archive.
type archiveFile struct {
	io.Reader
	io.Closer
}

// openArchiveFile returns the content of the file p of the archive,
// following symbolic links (relative to the link's directory) and hard
// links (relative to the archive root).
func openArchiveFile(archive, p string) (io.ReadCloser, error) {
	want := path.Clean(p)
	for range maxArchiveLinks {
		f, err := os.Open(archive)
		if err != nil {
			return nil, err
		}
		tr := tar.NewReader(f)
		var hdr *tar.Header
		for {
			hdr, err = tr.Next()
			if err != nil || path.Clean(hdr.Name) == want {
				break
			}
		}
		if errors.Is(err, io.EOF) {
			f.Close()
			return nil, fmt.Errorf("%s not found in the archive", p)
		}
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("looking for %s: %w", p, err)
		}
		switch hdr.Typeflag {
		case tar.TypeReg:
			return archiveFile{tr, f}, nil
		case tar.TypeSymlink:
			want = path.Join(path.Dir(want), hdr.Linkname)
		case tar.TypeLink:
			want = path.Clean(hdr.Linkname)
		default:
			f.Close()
			return nil, fmt.Errorf("%s is not a regular file in the archive", p)
		}
		f.Close()
	}
	return nil, fmt.Errorf("%s: more than %d links in the archive", p, maxArchiveLinks)
}
