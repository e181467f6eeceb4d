package build

import (
	"bytes"
	"io"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// TestProgressCountsBytes builds an image with a (non-terminal) progress
// writer and checks the final byte counts: every layer's extracted bytes
// with its compressed size, and the EIF's size.
func TestProgressCountsBytes(t *testing.T) {
	img := fixtureImage(t, fixtureLayers(t))
	opts := baseOptions(t)
	var progress bytes.Buffer
	opts.Progress = &progress
	archive := filepath.Join(t.TempDir(), "img.tar")
	tag, _ := name.NewTag("example.com/team/app:1.0")
	must(t, tarball.WriteToFile(archive, tag, img))
	b, _ := buildBytes(t, FromDockerArchive(archive, ""), opts)
	out := progress.String()
	for _, re := range []string{
		`(?m)^applying layer 1/2 sha256:[0-9a-f]{64}: [0-9.]+ (B|KiB|MiB) extracted \([0-9.]+ (B|KiB|MiB) compressed\)$`,
		`(?m)^applying layer 2/2 sha256:[0-9a-f]{64}: [0-9.]+ (B|KiB|MiB) extracted \([0-9.]+ (B|KiB|MiB) compressed\)$`,
		`(?m)^writing the EIF: ` + regexp.QuoteMeta(formatBytes(int64(len(b)))) + `$`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("progress lacks %s:\n%s", re, out)
		}
	}
	if strings.Contains(out, "\r") {
		t.Errorf("progress to a non-terminal rewrites lines:\n%q", out)
	}
}

// TestProgressTerminal checks the in-place updates written to a terminal:
// at most one per interval, then the final line.
func TestProgressTerminal(t *testing.T) {
	var w bytes.Buffer
	now := time.Unix(0, 0)
	p := &byteProgress{w: &w, tty: true, label: "writing the EIF", now: func() time.Time { return now }}
	r := p.reader(strings.NewReader(strings.Repeat("x", 3000)))
	buf := make([]byte, 1000)
	for i := 0; i < 3; i++ {
		if _, err := io.ReadFull(r, buf); err != nil {
			t.Fatal(err)
		}
		if i == 1 {
			now = now.Add(progressInterval)
		}
	}
	p.done()
	// The first read is shown, the second falls within the interval, the
	// third comes an interval later; then the final line.
	want := "\r\x1b[Kwriting the EIF: 1000 B" + "\r\x1b[Kwriting the EIF: 2.9 KiB" + "\r\x1b[Kwriting the EIF: 2.9 KiB\n"
	if d := cmp.Diff(want, w.String()); d != "" {
		t.Errorf("terminal output (-want +got):\n%s", d)
	}
}

func TestFormatBytes(t *testing.T) {
	got := []string{formatBytes(0), formatBytes(1023), formatBytes(1024), formatBytes(10 << 20), formatBytes(3 << 30)}
	want := []string{"0 B", "1023 B", "1.0 KiB", "10.0 MiB", "3.0 GiB"}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("formatBytes (-want +got):\n%s", d)
	}
}

// TestProgressStored checks a layer's line: the extracted bytes and the
// blob's stored (compressed) bytes, both counted as they are read.
func TestProgressStored(t *testing.T) {
	var w bytes.Buffer
	p := &byteProgress{w: &w, label: "applying layer 1/1 sha256:ab", now: time.Now}
	if _, err := io.Copy(io.Discard, p.storedReader(strings.NewReader(strings.Repeat("z", 100)))); err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, p.reader(strings.NewReader(strings.Repeat("x", 2048)))); err != nil {
		t.Fatal(err)
	}
	p.done()
	if d := cmp.Diff("applying layer 1/1 sha256:ab: 2.0 KiB extracted (100 B compressed)\n", w.String()); d != "" {
		t.Errorf("layer line (-want +got):\n%s", d)
	}
}
