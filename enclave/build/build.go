package build

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/cloister/cloister/enclave/eif"
	"github.com/cloister/cloister/internal/cpio"
)

// Result describes a built image.
type Result struct {
	Measurements eif.Measurements
	Metadata     eif.Metadata
	// NoKernel is true when the image carries eif.NoKernelMarker instead of a kernel.
	NoKernel bool
	// Size is the EIF's size in bytes.
	Size int64
}

// BuildTool is the metadata BuildTool value.
const BuildTool = "cloister"

func toolVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

// BuildFile builds the image into the file at path: it writes a temporary
// file in the same directory and renames it into place on success.
func BuildFile(ctx context.Context, src Source, path string, opts Options) (*Result, error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return nil, fmt.Errorf("build: output: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	res, err := Build(ctx, src, f, opts)
	if err != nil {
		return nil, err
	}
	if err := f.Chmod(0o644); err != nil {
		return nil, fmt.Errorf("build: output: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("build: output: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return nil, fmt.Errorf("build: output: %w", err)
	}
	ok = true
	return res, nil
}

// Build reads src, assembles the two ramdisks and streams the EIF to out
// (see the package documentation for the layout). It honours ctx between
// layers and layer entries.
func Build(ctx context.Context, src Source, out io.WriteSeeker, opts Options) (*Result, error) {
	if (opts.SigningCert == nil) != (opts.SigningKey == nil) {
		return nil, fmt.Errorf("%w: a signing certificate and a private key go together", ErrOptions)
	}
	initBin, err := opts.initBinary()
	if err != nil {
		return nil, err
	}
	custom, err := opts.customMetadata()
	if err != nil {
		return nil, err
	}
	k, err := opts.resolveKernel()
	if err != nil {
		return nil, err
	}
	bootstrap, err := bootstrapFiles(initBin, opts.KernelModules)
	if err != nil {
		return nil, err
	}
	budget, err := newBudget(&opts)
	if err != nil {
		return nil, err
	}
	platform := v1.Platform{OS: "linux", Architecture: "amd64"}
	if k.arm64 {
		platform.Architecture = "arm64"
	}
	opts.progressf("resolving %s", src)
	res, err := src.resolve(ctx, platform)
	if err != nil {
		return nil, err
	}
	epoch, err := opts.sourceDateEpoch(res.created.Time)
	if err != nil {
		return nil, err
	}

	staging, err := os.MkdirTemp(opts.TempDir, "cloister-build-")
	if err != nil {
		return nil, fmt.Errorf("build: staging directory: %w", err)
	}
	defer os.RemoveAll(staging)

	var (
		rootfs []cpio.File // from a rootfs directory, or
		t      *tree       // from image layers
	)
	if res.rootfs != "" {
		rootfs, err = cpio.CollectTree(res.rootfs, cpio.TreeOptions{Prefix: rootfsDir, KeepOwner: true})
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrSource, err)
		}
		// The image root is / in the enclave: 0755 root:root whatever the
		// directory's own mode (often 0700 for temporary directories).
		for i := range rootfs {
			if rootfs[i].Path == rootfsDir {
				rootfs[i].Mode, rootfs[i].UID, rootfs[i].GID = cpio.TypeDir|0o755, 0, 0
			}
		}
	} else {
		t = newTree(staging, budget)
		if err := applyLayers(ctx, t, res.layers, &opts); err != nil {
			return nil, err
		}
		t.addMountPoints()
	}
	cmd, err := command(res.config, opts.Cmd)
	if err != nil {
		return nil, err
	}
	env, err := environment(res.config.Env, opts.Env)
	if err != nil {
		return nil, err
	}
	workdir, user := res.config.WorkingDir, res.config.User
	if opts.WorkingDir != "" {
		workdir = opts.WorkingDir
	}
	if opts.User != "" {
		user = opts.User
	}
	top := topFiles(cmd, env, workdir, user)

	md := eif.Metadata{
		ImageName:    res.name,
		ImageVersion: strings.TrimPrefix(res.id, "sha256:"),
		BuildMetadata: eif.BuildMetadata{
			BuildTime:        epoch.Format("2006-01-02T15:04:05+00:00"),
			BuildTool:        BuildTool,
			BuildToolVersion: toolVersion(),
			OperatingSystem:  k.osName,
			KernelVersion:    k.version,
		},
		DockerInfo:     res.docker,
		CustomMetadata: custom,
	}
	if opts.Name != "" {
		md.ImageName = opts.Name
	}
	if opts.Version != "" {
		md.ImageVersion = opts.Version
	}
	mdBytes, err := eif.MarshalMetadata(&md)
	if err != nil {
		return nil, err
	}

	var flags uint16
	if k.arm64 {
		flags = eif.FlagArm64
	}
	wp := opts.byteProgress("writing the EIF")
	w, err := eif.NewWriter(wp.writeSeeker(out), eif.WriterOptions{Flags: flags})
	if err != nil {
		return nil, err
	}
	var kr io.Reader = bytes.NewReader(k.data)
	if k.data == nil {
		f, err := os.Open(k.path)
		if err != nil {
			return nil, fmt.Errorf("%w: kernel: %w", ErrOptions, err)
		}
		defer f.Close()
		kr = f
	}
	if _, err := w.WriteSection(eif.SectionKernel, kr); err != nil {
		return nil, err
	}
	if _, err := w.WriteSection(eif.SectionCmdline, strings.NewReader(k.cmdline)); err != nil {
		return nil, err
	}
	if _, err := w.WriteSection(eif.SectionMetadata, bytes.NewReader(mdBytes)); err != nil {
		return nil, err
	}
	if err := writeRamdisk(w, bootstrap, epoch, 1); err != nil {
		return nil, fmt.Errorf("build: bootstrap ramdisk: %w", err)
	}
	var entries int
	if t == nil {
		customer := customerFiles(rootfs, top)
		entries = len(customer)
		err = writeRamdisk(w, customer, epoch, uint32(len(bootstrap)+1))
	} else {
		entries, err = writeTreeRamdisk(w, t, top, epoch, uint32(len(bootstrap)+1))
	}
	if err != nil {
		return nil, fmt.Errorf("build: customer ramdisk: %w", err)
	}
	opts.progressf("wrote the customer ramdisk (%d entries)", entries)
	if opts.SigningKey != nil {
		if err := w.Sign(opts.SigningCert, opts.SigningKey); err != nil {
			return nil, err
		}
	}
	m, err := w.Close()
	if err != nil {
		return nil, err
	}
	wp.done()
	end, err := out.Seek(0, io.SeekCurrent)
	if err != nil {
		return nil, fmt.Errorf("build: output: %w", err)
	}
	opts.progressf("wrote %d bytes", end)
	return &Result{Measurements: m, Metadata: md, NoKernel: k.noKernel, Size: end}, nil
}

