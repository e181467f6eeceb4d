package build

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Source is where the image's file system and configuration come from.
// Implementations are provided by this package.
type Source interface {
	// String describes the source for messages.
	String() string
	resolve(ctx context.Context, platform v1.Platform) (*resolved, error)
}

// resolved is a source turned into a file system and a configuration.
type resolved struct {
	rootfs  string    // a directory (FromRootFS), or
	layers  []layer   // the layers of an image, in order
	config  v1.Config // Entrypoint, Cmd, Env, WorkingDir, User
	created v1.Time
	name    string          // default ImageName
	id      string          // image ID "sha256:…" ("" for a rootfs)
	docker  json.RawMessage // DockerInfo for the metadata
}

// layer is one image layer.
type layer struct {
	desc string                        // for progress: the diff ID or the blob digest
	open func() (io.ReadCloser, error) // the blob as stored: gzip, zstd or plain tar
}

type rootfsSource struct{ dir string }

// FromRootFS uses a directory as the image file system. Ownership and
// permissions are taken from disk; there is no image configuration, so
// Options.Cmd is required.
func FromRootFS(dir string) Source { return rootfsSource{dir} }

func (s rootfsSource) String() string { return "rootfs " + s.dir }

func (s rootfsSource) resolve(context.Context, v1.Platform) (*resolved, error) {
	abs, err := filepath.Abs(s.dir)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSource, err)
	}
	return &resolved{rootfs: abs, name: filepath.Base(abs), docker: json.RawMessage("null")}, nil
}

type archiveSource struct{ path, tag string }

// FromDockerArchive reads a `docker save` archive. tag selects the image
// when the archive holds several ("" when it holds exactly one).
func FromDockerArchive(path, tag string) Source { return archiveSource{path, tag} }

func (s archiveSource) String() string { return "docker archive " + s.path }

func (s archiveSource) resolve(_ context.Context, _ v1.Platform) (*resolved, error) {
	var tag *name.Tag
	imgName := strings.TrimSuffix(filepath.Base(s.path), filepath.Ext(s.path))
	if s.tag != "" {
		t, err := name.NewTag(s.tag)
		if err != nil {
			return nil, fmt.Errorf("%w: tag %q: %w", ErrSource, s.tag, err)
		}
		tag = &t
		imgName = t.Context().Name()
	}
	img, err := readDockerArchive(s.path, tag)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrSource, s.path, err)
	}
	if s.tag == "" && len(img.repoTags) == 1 {
		if t, err := name.NewTag(img.repoTags[0]); err == nil {
			imgName = t.Context().Name()
		}
	}
	docker, err := dockerInfo(img.config, img.id, s.tag)
	if err != nil {
		return nil, err
	}
	return &resolved{layers: img.layers, config: img.config.Config, created: img.config.Created, name: imgName, id: img.id, docker: docker}, nil
}

type layoutSource struct{ dir string }

// FromOCILayout reads an OCI image layout directory. When its index lists
// several images, the one for the enclave's platform (linux and the
// kernel's architecture) is used.
func FromOCILayout(dir string) Source { return layoutSource{dir} }

func (s layoutSource) String() string { return "OCI layout " + s.dir }

func (s layoutSource) resolve(_ context.Context, platform v1.Platform) (*resolved, error) {
	p, err := layout.FromPath(s.dir)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrSource, s.dir, err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrSource, s.dir, err)
	}
	img, err := pickImage(idx, platform, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrSource, s.dir, err)
	}
	// The layout reads the configuration blob whole, whatever the
	// manifest says its size is: check the file first.
	m, err := img.Manifest()
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrSource, s.dir, err)
	}
	blob := filepath.Join(s.dir, "blobs", m.Config.Digest.Algorithm, m.Config.Digest.Hex)
	if fi, err := os.Stat(blob); err == nil && fi.Size() > MaxConfigSize {
		return nil, fmt.Errorf("%w: %s: image configuration of %d bytes, more than %d (MaxConfigSize)", ErrSource, s.dir, fi.Size(), MaxConfigSize)
	}
	abs, _ := filepath.Abs(s.dir)
	return fromImage(img, filepath.Base(abs), "")
}

