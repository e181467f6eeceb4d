package nitro

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"

	"github.com/cloister/cloister/internal/wellknown"
	"github.com/cloister/cloister/parent/backend"
	"github.com/cloister/cloister/parent/doctor"
	"github.com/cloister/cloister/parent/nitro/hugepage"
	"github.com/cloister/cloister/parent/nitro/nedev"
)

// Errors of this package; step failures are [*backend.StepError]s wrapping the
// cause (a nedev, hugepage or eif error, or one of these).
var (
	// ErrInsufficientMemory means the requested memory is below nitro-cli's
	// rule of 4 × the EIF file size.
	ErrInsufficientMemory = errors.New("nitro: not enough memory for the image")
)

// ImageFile is how a launch reads the image; *os.File satisfies it.
type ImageFile interface {
	io.ReaderAt
	io.Closer
	Stat() (fs.FileInfo, error)
}

// Config configures the backend. The zero value runs against the real
// driver, hugetlb mmap and AF_VSOCK.
type Config struct {
	// DevicePath is the driver's device (default /dev/nitro_enclaves).
	DevicePath string
	// OpenDevice opens the device (default nedev.Open).
	OpenDevice nedev.Opener
	// Mapper maps hugepages (default hugepage.Mmap).
	Mapper hugepage.Mapper
	// PageSizes are the hugepage sizes to try (default
	// hugepage.DefaultPageSizes).
	PageSizes []uint64
	// Vsock provides AF_VSOCK (default AFVsock).
	Vsock Vsock
	// WrapImage, when set, wraps the image the launch reads (spec.Image),
	// for tests that inject read failures.
	WrapImage func(*os.File) ImageFile
	// Host is how Check sees the machine (default: the real host).
	Host doctor.Host
	// Logger receives diagnostics (default: discarded).
	Logger *slog.Logger
}

// Backend launches enclaves through the nitro_enclaves driver. It
// implements backend.Backend.
type Backend struct {
	cfg Config
}

var _ backend.Backend = (*Backend)(nil)

// New returns a Backend for cfg with defaults filled in.
func New(cfg Config) *Backend {
	if cfg.DevicePath == "" {
		cfg.DevicePath = nedev.DevicePath
	}
	if cfg.OpenDevice == nil {
		cfg.OpenDevice = nedev.Open
	}
	if cfg.Mapper == nil {
		cfg.Mapper = hugepage.Mmap{}
	}
	if len(cfg.PageSizes) == 0 {
		cfg.PageSizes = hugepage.DefaultPageSizes
	}
	if cfg.Vsock == nil {
		cfg.Vsock = AFVsock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Backend{cfg: cfg}
}

// Kind returns backend.KindNitro. A Nitro enclave has a real security
// module and AF_VSOCK, and needs a kernel: it has no [backend.Capabilities].
func (b *Backend) Kind() backend.Kind { return backend.KindNitro }

// Check runs the nitro checks of `cloister doctor` (device present and
// openable, non-empty ne_cpus pool, hugepages reserved, /dev/vsock, root)
// and returns an error wrapping backend.ErrUnavailable that lists every
// missing prerequisite with its fix.
func (b *Backend) Check(ctx context.Context) error {
	h := b.cfg.Host
	// Only the nitro checks matter here: keep doctor from running QEMU.
	h.LookPath = func(string) (string, error) { return "", exec.ErrNotFound }
	rep := doctor.Run(ctx, h)
	var missing []string
	for _, c := range rep.Checks {
		if (c.Backend == "nitro" || c.Backend == "all") && c.Status == doctor.Missing {
			s := c.Name + ": " + c.Detail
			if c.Fix != "" {
				s += " (fix: " + c.Fix + ")"
			}
			missing = append(missing, s)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: nitro: %s", backend.ErrUnavailable, strings.Join(missing, "; "))
	}
	return nil
}

// HostListen listens on the parent's vsock (CID 3, port) for the enclave of
// spec. Connections from any other CID are closed: on Nitro every enclave
// reaches the same parent port, so a port can be held by one enclave's
// monitor at a time, and the heartbeat must come from the enclave itself.
func (b *Backend) HostListen(ctx context.Context, spec backend.Spec, port uint32) (net.Listener, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	l, err := b.cfg.Vsock.Listen(wellknown.ParentCID, port)
	if err != nil {
		return nil, fmt.Errorf("nitro: listen on vsock %d:%d: %w", wellknown.ParentCID, port, err)
	}
	log := b.cfg.Logger
	return &cidListener{Listener: l, cid: spec.CID, rejected: func(from uint32) {
		log.Warn("closed a connection from another enclave", "port", port, "from_cid", from, "enclave_cid", spec.CID)
	}}, nil
}