func writeRamdisk(w *eif.Writer, files []cpio.File, epoch time.Time, firstIno uint32) error {
	dst, err := w.BeginSection(eif.SectionRamdisk)
	if err != nil {
		return err
	}
	cw := cpio.NewWriter(dst)
	if err := cpio.WriteFiles(cw, files, cpio.FilesOptions{Mtime: epoch, FirstIno: firstIno}); err != nil {
		return err
	}
	if err := cw.Close(); err != nil {
		return err
	}
	return w.EndSection()
}

// writeTreeRamdisk writes the customer ramdisk of an image built from
// layers: the files top (regular files beside rootfs/) and the tree below
// rootfs/, in path order, inodes numbered from firstIno. It returns the
// number of entries.
func writeTreeRamdisk(w *eif.Writer, t *tree, top []cpio.File, epoch time.Time, firstIno uint32) (int, error) {
	mtime, err := cpio.MtimeSeconds(epoch)
	if err != nil {
		return 0, err
	}
	var before, after []cpio.File
	for _, f := range top {
		if f.Path < rootfsDir {
			before = append(before, f)
		} else {
			after = append(after, f)
		}
	}
	dst, err := w.BeginSection(eif.SectionRamdisk)
	if err != nil {
		return 0, err
	}
	cw := cpio.NewWriter(dst)
	if err := cpio.WriteFiles(cw, before, cpio.FilesOptions{Mtime: epoch, FirstIno: firstIno}); err != nil {
		return 0, err
	}
	ino, n, err := t.writeTree(cw, rootfsDir, mtime, firstIno+uint32(len(before)))
	if err != nil {
		return 0, err
	}
	if err := cpio.WriteFiles(cw, after, cpio.FilesOptions{Mtime: epoch, FirstIno: ino}); err != nil {
		return 0, err
	}
	if err := cw.Close(); err != nil {
		return 0, err
	}
	return len(top) + n, w.EndSection()
}

// applyLayers applies the layers in order. Each blob is decompressed
// according to its magic number (see decompress), and the decompressed
// bytes of all layers together are counted against Options.MaxImageSize.
func applyLayers(ctx context.Context, t *tree, layers []layer, opts *Options) error {
	for i, l := range layers {
		if err := ctx.Err(); err != nil {
			return err
		}
		lp := opts.byteProgress(fmt.Sprintf("applying layer %d/%d %s", i+1, len(layers), l.desc))
		if err := applyLayer(ctx, t, l, i+1, lp); err != nil {
			return err
		}
	}
	return nil
}

// applyLayer applies layer n, reporting its extracted and stored
// (compressed) bytes on p once it is applied.
func applyLayer(ctx context.Context, t *tree, l layer, n int, p *byteProgress) error {
	blob, err := l.open()
	if err != nil {
		return fmt.Errorf("%w: layer %d: %w", ErrSource, n, err)
	}
	defer blob.Close()
	r, done, err := decompress(p.storedReader(blob))
	if err != nil {
		return fmt.Errorf("layer %d: %w", n, err)
	}
	defer done()
	cr := &countingReader{r: p.reader(r), b: t.budget}
	if err := t.applyLayer(ctx, cr, n); err != nil {
		return err
	}
	// Read the blob to its end, through the budget: the tar archive ends
	// before the blob does (padding, compression trailers), and a
	// registry blob's digest and size are only checked at its end.
	if _, err := io.Copy(io.Discard, cr); err != nil {
		return fmt.Errorf("%w: layer %d, after its tar archive: %w", ErrLayer, n, err)
	}
	p.done()
	return nil
}