// pickImage returns the only image of idx, or the one matching platform.
func pickImage(idx v1.ImageIndex, platform v1.Platform, depth int) (v1.Image, error) {
	if depth > 4 {
		return nil, fmt.Errorf("image index nested too deeply")
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	var candidates []v1.Descriptor
	for _, d := range im.Manifests {
		if d.MediaType.IsImage() || d.MediaType.IsIndex() {
			candidates = append(candidates, d)
		}
	}
	choose := func(d v1.Descriptor) (v1.Image, error) {
		if d.MediaType.IsIndex() {
			child, err := idx.ImageIndex(d.Digest)
			if err != nil {
				return nil, err
			}
			return pickImage(child, platform, depth+1)
		}
		return idx.Image(d.Digest)
	}
	if len(candidates) == 1 {
		return choose(candidates[0])
	}
	for _, d := range candidates {
		if d.Platform != nil && d.Platform.OS == platform.OS && d.Platform.Architecture == platform.Architecture {
			return choose(d)
		}
	}
	return nil, fmt.Errorf("no image for %s/%s among %d manifests", platform.OS, platform.Architecture, len(candidates))
}

type registrySource struct{ ref string }

// FromRegistry pulls an image from a registry (no Docker daemon), with the
// credentials of the default keychain (~/.docker/config.json). Loopback and
// private-network registries are reached over plain HTTP, as
// go-containerregistry does.
func FromRegistry(ref string) Source { return registrySource{ref} }

func (s registrySource) String() string { return "registry image " + s.ref }

func (s registrySource) resolve(ctx context.Context, platform v1.Platform) (*resolved, error) {
	ref, err := name.ParseReference(s.ref)
	if err != nil {
		return nil, fmt.Errorf("%w: reference %q: %w", ErrSource, s.ref, err)
	}
	img, err := remote.Image(ref, remote.WithContext(ctx), remote.WithPlatform(platform),
		remote.WithAuthFromKeychain(authn.DefaultKeychain))
	if err != nil {
		return nil, fmt.Errorf("%w: pull %s: %w", ErrSource, s.ref, err)
	}
	return fromImage(img, ref.Context().Name(), s.ref)
}

// fromImage reads the configuration (at most MaxConfigSize bytes, as the
// manifest declares it) and the layer list of img.
func fromImage(img v1.Image, imgName, ref string) (*resolved, error) {
	m, err := img.Manifest()
	if err != nil {
		return nil, fmt.Errorf("%w: image manifest: %w", ErrSource, err)
	}
	if m.Config.Size > MaxConfigSize {
		return nil, fmt.Errorf("%w: image configuration of %d bytes, more than %d (MaxConfigSize)", ErrSource, m.Config.Size, MaxConfigSize)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("%w: image configuration: %w", ErrSource, err)
	}
	id, err := img.ConfigName()
	if err != nil {
		return nil, fmt.Errorf("%w: image ID: %w", ErrSource, err)
	}
	ls, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("%w: layers: %w", ErrSource, err)
	}
	layers := make([]layer, len(ls))
	for i, l := range ls {
		// The diff ID from the configuration: asking the layer for it may
		// decompress and hash the whole layer.
		desc := ""
		if len(cf.RootFS.DiffIDs) == len(ls) {
			desc = cf.RootFS.DiffIDs[i].String()
		} else if d, err := l.Digest(); err == nil {
			desc = d.String()
		}
		layers[i] = layer{desc: desc, open: l.Compressed}
	}
	docker, err := dockerInfo(cf, id.String(), ref)
	if err != nil {
		return nil, err
	}
	return &resolved{layers: layers, config: cf.Config, created: cf.Created, name: imgName, id: id.String(), docker: docker}, nil
}

// dockerInfo returns the metadata's DockerInfo for an image.
func dockerInfo(cf *v1.ConfigFile, id, ref string) (json.RawMessage, error) {
	info := map[string]any{
		"Id":           id,
		"Created":      cf.Created,
		"Architecture": cf.Architecture,
		"Os":           cf.OS,
		"Config":       cf.Config,
	}
	if ref != "" {
		info["RepoTags"] = []string{ref}
	}
	docker, err := json.Marshal(info)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSource, err)
	}
	return docker, nil
}
