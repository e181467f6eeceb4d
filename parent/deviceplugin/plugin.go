// Package deviceplugin makes a node's enclave capacity visible to the
// Kubernetes scheduler: a kubelet device plugin (API v1beta1) that
// advertises, from the local Cloister daemon's pool,
//
//   - aws.ec2.nitro/nitro_enclaves: how many enclaves may run at once (AWS's
//     resource name, so that manifests written for AWS's device plugin
//     keep working),
//   - cloister.dev/enclave-cpu: the pool's CPUs, one device each,
//   - cloister.dev/enclave-memory: the pool's memory, one device per
//     Config.MemoryUnitMiB.
//
// Allocation answers with annotations (cloister.dev/cpu-count,
// cloister.dev/memory-mib) that the containerd shim (parent/shim) sizes the
// enclave from when the container sets no limits, and, on a Nitro host,
// with /dev/nitro_enclaves for pods that run nitro-cli themselves.
package deviceplugin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	api "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/cloister/cloister/parent"
	"github.com/cloister/cloister/parent/shim"
)

// Resource names.
const (
	ResourceNitroEnclaves = "aws.ec2.nitro/nitro_enclaves"
	ResourceCPU           = "cloister.dev/enclave-cpu"
	ResourceMemory        = "cloister.dev/enclave-memory"
)

// Defaults of [Config].
const (
	DefaultMemoryUnitMiB = 128
	DefaultPoll          = 10 * time.Second
	nitroDevice          = "/dev/nitro_enclaves"
)

// Config configures [Run].
type Config struct {
	// Daemon is the local Cloister daemon, whose pool is advertised.
	Daemon *parent.Client
	// Dir is the kubelet's device-plugin directory, holding kubelet.sock
	// (default /var/lib/kubelet/device-plugins/).
	Dir string
	// Enclaves is the number of aws.ec2.nitro/nitro_enclaves devices
	// (default: one per CPU of the pool, the most enclaves it can hold).
	Enclaves int
	// MemoryUnitMiB is the memory of one cloister.dev/enclave-memory
	// device (default DefaultMemoryUnitMiB).
	MemoryUnitMiB int
	// Poll is how often the daemon's pool is read (default DefaultPoll).
	Poll time.Duration
	// Logger receives the plugin's log (default: discard).
	Logger *slog.Logger
	// DevNitro is the Nitro device passed to pods allocated
	// aws.ec2.nitro/nitro_enclaves when it exists (default /dev/nitro_enclaves).
	DevNitro string
}

// ErrNoKubelet: the kubelet's registration socket is missing or refuses.
var ErrNoKubelet = errors.New("deviceplugin: cannot register with the kubelet")

// plugin is one resource's device plugin.
type plugin struct {
	api.UnimplementedDevicePluginServer
	resource string
	cfg      *Config

	mu      sync.Mutex
	devices []*api.Device
	changed chan struct{} // closed and replaced on every change
}

func (p *plugin) set(devs []*api.Device) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if slices.EqualFunc(devs, p.devices, func(a, b *api.Device) bool { return a.ID == b.ID && a.Health == b.Health }) {
		return
	}
	p.devices = devs
	close(p.changed)
	p.changed = make(chan struct{})
}

func (p *plugin) snapshot() ([]*api.Device, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.devices, p.changed
}

func (p *plugin) GetDevicePluginOptions(context.Context, *api.Empty) (*api.DevicePluginOptions, error) {
	return &api.DevicePluginOptions{}, nil
}

// ListAndWatch sends the devices, then again whenever they change.
func (p *plugin) ListAndWatch(_ *api.Empty, s grpc.ServerStreamingServer[api.ListAndWatchResponse]) error {
	for {
		devs, changed := p.snapshot()
		if err := s.Send(&api.ListAndWatchResponse{Devices: devs}); err != nil {
			return err
		}
		select {
		case <-changed:
		case <-s.Context().Done():
			return nil
		}
	}
}

// Allocate answers each container's request with the annotations the
// shim sizes its enclave from.
func (p *plugin) Allocate(_ context.Context, r *api.AllocateRequest) (*api.AllocateResponse, error) {
	out := &api.AllocateResponse{}
	for _, c := range r.ContainerRequests {
		n := len(c.DevicesIds)
		resp := &api.ContainerAllocateResponse{}
		switch p.resource {
		case ResourceCPU:
			resp.Annotations = map[string]string{shim.AnnotationCPUs: strconv.Itoa(n)}
		case ResourceMemory:
			resp.Annotations = map[string]string{shim.AnnotationMemory: strconv.Itoa(n * p.cfg.MemoryUnitMiB)}
		case ResourceNitroEnclaves:
			if _, err := os.Stat(p.cfg.DevNitro); err == nil {
				resp.Devices = []*api.DeviceSpec{{ContainerPath: nitroDevice, HostPath: p.cfg.DevNitro, Permissions: "rw"}}
			}
		}
		out.ContainerResponses = append(out.ContainerResponses, resp)
	}
	return out, nil
}

func (p *plugin) PreStartContainer(context.Context, *api.PreStartContainerRequest) (*api.PreStartContainerResponse, error) {
	return &api.PreStartContainerResponse{}, nil
}

