package build

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"hash/crc32"
	"io"
	"log"
	"math/big"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/cloister/cloister/enclave/eif"
	"github.com/cloister/cloister/internal/cpio"
)

// ---- independent EIF reader (does not use package eif) ----

type rawEIF struct {
	version  uint16
	flags    uint16
	sections []rawSection
	pcr      [3]string
}

type rawSection struct {
	typ  uint16
	data []byte
}

func parseEIF(t testing.TB, b []byte) rawEIF {
	t.Helper()
	be := binary.BigEndian
	if len(b) < 548 || string(b[:4]) != ".eif" {
		t.Fatal("not an EIF")
	}
	r := rawEIF{version: be.Uint16(b[4:]), flags: be.Uint16(b[6:])}
	n := int(be.Uint16(b[26:]))
	off := uint64(548)
	for i := 0; i < n; i++ {
		if be.Uint64(b[28+8*i:]) != off {
			t.Fatalf("section %d offset", i)
		}
		size := be.Uint64(b[284+8*i:])
		if be.Uint64(b[off+4:]) != size {
			t.Fatalf("section %d size mismatch", i)
		}
		r.sections = append(r.sections, rawSection{be.Uint16(b[off:]), b[off+12 : off+12+size]})
		off += 12 + size
	}
	if off != uint64(len(b)) {
		t.Fatal("trailing bytes")
	}
	if crc := crc32.Update(crc32.ChecksumIEEE(b[:544]), crc32.IEEETable, b[548:]); crc != be.Uint32(b[544:]) {
		t.Fatal("bad CRC")
	}
	h0, h1, h2 := sha512.New384(), sha512.New384(), sha512.New384()
	rd := 0
	for _, s := range r.sections {
		switch s.typ {
		case 1, 2:
			h0.Write(s.data)
			h1.Write(s.data)
		case 3:
			h0.Write(s.data)
			if rd == 0 {
				h1.Write(s.data)
			} else {
				h2.Write(s.data)
			}
			rd++
		}
	}
	for i, h := range []interface{ Sum([]byte) []byte }{h0, h1, h2} {
		e := sha512.Sum384(append(make([]byte, 48), h.Sum(nil)...))
		r.pcr[i] = hex.EncodeToString(e[:])
	}
	return r
}

func (r rawEIF) section(typ uint16, n int) []byte {
	for _, s := range r.sections {
		if s.typ == typ {
			if n == 0 {
				return s.data
			}
			n--
		}
	}
	return nil
}

type entry struct {
	cpio.Header
	Data string
}

func ramdiskEntries(t testing.TB, b []byte) map[string]entry {
	t.Helper()
	r := cpio.NewReader(bytes.NewReader(b), cpio.Limits{})
	out := map[string]entry{}
	for {
		h, err := r.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		d, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		if _, dup := out[h.Name]; dup {
			t.Fatalf("duplicate entry %s", h.Name)
		}
		out[h.Name] = entry{*h, string(d)}
	}
}

// ---- fixtures ----

type tarEntry struct {
	hdr  tar.Header
	data string
}

func layerTar(t testing.TB, entries []tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.data))
		}
		if h.Format == tar.FormatUnknown {
			h.Format = tar.FormatPAX
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if e.data != "" {
			if _, err := tw.Write([]byte(e.data)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func dir(name string, mode int64, uid, gid int) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, Uid: uid, Gid: gid}}
}
func file(name string, mode int64, data string) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode}, data: data}
}
func symlink(name, target string) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}}
}
func hardlink(name, target string) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, Mode: 0o644}}
}

var fixtureCreated = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)

