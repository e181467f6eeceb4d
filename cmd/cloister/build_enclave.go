package main

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/cloister/cloister/enclave/build"
	"github.com/cloister/cloister/enclave/eif"
	"github.com/cloister/cloister/internal/installdir"
	"github.com/cloister/cloister/internal/kmod"
)

func init() { register(newBuildEnclaveCmd) }

func newBuildEnclaveCmd() *cobra.Command {
	var (
		output, dockerURI, archive, ociLayout, rootfs string
		kernel, cmdline, initPath, name, version      string
		metadataFile, certFile, keyFile               string
		cmdArgs, env, modules                         []string
		modulesDir                                    string
		maxImageSize                                  = byteSize(build.DefaultMaxImageSize)
		maxEntries                                    int64
	)
	cmd := &cobra.Command{
		Use:   "build-enclave",
		Short: "Build an enclave image file (EIF) from a container image, without Docker",
		Long: `build-enclave builds a reproducible EIF with nitro-cli's layout and measurements
from a registry image (--docker-uri, pulled without a Docker daemon), a
"docker save" archive, an OCI layout directory or a root file system directory.
It prints {"Measurements":{...}} like nitro-cli build-enclave.

The command is the image's Entrypoint followed by its Cmd; each --cmd flag gives
one argument that replaces the image's Cmd (use --cmd=--flag for arguments that
start with a dash). Kernel and command line default to bzImage and cmdline in
$CLOISTER_BLOBS or /usr/share/nitro_enclaves/blobs; without them the image has
no kernel and can only run in the process sandbox. For the QEMU microVM backend
with a distribution kernel, --kernel-modules-dir adds the modules it needs (vsock,
and cuse for the guest's /dev/nsm):

  KVER=6.1.0-56-cloud-amd64   # an installed linux-image-cloud-amd64
  cloister build-enclave --rootfs app/ --output-file app.eif \
    --kernel /boot/vmlinuz-$KVER --kernel-modules-dir /lib/modules/$KVER

` + fmt.Sprintf(`Image layers are untrusted input. The build stops with an error when they
exceed --max-image-size (their data after decompression, or the files they
create with sparse files at full size; default %s) or --max-entries (layer
entries plus the parent directories they imply; default %d), when a path
is longer than %d bytes or a file name longer than %d, and when a zstd
layer asks for a window above %d MiB. Raise the caps only for images you
trust; they do not apply to --rootfs.`, byteSize(build.DefaultMaxImageSize), build.DefaultMaxEntries,
			build.MaxPathLen, build.MaxNameLen, build.MaxZstdWindow>>20),
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var src build.Source
			switch {
			case dockerURI != "":
				src = build.FromRegistry(dockerURI)
			case archive != "":
				tag := ""
				if _, err := os.Stat(archive); err != nil && strings.Contains(archive, "@") {
					i := strings.LastIndex(archive, "@")
					archive, tag = archive[:i], archive[i+1:]
				}
				src = build.FromDockerArchive(archive, tag)
			case ociLayout != "":
				src = build.FromOCILayout(ociLayout)
			default:
				src = build.FromRootFS(rootfs)
			}
			if modulesDir != "" {
				// The vsock modules a stock distribution kernel needs in a
				// microVM, resolved with their dependencies, before any
				// --kernel-module given explicitly.
				vm, err := kmod.MicroVMModules(modulesDir)
				if err != nil {
					return withExit(1, fmt.Errorf("--kernel-modules-dir: %w", err))
				}
				modules = append(vm, modules...)
			}
			opts := build.Options{
				Kernel: kernel, Cmdline: cmdline, KernelModules: modules,
				Env: env, Name: name, Version: version,
				MaxImageSize: int64(maxImageSize), MaxEntries: maxEntries,
			}
			if cmd.Flags().Changed("cmd") {
				opts.Cmd = cmdArgs
			}
			var err error
			if opts.InitPath, err = findInit(initPath); err != nil {
				return withExit(1, err)
			}
			if metadataFile != "" {
				if opts.Metadata, err = readLimited(metadataFile, eif.MaxCustomMetadata); err != nil {
					return withExit(1, fmt.Errorf("--metadata: %w", err))
				}
			}
			if certFile != "" {
				if opts.SigningCert, opts.SigningKey, err = loadSigner(certFile, keyFile); err != nil {
					return withExit(1, err)
				}
			}
			if f, ok := cmd.ErrOrStderr().(*os.File); ok && term.IsTerminal(int(f.Fd())) {
				opts.Progress = f
			}
			ctx, cancel := signalContext(cmd.Context())
			defer cancel()
			res, err := build.BuildFile(ctx, src, output, opts)
			if le := (*build.LimitError)(nil); errors.As(err, &le) {
				// The same facts, with the flag that sets the cap.
				limit := fmt.Sprintf("--max-entries=%d", le.Limit)
				if le.Option == "MaxImageSize" {
					limit = fmt.Sprintf("--max-image-size=%s (%d bytes)", byteSize(le.Limit), le.Limit)
				}
				return withExit(1, fmt.Errorf("build-enclave: %w: layer %d: %s exceed %s; raise it only for an image you trust",
					build.ErrTooLarge, le.Layer, le.What, limit))
			}
			if err != nil {
				return withExit(1, fmt.Errorf("build-enclave: %w", err))
			}
			if res.NoKernel {
				fmt.Fprintf(cmd.ErrOrStderr(), "cloister: note: no enclave kernel found (set CLOISTER_BLOBS or --kernel); %s runs only in the process sandbox\n", output)
			}
			return printJSON(cmd.OutOrStdout(), eif.BuildInfo{Measurements: res.Measurements}, nitroJSON)
		},
	}
	f := cmd.Flags()
	f.StringVar(&output, "output-file", "", "path of the EIF to write (required)")
	f.StringVar(&dockerURI, "docker-uri", "", "registry image reference to pull, e.g. docker.io/library/alpine:3.20")
	f.StringVar(&archive, "docker-archive", "", "a \"docker save\" archive; append @repo:tag to choose an image")
	f.StringVar(&ociLayout, "oci-layout", "", "OCI image layout directory")
	f.StringVar(&rootfs, "rootfs", "", "root file system directory (requires --cmd)")
	f.StringVar(&kernel, "kernel", "", "enclave kernel (default: bzImage in $CLOISTER_BLOBS or /usr/share/nitro_enclaves/blobs)")
	f.StringVar(&cmdline, "cmdline", "", "kernel command line (default: the blobs cmdline file, else nitro-cli's)")
	f.StringVar(&initPath, "init", "", "cloister-init binary (default: next to this executable, else in ../lib/cloister, else on PATH, else $CLOISTER_INIT)")
	f.StringArrayVar(&cmdArgs, "cmd", nil, "one argument of the command replacing the image's Cmd (repeatable)")
	f.StringArrayVar(&env, "env", nil, "NAME=value added to the image environment (repeatable)")
	f.StringArrayVar(&modules, "kernel-module", nil, "kernel module file loaded at boot, in order (repeatable)")
	f.StringVar(&modulesDir, "kernel-modules-dir", "", "a kernel's /lib/modules/<version> directory: adds the virtio-mmio, vsock and cuse modules a microVM needs (for distribution kernels such as Debian's cloud kernel)")
	f.StringVar(&name, "name", "", "image name in the metadata (default: the image reference)")
	f.StringVar(&version, "version", "", "image version in the metadata (default: the image ID)")
	f.StringVar(&metadataFile, "metadata", "", "JSON file (an object, at most 4096 bytes) stored as custom metadata")
	f.StringVar(&certFile, "signing-certificate", "", "PEM certificate to sign the image with")
	f.StringVar(&keyFile, "private-key", "", "PEM EC private key matching --signing-certificate")
	f.Var(&maxImageSize, "max-image-size", "cap on the image layers' data after decompression and on the files they create (sparse files at full size), e.g. 8GiB")
	f.Int64Var(&maxEntries, "max-entries", build.DefaultMaxEntries, "cap on the number of layer entries plus the parent directories they imply")
	_ = cmd.MarkFlagRequired("output-file")
	cmd.MarkFlagsOneRequired("docker-uri", "docker-archive", "oci-layout", "rootfs")
	cmd.MarkFlagsMutuallyExclusive("docker-uri", "docker-archive", "oci-layout", "rootfs")
	cmd.MarkFlagsRequiredTogether("signing-certificate", "private-key")
	return cmd
}

