package imagetest

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
)

// Cmd is the command of every fixture image.
var Cmd = []string{"/bin/app"}

// RepoTag is the tag of the image in a fixture docker archive.
const RepoTag = "imagetest/hostile:latest"

type descriptor struct {
	MediaType string            `json:"mediaType"`
	Digest    string            `json:"digest"`
	Size      int64             `json:"size"`
	Platform  map[string]string `json:"platform,omitempty"`
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// layerMediaType names the compression of blob from its magic number.
func layerMediaType(blob []byte) string {
	switch {
	case bytes.HasPrefix(blob, []byte{0x1f, 0x8b}):
		return "application/vnd.oci.image.layer.v1.tar+gzip"
	case bytes.HasPrefix(blob, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return "application/vnd.oci.image.layer.v1.tar+zstd"
	}
	return "application/vnd.oci.image.layer.v1.tar"
}

// config returns the image configuration for layers. The diff IDs are the
// blobs' own digests, which is right only for uncompressed layers: the
// fixtures never decompress a bomb to hash it, and the builder does not
// check diff IDs.
func config(layers [][]byte) []byte {
	ids := make([]string, len(layers))
	for i, l := range layers {
		ids[i] = digest(l)
	}
	b, _ := json.Marshal(map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"created":      "2024-01-01T00:00:00Z",
		"config":       map[string]any{"Cmd": Cmd},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": ids},
	})
	return b
}

// WriteOCILayout writes an OCI image layout in dir holding one linux/amd64
// image whose layers are the given blobs, stored as they are (compressed
// or not; the media type follows the blob's magic number).
func WriteOCILayout(dir string, layers ...[]byte) error {
	blobs := filepath.Join(dir, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		return err
	}
	put := func(b []byte) (string, error) {
		d := digest(b)
		return d, os.WriteFile(filepath.Join(blobs, d[len("sha256:"):]), b, 0o644)
	}
	cfg := config(layers)
	cd, err := put(cfg)
	if err != nil {
		return err
	}
	m := map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        descriptor{MediaType: "application/vnd.oci.image.config.v1+json", Digest: cd, Size: int64(len(cfg))},
	}
	var ls []descriptor
	for _, l := range layers {
		d, err := put(l)
		if err != nil {
			return err
		}
		ls = append(ls, descriptor{MediaType: layerMediaType(l), Digest: d, Size: int64(len(l))})
	}
	m["layers"] = ls
	mb, _ := json.Marshal(m)
	md, err := put(mb)
	if err != nil {
		return err
	}
	idx, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests": []descriptor{{MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: md, Size: int64(len(mb)),
			Platform: map[string]string{"architecture": "amd64", "os": "linux"}}},
	})
	if err := os.WriteFile(filepath.Join(dir, "index.json"), idx, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644)
}

// WriteDockerArchive writes a `docker save` archive at path holding one
// image, tagged RepoTag, whose layers are the given blobs stored as they
// are. As with docker itself, either every layer is compressed or none is.
func WriteDockerArchive(path string, layers ...[]byte) error {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	add := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	var names []string
	for i, l := range layers {
		n := "layer" + strconv.Itoa(i) + ".tar"
		if err := add(n, l); err != nil {
			return err
		}
		names = append(names, n)
	}
	if err := add("config.json", config(layers)); err != nil {
		return err
	}
	mf, _ := json.Marshal([]map[string]any{{"Config": "config.json", "RepoTags": []string{RepoTag}, "Layers": names}})
	if err := add("manifest.json", mf); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return os.WriteFile(path, b.Bytes(), 0o644)
}
