package build

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloister/cloister/internal/imagetest"
)

// archiveMember is one file of a hand-made docker archive.
type archiveMember struct {
	name, data, link string
	typ              byte
}

func writeArchive(t *testing.T, members ...archiveMember) string {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, m := range members {
		h := &tar.Header{Name: m.name, Mode: 0o644, Typeflag: tar.TypeReg, Size: int64(len(m.data))}
		if m.typ != 0 {
			h.Typeflag, h.Linkname, h.Size = m.typ, m.link, 0
		}
		must(t, tw.WriteHeader(h))
		if h.Size > 0 {
			_, err := tw.Write([]byte(m.data))
			must(t, err)
		}
	}
	must(t, tw.Close())
	p := filepath.Join(t.TempDir(), "image.tar")
	must(t, os.WriteFile(p, b.Bytes(), 0o644))
	return p
}

// TestDockerArchiveReader covers the archive reader's choices and refusals.
func TestDockerArchiveReader(t *testing.T) {
	layer := string(imagetest.Tar(imagetest.Entry{Name: "bin/app", Data: []byte("app")}))
	cfg := `{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/app"]},"rootfs":{"type":"layers","diff_ids":["sha256:` + strings.Repeat("0", 64) + `"]}}`
	two := `[{"Config":"c.json","RepoTags":["a/one:1"],"Layers":["l.tar"]},{"Config":"c.json","RepoTags":["a/two:2"],"Layers":["links/l.tar"]}]`
	tests := []struct {
		name    string
		members []archiveMember
		tag     string
		want    error
		msg     string
	}{
		{name: "one image", members: []archiveMember{{name: "manifest.json", data: `[{"Config":"c.json","Layers":["l.tar"]}]`},
			{name: "c.json", data: cfg}, {name: "l.tar", data: layer}}},
		{name: "tag chooses the image; symbolic links followed", tag: "a/two:2", members: []archiveMember{
			{name: "manifest.json", data: two}, {name: "c.json", data: cfg}, {name: "blobs/l", data: layer},
			{name: "links/l.tar", typ: tar.TypeSymlink, link: "../blobs/l"}}},
		{name: "hard link followed", tag: "a/two:2", members: []archiveMember{
			{name: "manifest.json", data: two}, {name: "c.json", data: cfg}, {name: "l.tar", data: layer},
			{name: "links/l.tar", typ: tar.TypeLink, link: "l.tar"}}},
		{name: "several images, no tag", members: []archiveMember{{name: "manifest.json", data: two}},
			want: ErrSource, msg: "holds 2 images"},
		{name: "tag not found", tag: "a/three:3", members: []archiveMember{{name: "manifest.json", data: two}},
			want: ErrSource, msg: "not found"},
		{name: "link loop", tag: "a/two:2", members: []archiveMember{
			{name: "manifest.json", data: two}, {name: "c.json", data: cfg},
			{name: "links/l.tar", typ: tar.TypeSymlink, link: "l.tar"}},
			want: ErrSource, msg: "more than 16 links"},
		{name: "missing layer", members: []archiveMember{{name: "manifest.json", data: `[{"Config":"c.json","Layers":["l.tar"]}]`},
			{name: "c.json", data: cfg}},
			want: ErrSource, msg: "l.tar not found"},
		{name: "layer count differs from the configuration", members: []archiveMember{
			{name: "manifest.json", data: `[{"Config":"c.json","Layers":["l.tar","l.tar"]}]`}, {name: "c.json", data: cfg}},
			want: ErrSource, msg: "names 2 layers but the image configuration 1"},
		{name: "configuration too large", members: []archiveMember{
			{name: "manifest.json", data: `[{"Config":"c.json","Layers":["l.tar"]}]`},
			{name: "c.json", data: strings.Repeat(" ", MaxConfigSize+1)}},
			want: ErrSource, msg: "larger than 16777216 bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			archive := writeArchive(t, tc.members...)
			out := &memWS{}
			_, err := Build(context.Background(), FromDockerArchive(archive, tc.tag), out, baseOptions(t))
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if err != nil {
				if !strings.Contains(err.Error(), tc.msg) {
					t.Fatalf("error %q does not say %q", err, tc.msg)
				}
				return
			}
			ents := ramdiskEntries(t, parseEIF(t, out.b).section(3, 1))
			if ents["rootfs/bin/app"].Data != "app" {
				t.Fatalf("rootfs/bin/app = %q", ents["rootfs/bin/app"].Data)
			}
		})
	}
}