// byteSize is a flag value in bytes, written with an optional binary unit
// suffix: K, M, G or T, alone or followed by "iB" (4G = 4GiB = 4294967296).
type byteSize int64

var byteUnits = []struct {
	suffix string
	shift  uint
}{{"T", 40}, {"G", 30}, {"M", 20}, {"K", 10}}

func (b byteSize) String() string {
	for _, u := range byteUnits {
		if n := int64(b); n > 0 && n%(1<<u.shift) == 0 {
			return strconv.FormatInt(n>>u.shift, 10) + u.suffix + "iB"
		}
	}
	return strconv.FormatInt(int64(b), 10)
}

func (b *byteSize) Set(s string) error {
	num, shift := s, uint(0)
	for _, u := range byteUnits {
		if t, ok := strings.CutSuffix(s, u.suffix+"iB"); ok {
			num, shift = t, u.shift
			break
		}
		if t, ok := strings.CutSuffix(s, u.suffix); ok {
			num, shift = t, u.shift
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 || n > math.MaxInt64>>shift {
		return fmt.Errorf("%q is not a positive number of bytes, optionally with a K, M, G or T (or KiB, MiB, GiB, TiB) suffix", s)
	}
	*b = byteSize(n << shift)
	return nil
}

func (b *byteSize) Type() string { return "bytes" }

// findInit locates cloister-init: the flag, else next to the running
// executable, else in ../lib/cloister relative to it, else on PATH, else
// $CLOISTER_INIT.
func findInit(flag string) (string, error) {
	if flag != "" {
		return flag, nil
	}
	if p := installdir.Find("cloister-init"); p != "" {
		return p, nil
	}
	if p, err := exec.LookPath("cloister-init"); err == nil {
		return p, nil
	}
	if p := os.Getenv("CLOISTER_INIT"); p != "" {
		return p, nil
	}
	return "", errors.New("cloister-init not found next to this executable, in ../lib/cloister, on PATH or in $CLOISTER_INIT; " +
		"build it with: CGO_ENABLED=0 go build -o \"$(dirname \"$(command -v cloister)\")/cloister-init\" ./cmd/cloister-init, or pass --init")
}

// readLimited reads a file of at most max bytes.
func readLimited(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, max)
	}
	return b, nil
}