func fixtureLayers(t testing.TB) [][]byte {
	l1 := layerTar(t, []tarEntry{
		dir("./", 0o755, 0, 0),
		dir("etc/", 0o755, 0, 0),
		file("etc/passwd", 0o644, "root:x:0:0::/root:/bin/sh\n"),
		dir("bin", 0o755, 0, 0),
		file("bin/app", 0o755, "#!/bin/sh\necho app\n"),
		dir("usr", 0o755, 0, 0),
		dir("usr/lib", 0o755, 0, 0),
		symlink("lib", "usr/lib"),
		dir("data", 0o750, 0, 0),
		file("data/old1", 0o600, "old1"),
		file("data/old2", 0o600, "old2"),
		dir("hl", 0o755, 0, 0),
		file("hl/a", 0o640, "shared"),
		hardlink("hl/b", "hl/a"),
		file("gone.txt", 0o644, "bye"),
		dir("home/user", 0o700, 1000, 1000),
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "home/user/.profile", Mode: 0o600, Uid: 1000, Gid: 1000}, data: "export X=1\n"},
		{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3}},
		{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "run/fifo", Mode: 0o644}},
	})
	l2 := layerTar(t, []tarEntry{
		file(".wh.gone.txt", 0o644, ""),
		file("data/new", 0o644, "new"),
		file("data/.wh..wh..opq", 0o644, ""),
		file("lib/extra.so", 0o755, "ELF"),
		file("etc/passwd", 0o644, "root:x:0:0::/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n"),
		hardlink("hl/c", "hl/a"),
		file("bin/su", 0o4755, "su"),
		file("/abs/path", 0o644, "abs"),
	})
	return [][]byte{l1, l2}
}