// command combines the image's Entrypoint and Cmd as Docker does; cmd
// (when non-nil) replaces the image's Cmd.
func command(c v1.Config, override []string) ([]string, error) {
	args := append([]string(nil), c.Entrypoint...)
	if override != nil {
		args = append(args, override...)
	} else {
		args = append(args, c.Cmd...)
	}
	if len(args) == 0 || args[0] == "" {
		return nil, fmt.Errorf("%w: it sets no Entrypoint or Cmd; pass a command (--cmd)", ErrNoCommand)
	}
	for _, a := range args {
		if strings.ContainsAny(a, "\n\x00") {
			return nil, fmt.Errorf("%w: command argument %q contains a newline or NUL, which the cmd file cannot represent", ErrOptions, a)
		}
	}
	return args, nil
}

// environment merges image variables with overrides (same name: the
// override's value at the image variable's position).
func environment(image, override []string) ([]string, error) {
	var env []string
	index := map[string]int{}
	for _, list := range [][]string{image, override} {
		for _, kv := range list {
			name, _, ok := strings.Cut(kv, "=")
			if !ok || name == "" || strings.ContainsAny(kv, "\n\x00") {
				return nil, fmt.Errorf("%w: environment entry %q is not NAME=value on one line", ErrOptions, kv)
			}
			if i, dup := index[name]; dup {
				env[i] = kv
				continue
			}
			index[name] = len(env)
			env = append(env, kv)
		}
	}
	return env, nil
}

func lines(l []string) string {
	var b strings.Builder
	for _, s := range l {
		b.WriteString(s)
		b.WriteByte('\n')
	}
	return b.String()
}

func contentFile(p string, mode uint32, s string) cpio.File {
	return cpio.File{Path: p, Mode: cpio.TypeReg | mode, Size: int64(len(s)),
		Open: func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(s)), nil }}
}

// bootstrapFiles returns ramdisk 0: dev/, init and the kernel modules.
func bootstrapFiles(initBin []byte, modules []string) ([]cpio.File, error) {
	files := []cpio.File{
		{Path: "dev", Mode: cpio.TypeDir | 0o755},
		{Path: "init", Mode: cpio.TypeReg | 0o755, Size: int64(len(initBin)),
			Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(initBin)), nil }},
	}
	if len(modules) == 0 {
		return files, nil
	}
	files = append(files, cpio.File{Path: "modules", Mode: cpio.TypeDir | 0o755})
	seen := map[string]bool{}
	var order []string
	for _, m := range modules {
		base := filepath.Base(m)
		if base == "order" || base == "." || base == "/" || seen[base] {
			return nil, fmt.Errorf("%w: kernel module %q: duplicate or reserved file name", ErrOptions, m)
		}
		seen[base] = true
		fi, err := os.Stat(m)
		if err != nil {
			return nil, fmt.Errorf("%w: kernel module: %w", ErrOptions, err)
		}
		if !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("%w: kernel module %s is not a regular file", ErrOptions, m)
		}
		src := m
		files = append(files, cpio.File{Path: "modules/" + base, Mode: cpio.TypeReg | 0o644, Size: fi.Size(),
			Open: func() (io.ReadCloser, error) { return os.Open(src) }})
		order = append(order, base)
	}
	files = append(files, contentFile("modules/order", 0o644, lines(order)))
	return files, nil
}

// topFiles returns the customer ramdisk's files beside rootfs/: cmd, env
// and, when set, workdir and user.
func topFiles(cmd, env []string, workdir, user string) []cpio.File {
	files := []cpio.File{contentFile("cmd", 0o644, lines(cmd)), contentFile("env", 0o644, lines(env))}
	if workdir != "" {
		files = append(files, contentFile("workdir", 0o644, workdir+"\n"))
	}
	if user != "" {
		files = append(files, contentFile("user", 0o644, user+"\n"))
	}
	return files
}

// customerFiles returns ramdisk 1 for a rootfs directory: rootfs/ with the
// mountPoints it lacks, and top.
func customerFiles(rootfs, top []cpio.File) []cpio.File {
	files := append([]cpio.File(nil), rootfs...)
	have := map[string]bool{}
	for _, f := range rootfs {
		have[f.Path] = true
	}
	if !have[rootfsDir] {
		files = append(files, cpio.File{Path: rootfsDir, Mode: cpio.TypeDir | 0o755})
	}
	for _, m := range mountPoints {
		if p := rootfsDir + "/" + m.name; !have[p] {
			files = append(files, cpio.File{Path: p, Mode: cpio.TypeDir | m.mode})
		}
	}
	return append(files, top...)
}
