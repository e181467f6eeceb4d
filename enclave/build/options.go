package build

import (
	"bytes"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/cloister/cloister/enclave/eif"
)

// Errors returned by Build; each error wraps one of these.
var (
	// ErrOptions reports invalid or inconsistent options.
	ErrOptions = errors.New("build: invalid options")
	// ErrSource reports a source image that cannot be read or resolved.
	ErrSource = errors.New("build: cannot read the source image")
	// ErrLayer reports a layer entry that is unsafe or malformed.
	ErrLayer = errors.New("build: bad layer entry")
	// ErrNoCommand reports an image without a command and no Options.Cmd.
	ErrNoCommand = errors.New("build: the image has no command")
)

// DefaultBlobsDir is nitro-cli's blobs directory, used when $CLOISTER_BLOBS is unset.
const DefaultBlobsDir = "/usr/share/nitro_enclaves/blobs"

// DefaultCmdline is nitro-cli's x86_64 kernel command line (blobs/cmdline).
const DefaultCmdline = "reboot=k panic=30 pci=off nomodules console=ttyS0 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd random.trust_cpu=on"

// DefaultCmdlineArm64 is nitro-cli's aarch64 kernel command line.
const DefaultCmdlineArm64 = "reboot=k panic=30 pci=off nomodules console=ttyS0 random.trust_cpu=on root=/dev/ram0"

// NoHeartbeatSwitch is the kernel command-line switch that makes
// cloister-init skip the boot heartbeat. Only the QEMU boot test may use it
// (Options.AllowNoHeartbeat); images built for Nitro never carry it.
const NoHeartbeatSwitch = "cloister.no_heartbeat=1"

// Options configures [Build]. Only one of Init and InitPath is required;
// every other field has a documented default.
type Options struct {
	// Kernel is the enclave kernel (bzImage, or an arm64 Image). Default:
	// bzImage (or Image on arm64) in $CLOISTER_BLOBS, else in
	// DefaultBlobsDir, when present; otherwise the image has no kernel
	// (eif.NoKernelMarker) unless RequireKernel is set.
	Kernel string
	// RequireKernel makes a missing kernel an error instead of producing a
	// kernel-less image.
	RequireKernel bool
	// Cmdline is the kernel command line. Default: the "cmdline" file next
	// to the kernel (trimmed) when present, else DefaultCmdline (or
	// DefaultCmdlineArm64 for an arm64 kernel).
	Cmdline string
	// AllowNoHeartbeat permits NoHeartbeatSwitch in Cmdline (QEMU boot test only).
	AllowNoHeartbeat bool
	// Init is the cloister-init binary placed at /init of the bootstrap
	// ramdisk; InitPath names a file holding it. One is required.
	Init     []byte
	InitPath string
	// KernelModules are module files placed at /modules/<base name> in the
	// bootstrap ramdisk, listed in this order in /modules/order.
	KernelModules []string
	// Cmd replaces the image's Cmd (the Entrypoint is kept in front).
	Cmd []string
	// Env adds NAME=value variables, replacing image variables of the same name.
	Env []string
	// WorkingDir and User, when not empty, replace the image's (an OCI
	// runtime bundle's process.cwd and user).
	WorkingDir, User string
	// Name and Version set the metadata ImageName and ImageVersion.
	// Defaults: the image reference without tag or digest (the directory
	// name for a rootfs) and the image ID without "sha256:".
	Name, Version string
	// Metadata is user JSON (an object, at most 4096 bytes) stored as
	// CustomMetadata.
	Metadata json.RawMessage
	// SourceDateEpoch fixes every timestamp. Default: $SOURCE_DATE_EPOCH,
	// else the image's creation time, else the Unix epoch.
	SourceDateEpoch *time.Time
	// Progress receives human-readable progress lines when non-nil.
	Progress io.Writer
	// SigningCert (PEM file bytes) and SigningKey sign the image (both or neither).
	SigningCert []byte
	SigningKey  crypto.Signer
	// TempDir is where file contents of image layers are staged; default os.TempDir().
	TempDir string
	// MaxImageSize caps, in bytes, both the layers' data after
	// decompression (all layers together) and the files they create in the
	// customer ramdisk (sparse files at their full size, plus each
	// entry's header and name), counting files later replaced or deleted.
	// Default DefaultMaxImageSize (4 GiB). It does not apply to FromRootFS.
	MaxImageSize int64
	// MaxEntries caps the number of layer entries, all layers together,
	// plus the parent directories they create implicitly. Default
	// DefaultMaxEntries (1,000,000). It does not apply to FromRootFS.
	MaxEntries int64
	// Getenv reads the environment ($CLOISTER_BLOBS, $SOURCE_DATE_EPOCH); default os.Getenv.
	Getenv func(string) string
}

func (o *Options) getenv(k string) string {
	if o.Getenv != nil {
		return o.Getenv(k)
	}
	return os.Getenv(k)
}

func (o *Options) progressf(format string, args ...any) {
	if o.Progress != nil {
		fmt.Fprintf(o.Progress, format+"\n", args...)
	}
}

// BlobsDir returns the kernel blobs directory: $CLOISTER_BLOBS if set, else DefaultBlobsDir.
func BlobsDir(getenv func(string) string) string {
	if getenv == nil {
		getenv = os.Getenv
	}
	if d := getenv("CLOISTER_BLOBS"); d != "" {
		return d
	}
	return DefaultBlobsDir
}