func fixtureImage(t testing.TB, layers [][]byte) v1.Image {
	t.Helper()
	img := empty.Image
	for _, l := range layers {
		data := l
		layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
		if err != nil {
			t.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, layer); err != nil {
			t.Fatal(err)
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = "amd64", "linux"
	cf.Created = v1.Time{Time: fixtureCreated}
	cf.Config = v1.Config{
		Entrypoint: []string{"/bin/app"},
		Cmd:        []string{"--serve", "two words"},
		Env:        []string{"PATH=/usr/bin:/bin", "A=1"},
		WorkingDir: "/srv",
		User:       "1000:1000",
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// testBlobs makes a blobs directory with a fake kernel, cmdline and config.
func testBlobs(t testing.TB) string {
	t.Helper()
	d := t.TempDir()
	must(t, os.WriteFile(filepath.Join(d, "bzImage"), bytes.Repeat([]byte("KERNEL"), 1000), 0o644))
	must(t, os.WriteFile(filepath.Join(d, "cmdline"), []byte("console=ttyS0 test=1\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(d, "bzImage.config"), []byte("#\n# Automatically generated file; DO NOT EDIT.\n# Linux/x86_64 6.6.79 Kernel Configuration\n"), 0o644))
	return d
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func envFunc(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func baseOptions(t testing.TB) Options {
	return Options{
		Init:   []byte("\x7fELF fake cloister-init"),
		Getenv: envFunc(map[string]string{"CLOISTER_BLOBS": testBlobs(t)}),
	}
}

func buildBytes(t testing.TB, src Source, opts Options) ([]byte, *Result) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "out.eif")
	res, err := BuildFile(context.Background(), src, p, opts)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b, res
}

func checkMeasurements(t testing.TB, r rawEIF, m eif.Measurements) {
	t.Helper()
	got := [3]string{hex.EncodeToString(m.PCR0[:]), hex.EncodeToString(m.PCR1[:]), hex.EncodeToString(m.PCR2[:])}
	if diff := cmp.Diff(r.pcr, got); diff != "" {
		t.Fatalf("builder PCRs differ from the independent computation (-want +got):\n%s", diff)
	}
}

// ---- tests ----

func TestBuildDockerArchive(t *testing.T) {
	img := fixtureImage(t, fixtureLayers(t))
	archive := filepath.Join(t.TempDir(), "img.tar")
	tag, _ := name.NewTag("example.com/team/app:1.0")
	must(t, tarball.WriteToFile(archive, tag, img))

	opts := baseOptions(t)
	opts.Env = []string{"A=2", "B=3"}
	opts.Metadata = []byte(`{"team":"x"}`)
	var progress bytes.Buffer
	opts.Progress = &progress
	b, res := buildBytes(t, FromDockerArchive(archive, ""), opts)
	r := parseEIF(t, b)
	checkMeasurements(t, r, res.Measurements)
	if r.version != 4 || r.flags != 0 || len(r.sections) != 5 {
		t.Fatalf("version %d flags %d sections %d", r.version, r.flags, len(r.sections))
	}
	wantTypes := []uint16{1, 2, 5, 3, 3}
	for i, s := range r.sections {
		if s.typ != wantTypes[i] {
			t.Fatalf("section %d type %d", i, s.typ)
		}
	}
	if got := string(r.section(2, 0)); got != "console=ttyS0 test=1" {
		t.Fatalf("cmdline %q", got)
	}
	if !strings.Contains(progress.String(), "applying layer 2/2") {
		t.Errorf("progress: %q", progress.String())
	}

	boot := ramdiskEntries(t, r.section(3, 0))
	if e := boot["init"]; e.Mode != cpio.TypeReg|0o755 || e.Data != string(opts.Init) {
		t.Errorf("init entry %+v", e.Header)
	}
	if e := boot["dev"]; e.Mode != cpio.TypeDir|0o755 {
		t.Errorf("dev entry %+v", e.Header)
	}
	if len(boot) != 2 {
		t.Errorf("bootstrap entries: %v", keys(boot))
	}

	cust := ramdiskEntries(t, r.section(3, 1))
	mt := uint32(fixtureCreated.Unix())
	type want struct {
		mode     uint32
		uid, gid uint32
		data     string
	}
	wants := map[string]want{
		"rootfs":                    {cpio.TypeDir | 0o755, 0, 0, ""},
		"rootfs/etc/passwd":         {cpio.TypeReg | 0o644, 0, 0, "root:x:0:0::/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n"},
		"rootfs/bin/app":            {cpio.TypeReg | 0o755, 0, 0, "#!/bin/sh\necho app\n"},
		"rootfs/bin/su":             {cpio.TypeReg | 0o4755, 0, 0, "su"},
		"rootfs/lib":                {cpio.TypeSymlink | 0o777, 0, 0, "usr/lib"},
		"rootfs/usr/lib/extra.so":   {cpio.TypeReg | 0o755, 0, 0, "ELF"},
		"rootfs/data":               {cpio.TypeDir | 0o750, 0, 0, ""},
		"rootfs/data/new":           {cpio.TypeReg | 0o644, 0, 0, "new"},
		"rootfs/home/user":          {cpio.TypeDir | 0o700, 1000, 1000, ""},
		"rootfs/home/user/.profile": {cpio.TypeReg | 0o600, 1000, 1000, "export X=1\n"},
		"rootfs/dev/null":           {cpio.TypeChar | 0o666, 0, 0, ""},
		"rootfs/run/fifo":           {cpio.TypeFifo | 0o644, 0, 0, ""},
		"rootfs/abs/path":           {cpio.TypeReg | 0o644, 0, 0, "abs"},
		"rootfs/tmp":                {cpio.TypeDir | 0o1777, 0, 0, ""},
		"rootfs/proc":               {cpio.TypeDir | 0o755, 0, 0, ""},
		"cmd":                       {cpio.TypeReg | 0o644, 0, 0, "/bin/app\n--serve\ntwo words\n"},
		"env":                       {cpio.TypeReg | 0o644, 0, 0, "PATH=/usr/bin:/bin\nA=2\nB=3\n"},
		"workdir":                   {cpio.TypeReg | 0o644, 0, 0, "/srv\n"},
		"user":                      {cpio.TypeReg | 0o644, 0, 0, "1000:1000\n"},
	}
	for p, w := range wants {
		e, ok := cust[p]
		if !ok {
			t.Errorf("missing %s", p)
			continue
		}
		got := want{e.Mode, e.UID, e.GID, e.Data}
		if got != w {
			t.Errorf("%s: got %+v, want %+v", p, got, w)
		}
		if e.Mtime != mt {
			t.Errorf("%s: mtime %d, want %d", p, e.Mtime, mt)
		}
	}
	for _, gone := range []string{"rootfs/gone.txt", "rootfs/data/old1", "rootfs/data/old2", "rootfs/.wh.gone.txt", "rootfs/data/.wh..wh..opq", "rootfs/lib/extra.so"} {
		if _, ok := cust[gone]; ok {
			t.Errorf("%s should not exist", gone)
		}
	}
	// Hard links: one inode, nlink 3, data on the last link in order.
	a, bb, c := cust["rootfs/hl/a"], cust["rootfs/hl/b"], cust["rootfs/hl/c"]
	if a.Ino != bb.Ino || a.Ino != c.Ino || a.Nlink != 3 || c.Data != "shared" || a.Size != 0 || bb.Size != 0 || a.Mode != cpio.TypeReg|0o640 {
		t.Errorf("hard links: a=%+v b=%+v c=%+v", a.Header, bb.Header, c.Header)
	}

	md := res.Metadata
	if md.ImageName != "example.com/team/app" || md.BuildMetadata.BuildTime != "2024-05-06T07:08:09+00:00" ||
		md.BuildMetadata.OperatingSystem != "Linux/x86_64" || md.BuildMetadata.KernelVersion != "6.6.79" ||
		string(md.CustomMetadata) != `{"team":"x"}` || len(md.ImageVersion) != 64 {
		t.Errorf("metadata %+v", md)
	}
	parsed, err := eif.ParseMetadata(r.section(5, 0))
	if err != nil || parsed.ImageName != md.ImageName {
		t.Errorf("metadata section: %v", err)
	}
}

func keys(m map[string]entry) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestSourcesAgree builds the same image from a docker archive, an OCI
// layout and an in-process registry: the measurements must be identical,
// and two builds of one source must be byte-identical.
func TestSourcesAgree(t *testing.T) {
	img := fixtureImage(t, fixtureLayers(t))
	tmp := t.TempDir()
	archive := filepath.Join(tmp, "img.tar")
	tag, _ := name.NewTag("example.com/app:latest")
	must(t, tarball.WriteToFile(archive, tag, img))
	lp, err := layout.Write(filepath.Join(tmp, "oci"), empty.Index)
	must(t, err)
	must(t, lp.AppendImage(img))

	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	ref := u.Host + "/team/app:v1"
	r, err := name.ParseReference(ref)
	must(t, err)
	must(t, remote.Write(r, img))

	opts := baseOptions(t)
	var results []*Result
	var first []byte
	for i, src := range []Source{FromDockerArchive(archive, "example.com/app:latest"), FromOCILayout(filepath.Join(tmp, "oci")), FromRegistry(ref), FromDockerArchive(archive, "example.com/app:latest")} {
		b, res := buildBytes(t, src, opts)
		checkMeasurements(t, parseEIF(t, b), res.Measurements)
		results = append(results, res)
		if i == 0 {
			first = b
		}
		if i == 3 && !bytes.Equal(b, first) {
			t.Error("two builds of the same docker archive differ")
		}
	}
	for i, res := range results[1:] {
		if diff := cmp.Diff(results[0].Measurements, res.Measurements); diff != "" {
			t.Errorf("source %d measurements differ:\n%s", i+1, diff)
		}
	}
	if results[2].Metadata.ImageName != u.Host+"/team/app" {
		t.Errorf("registry image name %q", results[2].Metadata.ImageName)
	}
}

func TestBuildRootFSReproducible(t *testing.T) {
	mk := func(reverse bool) string {
		d := t.TempDir()
		steps := []func(){
			func() { must(t, os.MkdirAll(filepath.Join(d, "app/sub"), 0o755)) },
			func() { must(t, os.WriteFile(filepath.Join(d, "app/main"), []byte("main"), 0o755)) },
			func() { must(t, os.WriteFile(filepath.Join(d, "app/sub/data"), []byte("data"), 0o644)) },
			func() { must(t, os.Symlink("app/main", filepath.Join(d, "run-me"))) },
			func() { must(t, os.WriteFile(filepath.Join(d, "zz"), []byte("z"), 0o600)) },
		}
		if reverse {
			steps = []func(){steps[0], steps[4], steps[3], steps[2], steps[1]}
		}
		for _, s := range steps {
			s()
			time.Sleep(2 * time.Millisecond) // different mtimes on disk must not matter
		}
		return d
	}
	opts := baseOptions(t)
	opts.Cmd = []string{"/app/main"}
	opts.Name = "app" // the default name is the directory's base name
	epoch := time.Unix(1700000000, 0)
	opts.SourceDateEpoch = &epoch
	a, ra := buildBytes(t, FromRootFS(mk(false)), opts)
	b, _ := buildBytes(t, FromRootFS(mk(true)), opts)
	if !bytes.Equal(a, b) {
		t.Fatal("same tree created in a different order gives different EIFs")
	}
	r := parseEIF(t, a)
	checkMeasurements(t, r, ra.Measurements)
	cust := ramdiskEntries(t, r.section(3, 1))
	if e := cust["rootfs"]; e.Mode != cpio.TypeDir|0o755 {
		t.Errorf("rootfs mode %#o", e.Mode)
	}
	if e := cust["rootfs/run-me"]; e.Data != "app/main" || e.Mtime != 1700000000 {
		t.Errorf("symlink %+v", e)
	}
	if _, ok := cust["workdir"]; ok {
		t.Error("workdir written for a rootfs without configuration")
	}
	// SOURCE_DATE_EPOCH from the environment.
	opts.SourceDateEpoch = nil
	env := map[string]string{"CLOISTER_BLOBS": testBlobs(t), "SOURCE_DATE_EPOCH": "1700000000"}
	opts.Getenv = envFunc(env)
	c, _ := buildBytes(t, FromRootFS(mk(false)), opts)
	if !bytes.Equal(a, c) {
		t.Fatal("SOURCE_DATE_EPOCH gives a different image than SourceDateEpoch")
	}
}

func TestBuildNoKernelAndModules(t *testing.T) {
	d := t.TempDir()
	must(t, os.WriteFile(filepath.Join(d, "f"), []byte("x"), 0o644))
	mods := t.TempDir()
	must(t, os.WriteFile(filepath.Join(mods, "nsm.ko"), []byte("nsm-module"), 0o644))
	must(t, os.WriteFile(filepath.Join(mods, "vsock.ko"), []byte("vsock-module"), 0o644))
	opts := Options{
		Init: []byte("init"), Cmd: []string{"/f"},
		KernelModules: []string{filepath.Join(mods, "vsock.ko"), filepath.Join(mods, "nsm.ko")},
		Getenv:        envFunc(map[string]string{"CLOISTER_BLOBS": filepath.Join(d, "none")}),
	}
	b, res := buildBytes(t, FromRootFS(d), opts)
	img, err := eif.Unmarshal(b, eif.ReadOptions{})
	must(t, err)
	if !res.NoKernel || !eif.IsNoKernel(img) {
		t.Fatal("no-kernel image not marked")
	}
	r := parseEIF(t, b)
	if string(r.section(2, 0)) != DefaultCmdline {
		t.Errorf("cmdline %q", r.section(2, 0))
	}
	boot := ramdiskEntries(t, r.section(3, 0))
	if boot["modules/order"].Data != "vsock.ko\nnsm.ko\n" || boot["modules/nsm.ko"].Data != "nsm-module" || boot["modules"].Mode != cpio.TypeDir|0o755 {
		t.Errorf("modules: %+v", boot)
	}
	opts.RequireKernel = true
	if _, err := Build(context.Background(), FromRootFS(d), &memWS{}, opts); !errors.Is(err, ErrOptions) {
		t.Fatalf("RequireKernel: %v", err)
	}
}

func TestBuildSigned(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "s"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	must(t, err)
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	d := t.TempDir()
	must(t, os.WriteFile(filepath.Join(d, "f"), []byte("x"), 0o644))
	opts := baseOptions(t)
	opts.Cmd = []string{"/f"}
	unsigned, ru := buildBytes(t, FromRootFS(d), opts)
	opts.SigningCert, opts.SigningKey = certPEM, key
	b, res := buildBytes(t, FromRootFS(d), opts)
	r := parseEIF(t, b)
	checkMeasurements(t, r, res.Measurements)
	if r.sections[len(r.sections)-1].typ != 4 || res.Measurements.PCR0 != ru.Measurements.PCR0 || len(b) <= len(unsigned) {
		t.Fatal("signature section missing or PCR0 changed")
	}
	img, err := eif.Unmarshal(b, eif.ReadOptions{})
	must(t, err)
	if _, err := eif.VerifySignature(img, time.Now()); err != nil {
		t.Fatal(err)
	}
	want, _ := eif.PCR8FromCertificate(certPEM)
	if res.Measurements.PCR8 == nil || *res.Measurements.PCR8 != want {
		t.Fatal("PCR8")
	}
}

func TestBuildRejects(t *testing.T) {
	ctx := context.Background()
	d := t.TempDir()
	opts := baseOptions(t)
	opts.Cmd = []string{"/x"}
	tests := []struct {
		name string
		mod  func(o *Options)
		want error
	}{
		{"no init", func(o *Options) { o.Init = nil }, ErrOptions},
		{"cert without key", func(o *Options) { o.SigningCert = []byte("x") }, ErrOptions},
		{"metadata not object", func(o *Options) { o.Metadata = []byte(`[1]`) }, ErrOptions},
		{"metadata too big", func(o *Options) { o.Metadata = []byte(`{"a":"` + strings.Repeat("x", 5000) + `"}`) }, ErrOptions},
		{"no heartbeat switch", func(o *Options) { o.Cmdline = "console=ttyS0 " + NoHeartbeatSwitch }, ErrOptions},
		{"no command", func(o *Options) { o.Cmd = nil }, ErrNoCommand},
		{"bad env", func(o *Options) { o.Env = []string{"NOEQUALS"} }, ErrOptions},
		{"newline in cmd", func(o *Options) { o.Cmd = []string{"a\nb"} }, ErrOptions},
		{"bad epoch", func(o *Options) { o.Getenv = envFunc(map[string]string{"SOURCE_DATE_EPOCH": "x"}) }, ErrOptions},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := opts
			tc.mod(&o)
			if _, err := Build(ctx, FromRootFS(d), &memWS{}, o); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	o := opts
	o.AllowNoHeartbeat, o.Cmdline = true, "console=ttyS0 "+NoHeartbeatSwitch
	if _, err := Build(ctx, FromRootFS(d), &memWS{}, o); err != nil {
		t.Fatalf("AllowNoHeartbeat: %v", err)
	}
}

func TestLayerSafety(t *testing.T) {
	tests := []struct {
		name    string
		entries []tarEntry
		check   func(t *testing.T, tr *tree)
		wantErr bool
	}{
		{name: "dotdot escape", entries: []tarEntry{file("a/../../evil", 0o644, "x")}, wantErr: true},
		{name: "dotdot hardlink", entries: []tarEntry{hardlink("x", "../../etc/shadow")}, wantErr: true},
		{name: "dotdot inside", entries: []tarEntry{file("a/../b", 0o644, "x")}, check: func(t *testing.T, tr *tree) {
			if tr.root.children["b"] == nil {
				t.Error("a/../b not created as b")
			}
		}},
		{name: "absolute symlink parent stays inside", entries: []tarEntry{
			symlink("escape", "/../../../tmp"), file("escape/pwned", 0o644, "x"),
		}, check: func(t *testing.T, tr *tree) {
			if tr.root.children["tmp"] == nil || tr.root.children["tmp"].children["pwned"] == nil {
				t.Error("write through an absolute symlink did not land inside the tree at /tmp")
			}
		}},
		{name: "relative symlink parent stays inside", entries: []tarEntry{
			dir("d", 0o755, 0, 0), symlink("d/up", "../../.."), file("d/up/x", 0o644, "x"),
		}, check: func(t *testing.T, tr *tree) {
			if tr.root.children["x"] == nil {
				t.Error("write through ../../.. did not stop at the root")
			}
		}},
		{name: "symlink loop", entries: []tarEntry{symlink("a", "b"), symlink("b", "a"), file("a/x", 0o644, "x")}, wantErr: true},
		{name: "file as parent", entries: []tarEntry{file("f", 0o644, "x"), file("f/x", 0o644, "x")}, wantErr: true},
		{name: "hard link to missing", entries: []tarEntry{hardlink("x", "nothere")}, wantErr: true},
		{name: "hard link to dir", entries: []tarEntry{dir("d", 0o755, 0, 0), hardlink("x", "d")}, wantErr: true},
		{name: "dir replaces file", entries: []tarEntry{file("p", 0o644, "x"), dir("p", 0o700, 0, 0), file("p/q", 0o644, "y")}, check: func(t *testing.T, tr *tree) {
			if p := tr.root.children["p"]; p == nil || !p.isDir() || p.children["q"] == nil {
				t.Error("directory did not replace the file")
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := newBudget(&Options{})
			must(t, err)
			tr := newTree(t.TempDir(), b)
			err = tr.applyLayer(context.Background(), bytes.NewReader(layerTar(t, tc.entries)), 1)
			if tc.wantErr {
				if !errors.Is(err, ErrLayer) {
					t.Fatalf("got %v, want ErrLayer", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, tr)
		})
	}
}

type memWS struct {
	b   []byte
	pos int64
}

func (m *memWS) Write(p []byte) (int, error) {
	if need := m.pos + int64(len(p)); need > int64(len(m.b)) {
		m.b = append(m.b, make([]byte, need-int64(len(m.b)))...)
	}
	copy(m.b[m.pos:], p)
	m.pos += int64(len(p))
	return len(p), nil
}

func (m *memWS) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
		m.pos = off
	case io.SeekCurrent:
		m.pos += off
	default:
		m.pos = int64(len(m.b)) + off
	}
	return m.pos, nil
}