// devicesFor computes every resource's devices from the daemon's pool;
// all unhealthy when the daemon cannot be read.
func devicesFor(cfg *Config, info *parent.Info, prev map[string][]*api.Device) map[string][]*api.Device {
	if info == nil {
		out := map[string][]*api.Device{}
		for r, devs := range prev {
			for _, d := range devs {
				out[r] = append(out[r], &api.Device{ID: d.ID, Health: api.Unhealthy})
			}
		}
		return out
	}
	dev := func(id string) *api.Device { return &api.Device{ID: id, Health: api.Healthy} }
	var cpus, mem, encl []*api.Device
	for _, c := range info.CPUPool {
		cpus = append(cpus, dev("cpu"+strconv.Itoa(c)))
	}
	for i := range info.MemoryMiB / cfg.MemoryUnitMiB {
		mem = append(mem, dev("mem"+strconv.Itoa(i)))
	}
	n := cfg.Enclaves
	if n <= 0 {
		n = len(info.CPUPool)
	}
	for i := range n {
		encl = append(encl, dev("enclave"+strconv.Itoa(i)))
	}
	return map[string][]*api.Device{ResourceCPU: cpus, ResourceMemory: mem, ResourceNitroEnclaves: encl}
}

// socketName is a resource's socket in the device-plugin directory.
func socketName(resource string) string {
	return "cloister-" + strings.NewReplacer("/", "-", ".", "-").Replace(resource) + ".sock"
}

// Run serves the three device plugins in cfg.Dir, registers them with the
// kubelet, re-registers when the kubelet restarts (its socket is made
// anew), and refreshes the devices from the daemon every cfg.Poll, until
// ctx ends.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Daemon == nil {
		return errors.New("deviceplugin: no daemon client")
	}
	if cfg.Dir == "" {
		cfg.Dir = api.DevicePluginPath
	}
	if cfg.MemoryUnitMiB <= 0 {
		cfg.MemoryUnitMiB = DefaultMemoryUnitMiB
	}
	if cfg.Poll <= 0 {
		cfg.Poll = DefaultPoll
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.DevNitro == "" {
		cfg.DevNitro = nitroDevice
	}
	resources := []string{ResourceNitroEnclaves, ResourceCPU, ResourceMemory}
	plugins := map[string]*plugin{}
	for _, r := range resources {
		plugins[r] = &plugin{resource: r, cfg: &cfg, changed: make(chan struct{})}
	}
	refresh := func() {
		prev := map[string][]*api.Device{}
		for r, p := range plugins {
			prev[r], _ = p.snapshot()
		}
		info, err := cfg.Daemon.Info(ctx)
		var ip *parent.Info
		if err != nil {
			cfg.Logger.Warn("deviceplugin: read the daemon's pool; devices marked unhealthy", "err", err)
		} else {
			ip = &info
		}
		for r, devs := range devicesFor(&cfg, ip, prev) {
			plugins[r].set(devs)
		}
	}
	refresh()

	servers := map[string]*grpc.Server{}
	defer func() {
		for _, s := range servers {
			s.Stop()
		}
	}()
	// serve (re)starts the plugin servers whose socket is missing: the
	// kubelet deletes them when it restarts.
	serve := func() error {
		for _, r := range resources {
			path := filepath.Join(cfg.Dir, socketName(r))
			if _, err := os.Stat(path); err == nil && servers[r] != nil {
				continue
			}
			if s := servers[r]; s != nil {
				s.Stop()
			}
			_ = os.Remove(path)
			ln, err := net.Listen("unix", path)
			if err != nil {
				return fmt.Errorf("deviceplugin: listen for %s: %w", r, err)
			}
			s := grpc.NewServer()
			api.RegisterDevicePluginServer(s, plugins[r])
			servers[r] = s
			go func() { _ = s.Serve(ln) }()
		}
		return nil
	}
	if err := serve(); err != nil {
		return err
	}

	registered := "" // identity of the kubelet socket registered with
	register := func() {
		id, ok := socketIdentity(filepath.Join(cfg.Dir, "kubelet.sock"))
		if !ok || id == registered {
			return
		}
		if err := registerAll(ctx, cfg.Dir, resources); err != nil {
			cfg.Logger.Warn("deviceplugin: register with the kubelet", "err", err)
			return
		}
		registered = id
		cfg.Logger.Info("deviceplugin: registered with the kubelet", "resources", resources)
	}
	register()
	tick := time.NewTicker(min(cfg.Poll, time.Second))
	defer tick.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		if err := serve(); err != nil {
			return err
		}
		register()
		if time.Since(last) >= cfg.Poll {
			refresh()
			last = time.Now()
		}
	}
}

// socketIdentity tells one kubelet socket from the next one at the same
// path: inode and change time (an inode number may be reused at once).
func socketIdentity(path string) (string, bool) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return "", false
	}
	return fmt.Sprintf("%d:%d:%d.%d", st.Dev, st.Ino, st.Ctim.Sec, st.Ctim.Nsec), true
}

// registerAll registers each resource with the kubelet's Registration service.
func registerAll(ctx context.Context, dir string, resources []string) error {
	conn, err := grpc.NewClient("unix://"+filepath.Join(dir, "kubelet.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNoKubelet, err)
	}
	defer conn.Close()
	c := api.NewRegistrationClient(conn)
	for _, r := range resources {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := c.Register(rctx, &api.RegisterRequest{Version: api.Version, Endpoint: socketName(r), ResourceName: r,
			Options: &api.DevicePluginOptions{}})
		cancel()
		if err != nil {
			return fmt.Errorf("%w: %s: %w", ErrNoKubelet, r, err)
		}
	}
	return nil
}