// kernelInfo is the resolved kernel configuration.
type kernelInfo struct {
	data     []byte // nil means: stream from path
	path     string
	size     int64
	cmdline  string
	arm64    bool
	noKernel bool
	osName   string // from <kernel>.config line 3
	version  string
}

func (o *Options) resolveKernel() (*kernelInfo, error) {
	k := &kernelInfo{}
	kpath := o.Kernel
	if kpath == "" {
		dir := BlobsDir(o.getenv)
		for _, n := range []string{"bzImage", "Image"} {
			if fi, err := os.Stat(filepath.Join(dir, n)); err == nil && fi.Mode().IsRegular() {
				kpath = filepath.Join(dir, n)
				break
			}
		}
	}
	if kpath == "" {
		if o.RequireKernel {
			return nil, fmt.Errorf("%w: no kernel given and none found in %s (set CLOISTER_BLOBS or pass a kernel)", ErrOptions, BlobsDir(o.getenv))
		}
		k.noKernel = true
		k.data = []byte(eif.NoKernelMarker)
		k.size = int64(len(k.data))
		k.arm64 = runtime.GOARCH == "arm64"
		k.osName, k.version = "none", "none"
	} else {
		f, err := os.Open(kpath)
		if err != nil {
			return nil, fmt.Errorf("%w: kernel: %w", ErrOptions, err)
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return nil, fmt.Errorf("%w: kernel: %w", ErrOptions, err)
		}
		var hdr [64]byte
		n, _ := io.ReadFull(f, hdr[:])
		// arm64 Image header: magic "ARM\x64" at offset 56.
		k.arm64 = n == 64 && string(hdr[56:60]) == "ARM\x64"
		k.path, k.size = kpath, fi.Size()
		k.osName, k.version = kernelConfigInfo(kpath + ".config")
	}
	switch {
	case o.Cmdline != "":
		k.cmdline = o.Cmdline
	default:
		k.cmdline = DefaultCmdline
		if k.arm64 {
			k.cmdline = DefaultCmdlineArm64
		}
		if kpath != "" {
			if b, err := os.ReadFile(filepath.Join(filepath.Dir(kpath), "cmdline")); err == nil {
				k.cmdline = strings.TrimSpace(string(b))
			}
		}
	}
	if strings.IndexByte(k.cmdline, 0) >= 0 {
		return nil, fmt.Errorf("%w: kernel command line contains a NUL byte", ErrOptions)
	}
	if !o.AllowNoHeartbeat {
		for _, f := range strings.Fields(k.cmdline) {
			if f == NoHeartbeatSwitch {
				return nil, fmt.Errorf("%w: %s is only for the QEMU boot test; remove it from the command line", ErrOptions, NoHeartbeatSwitch)
			}
		}
	}
	return k, nil
}

// kernelConfigInfo parses line 3 of a kernel .config ("# Linux/x86 6.6.79
// Kernel Configuration") into the operating system and kernel version, as
// nitro-cli does; "unknown" when unavailable.
func kernelConfigInfo(path string) (string, string) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "unknown", "unknown"
	}
	lines := strings.SplitN(string(b), "\n", 4)
	if len(lines) < 3 {
		return "unknown", "unknown"
	}
	f := strings.Fields(lines[2])
	if len(f) < 3 {
		return "unknown", "unknown"
	}
	return f[1], f[2]
}

func (o *Options) initBinary() ([]byte, error) {
	switch {
	case len(o.Init) > 0 && o.InitPath != "":
		return nil, fmt.Errorf("%w: give Init or InitPath, not both", ErrOptions)
	case len(o.Init) > 0:
		return o.Init, nil
	case o.InitPath != "":
		b, err := os.ReadFile(o.InitPath)
		if err != nil {
			return nil, fmt.Errorf("%w: init binary: %w", ErrOptions, err)
		}
		return b, nil
	}
	return nil, fmt.Errorf("%w: no init binary (build it with: CGO_ENABLED=0 go build -o cloister-init ./cmd/cloister-init)", ErrOptions)
}

func (o *Options) sourceDateEpoch(created time.Time) (time.Time, error) {
	if o.SourceDateEpoch != nil {
		return o.SourceDateEpoch.UTC(), nil
	}
	if s := o.getenv("SOURCE_DATE_EPOCH"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			return time.Time{}, fmt.Errorf("%w: SOURCE_DATE_EPOCH=%q is not a number of seconds", ErrOptions, s)
		}
		return time.Unix(n, 0).UTC(), nil
	}
	if !created.IsZero() && created.Unix() >= 0 {
		return created.UTC().Truncate(time.Second), nil
	}
	return time.Unix(0, 0).UTC(), nil
}

func (o *Options) customMetadata() (json.RawMessage, error) {
	m := bytes.TrimSpace(o.Metadata)
	if len(m) == 0 {
		return nil, nil
	}
	if len(o.Metadata) > eif.MaxCustomMetadata {
		return nil, fmt.Errorf("%w: metadata is %d bytes (max %d)", ErrOptions, len(o.Metadata), eif.MaxCustomMetadata)
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(m, &obj); err != nil {
		return nil, fmt.Errorf("%w: metadata must be a JSON object: %w", ErrOptions, err)
	}
	return m, nil
}