// loadSigner reads a PEM certificate file and a PEM EC private key file.
func loadSigner(certFile, keyFile string) ([]byte, crypto.Signer, error) {
	if strings.HasPrefix(keyFile, "arn:") {
		return nil, nil, fmt.Errorf("--private-key %s: signing with a KMS key is not supported yet; export a local EC key in PEM", keyFile)
	}
	certPEM, err := readLimited(certFile, eif.MaxSignatureSize)
	if err != nil {
		return nil, nil, fmt.Errorf("--signing-certificate: %w", err)
	}
	if _, err := eif.ParseCertificate(certPEM); err != nil {
		return nil, nil, fmt.Errorf("--signing-certificate %s: %w", certFile, err)
	}
	kb, err := readLimited(keyFile, 1<<16)
	if err != nil {
		return nil, nil, fmt.Errorf("--private-key: %w", err)
	}
	blk, _ := pem.Decode(kb)
	if blk == nil {
		return nil, nil, fmt.Errorf("--private-key %s: no PEM block found", keyFile)
	}
	var key any
	switch blk.Type {
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(blk.Bytes)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
	default:
		err = fmt.Errorf("PEM block %q, want EC PRIVATE KEY or PRIVATE KEY", blk.Type)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("--private-key %s: %w", keyFile, err)
	}
	s, ok := key.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("--private-key %s: not a signing key", keyFile)
	}
	return certPEM, s, nil
}
