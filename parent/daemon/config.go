package daemon

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"runtime"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/cloister/cloister/internal/cpulist"
	"github.com/cloister/cloister/internal/wellknown"
)

// Defaults for Config fields left at their zero value.
const (
	DefaultSocket    = "/run/cloister/cloisterd.sock"
	DefaultStateDir  = "/var/lib/cloister"
	DefaultMemoryMiB = 2048
	DefaultGroup     = "cloister"
	// DefaultEgressPort is the parent port of the default egress proxy
	// (vsock-proxy's conventional port).
	DefaultEgressPort = wellknown.EgressPort

	// DefaultConsoleMaxMiB caps each enclave's console.log (and its one
	// rotated predecessor, console.log.1).
	DefaultConsoleMaxMiB = 16
	// DefaultNSMMaxConnections bounds an enclave's concurrent connections
	// to its emulated security module.
	DefaultNSMMaxConnections = 64
	// DefaultNSMIdleTimeout closes a security-module connection that sends
	// no request for this long.
	DefaultNSMIdleTimeout = time.Minute
	// DefaultAttestationsPerSecondPerCPU is the emulated security module's
	// sustained attestation rate per vCPU of the enclave.
	DefaultAttestationsPerSecondPerCPU = 20
	// DefaultAttestationBurstPerCPU is how many attestations per vCPU the
	// enclave may request at once before the rate applies.
	DefaultAttestationBurstPerCPU = 40
	// DefaultEgressMaxConnections bounds an enclave's concurrent
	// connections to each egress proxy port.
	DefaultEgressMaxConnections = 256
)

// Config is the daemon's configuration. The zero value is usable: every
// field has a documented default. A YAML file in the spirit of nitro-cli's
// allocator.yaml sets it (see LoadConfig).
type Config struct {
	// Backend is "sandbox" (default), "qemu" or "nitro".
	Backend string `yaml:"backend"`
	// Socket is the API's Unix socket (default /run/cloister/cloisterd.sock).
	Socket string `yaml:"socket"`
	// Group, when it exists on the host, owns the socket (mode 0660);
	// otherwise the socket is root-only (0600). Default "cloister".
	Group string `yaml:"group"`
	// StateDir holds enclave records, their private directories and the
	// development root (default /var/lib/cloister).
	StateDir string `yaml:"state_dir"`

	// MemoryMiB is the memory budget enclaves are carved from (default 2048).
	MemoryMiB int `yaml:"memory_mib"`
	// CPUCount takes that many CPUs for the pool (the highest-numbered
	// online CPUs, so CPU 0 stays with the host when possible); CPUPool
	// names them explicitly in cpu-list syntax ("2,3,6-9"). At most one may
	// be set; with neither, every online CPU is in the pool.
	CPUCount int    `yaml:"cpu_count"`
	CPUPool  string `yaml:"cpu_pool"`

	// HeartbeatTimeout bounds the wait for the enclave's boot heartbeat;
	// zero uses nitro-cli's formula (90 s per started 6 GiB of image plus
	// 90 s per started 100 GiB of memory).
	HeartbeatTimeout time.Duration `yaml:"heartbeat_timeout"`

	// Egress configures the per-enclave egress proxies.
	Egress EgressConfig `yaml:"egress"`

	// Console bounds each enclave's kept console log.
	Console ConsoleConfig `yaml:"console"`

	// NSM bounds each enclave's use of its emulated security module.
	NSM NSMConfig `yaml:"nsm"`

	// QEMU configures the microVM backend.
	QEMU QEMUConfig `yaml:"qemu"`

	// KeepExited is how many exited enclaves (with their console logs) are
	// kept for describe-enclaves --all and console (default 16).
	KeepExited int `yaml:"keep_exited"`

	// CgroupParent is the cgroup (a relative path, the same in every
	// hierarchy) under which the sandbox and microVM backends create each
	// enclave's group; default "cloister", i.e. /sys/fs/cgroup/cloister on
	// cgroup v2. "auto" places them beneath the daemon's own cgroup when a
	// service manager delegated it (systemd's Delegate=yes; see
	// [ResolveCgroupParent]) and falls back to "cloister" otherwise.
	CgroupParent string `yaml:"cgroup_parent"`

	// MetricsAddr, when set, is a TCP address (HOST:PORT) on which the
	// daemon serves only GET /metrics (Prometheus) and GET /healthz. Both
	// are always served on the API socket too. Default: off.
	MetricsAddr string `yaml:"metrics_addr"`
}

// EgressConfig configures the egress proxies every enclave gets.
type EgressConfig struct {
	// Allowlist is a file in vsock-proxy's allowlist format. Without one
	// every destination is refused.
	Allowlist string `yaml:"allowlist"`
	// Nameserver is the DNS server (IP:port) the proxies resolve
	// destination and allowlist names with. Default: the host's resolver
	// (/etc/hosts, then the servers in /etc/resolv.conf).
	Nameserver string `yaml:"nameserver"`
	// Proxies lists the proxy ports. Default: one CONNECT proxy on port 8000.
	Proxies []ProxyConfig `yaml:"proxies"`
	// MaxConnections bounds one enclave's concurrent connections to each
	// proxy port; further ones are accepted and closed at once (default
	// 256).
	MaxConnections int `yaml:"max_connections"`
}

// ConsoleConfig bounds the kept console log (D/console.log) of each
// enclave. The monitor drains the enclave's console into it.
type ConsoleConfig struct {
	// MaxMiB caps console.log; when the next output would exceed it,
	// console.log becomes console.log.1 (replacing the previous one) and a
	// new console.log starts, so at least the newest MaxMiB (and at most
	// 2×MaxMiB) are kept. Default 16.
	MaxMiB int `yaml:"max_mib"`
}

// NSMConfig bounds each enclave's use of the emulated security module
// (sandbox and microVM backends; a Nitro enclave has the real one). The
// monitor does this work outside the enclave's cgroup, so these limits are
// what keeps an enclave from spending the host's CPU and memory on it.
type NSMConfig struct {
	// MaxConnections bounds the enclave's concurrent connections; further
	// ones are accepted and closed at once (default 64).
	MaxConnections int `yaml:"max_connections"`
	// IdleTimeout closes a connection that sends no complete request for
	// this long (default 1m; the SDK reconnects transparently).
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// AttestationsPerSecondPerCPU is the sustained rate of attestation
	// documents per vCPU of the enclave (default 20); requests beyond it
	// wait for their turn, as on a slow device.
	AttestationsPerSecondPerCPU float64 `yaml:"attestations_per_second_per_cpu"`
	// AttestationBurstPerCPU is how many attestations per vCPU may be
	// issued at once before the rate applies (default 40).
	AttestationBurstPerCPU int `yaml:"attestation_burst_per_cpu"`
}

// ProxyConfig is one egress proxy port. With RemoteAddr/RemotePort it
// forwards to that fixed destination (vsock-proxy mode); without, it expects
// an HTTP CONNECT request naming the destination.
type ProxyConfig struct {
	Port       uint32 `yaml:"port"`
	RemoteAddr string `yaml:"remote_addr"`
	RemotePort int    `yaml:"remote_port"`
}

// QEMUConfig configures the microVM backend.
type QEMUConfig struct {
	// Binary is the QEMU executable (default qemu-system-x86_64 on PATH).
	Binary string `yaml:"binary"`
	// Accel is "auto" (default: kvm when /dev/kvm is usable, else tcg),
	// "kvm" or "tcg".
	Accel string `yaml:"accel"`
	// Machine is "microvm" (default) or "nitro-enclave": QEMU's own model
	// of a Nitro enclave (QEMU ≥ 9.2 with libcbor; without Binary, the
	// newest build of scripts/build-qemu-nitro.sh). Its /dev/nsm is QEMU's
	// virtio-nsm device, whose attestation documents are unsigned and so
	// never verify under the development root. See docs/nitro.md.
	Machine string `yaml:"machine"`
}

// maxConfigSize bounds the configuration file.
const maxConfigSize = 1 << 20

// LoadConfig reads a YAML configuration file. Unknown keys are errors.
func LoadConfig(path string) (Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return Config{}, fmt.Errorf("daemon: open config: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxConfigSize+1))
	if err != nil {
		return Config{}, fmt.Errorf("daemon: read config %s: %w", path, err)
	}
	if len(b) > maxConfigSize {
		return Config{}, fmt.Errorf("daemon: config %s is larger than %d bytes", path, maxConfigSize)
	}
	cfg, err := ParseConfig(b)
	if err != nil {
		return Config{}, fmt.Errorf("daemon: config %s: %w", path, err)
	}
	return cfg, nil
}

// ParseConfig parses and validates a YAML configuration document.
func ParseConfig(b []byte) (Config, error) {
	var cfg Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return Config{}, err
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// Validate checks the configuration for contradictions and impossible values.
func (c Config) Validate() error {
	switch c.Backend {
	case "", "sandbox", "qemu", "nitro":
	default:
		return fmt.Errorf("backend %q is not one of sandbox, qemu, nitro", c.Backend)
	}
	if c.CPUCount != 0 && c.CPUPool != "" {
		return errors.New("set cpu_count or cpu_pool, not both")
	}
	if c.CPUCount < 0 {
		return fmt.Errorf("cpu_count %d is negative", c.CPUCount)
	}
	if c.CPUPool != "" {
		ids, err := cpulist.Parse(c.CPUPool)
		if err != nil {
			return err
		}
		if len(ids) == 0 {
			return errors.New("cpu_pool is empty")
		}
	}
	if c.MemoryMiB < 0 {
		return fmt.Errorf("memory_mib %d is negative", c.MemoryMiB)
	}
	if c.HeartbeatTimeout < 0 {
		return fmt.Errorf("heartbeat_timeout %s is negative", c.HeartbeatTimeout)
	}
	if c.Egress.Nameserver != "" {
		if _, err := netip.ParseAddrPort(c.Egress.Nameserver); err != nil {
			return fmt.Errorf("egress nameserver %q is not IP:port: %v", c.Egress.Nameserver, err)
		}
	}
	ports := map[uint32]bool{}
	for i, p := range c.Egress.Proxies {
		if p.Port == 0 {
			return fmt.Errorf("egress proxy %d has no port", i)
		}
		if ports[p.Port] {
			return fmt.Errorf("egress proxy port %d is listed twice", p.Port)
		}
		ports[p.Port] = true
		if (p.RemoteAddr == "") != (p.RemotePort == 0) {
			return fmt.Errorf("egress proxy on port %d: set both remote_addr and remote_port, or neither for CONNECT mode", p.Port)
		}
		if p.RemotePort < 0 || p.RemotePort > 65535 {
			return fmt.Errorf("egress proxy on port %d: remote_port %d is outside 1..65535", p.Port, p.RemotePort)
		}
		if p.Port == HeartbeatPort || p.Port == NSMPort {
			return fmt.Errorf("egress proxy port %d is reserved", p.Port)
		}
	}
	switch c.QEMU.Accel {
	case "", "auto", "kvm", "tcg":
	default:
		return fmt.Errorf("qemu accel %q is not one of auto, kvm, tcg", c.QEMU.Accel)
	}
	switch c.QEMU.Machine {
	case "", "microvm", "nitro-enclave":
	default:
		return fmt.Errorf("qemu machine %q is not one of microvm, nitro-enclave", c.QEMU.Machine)
	}
	if c.KeepExited < 0 {
		return fmt.Errorf("keep_exited %d is negative", c.KeepExited)
	}
	if c.Egress.MaxConnections < 0 {
		return fmt.Errorf("egress max_connections %d is negative", c.Egress.MaxConnections)
	}
	if c.Console.MaxMiB < 0 || c.Console.MaxMiB > 1<<20 {
		return fmt.Errorf("console max_mib %d is outside 0..%d", c.Console.MaxMiB, 1<<20)
	}
	if c.NSM.MaxConnections < 0 {
		return fmt.Errorf("nsm max_connections %d is negative", c.NSM.MaxConnections)
	}
	if c.NSM.IdleTimeout < 0 {
		return fmt.Errorf("nsm idle_timeout %s is negative", c.NSM.IdleTimeout)
	}
	if r := c.NSM.AttestationsPerSecondPerCPU; r < 0 || math.IsNaN(r) || math.IsInf(r, 0) {
		return fmt.Errorf("nsm attestations_per_second_per_cpu %v is negative or not a number", r)
	}
	if c.NSM.AttestationBurstPerCPU < 0 {
		return fmt.Errorf("nsm attestation_burst_per_cpu %d is negative", c.NSM.AttestationBurstPerCPU)
	}
	if err := validCgroupParent(c.CgroupParent); err != nil {
		return err
	}
	if c.MetricsAddr != "" {
		if _, _, err := net.SplitHostPort(c.MetricsAddr); err != nil {
			return fmt.Errorf("metrics_addr %q is not HOST:PORT (e.g. 127.0.0.1:9464): %v", c.MetricsAddr, err)
		}
	}
	return nil
}

// withDefaults returns c with zero fields replaced by their defaults.
func (c Config) withDefaults() Config {
	if c.Backend == "" {
		c.Backend = "sandbox"
	}
	if c.Socket == "" {
		c.Socket = DefaultSocket
	}
	if c.Group == "" {
		c.Group = DefaultGroup
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if c.MemoryMiB == 0 {
		c.MemoryMiB = DefaultMemoryMiB
	}
	if len(c.Egress.Proxies) == 0 {
		c.Egress.Proxies = []ProxyConfig{{Port: DefaultEgressPort}}
	}
	if c.QEMU.Accel == "" {
		c.QEMU.Accel = "auto"
	}
	if c.KeepExited == 0 {
		c.KeepExited = 16
	}
	if c.Egress.MaxConnections == 0 {
		c.Egress.MaxConnections = DefaultEgressMaxConnections
	}
	if c.Console.MaxMiB == 0 {
		c.Console.MaxMiB = DefaultConsoleMaxMiB
	}
	c.NSM = c.NSM.withDefaults()
	return c
}

func (n NSMConfig) withDefaults() NSMConfig {
	if n.MaxConnections == 0 {
		n.MaxConnections = DefaultNSMMaxConnections
	}
	if n.IdleTimeout == 0 {
		n.IdleTimeout = DefaultNSMIdleTimeout
	}
	if n.AttestationsPerSecondPerCPU == 0 {
		n.AttestationsPerSecondPerCPU = DefaultAttestationsPerSecondPerCPU
	}
	if n.AttestationBurstPerCPU == 0 {
		n.AttestationBurstPerCPU = DefaultAttestationBurstPerCPU
	}
	return n
}

// poolCPUs resolves the configured CPU pool against the online CPUs.
func (c Config) poolCPUs(online []int) ([]int, error) {
	if c.CPUPool != "" {
		ids, err := cpulist.Parse(c.CPUPool)
		if err != nil {
			return nil, err
		}
		on := map[int]bool{}
		for _, id := range online {
			on[id] = true
		}
		for _, id := range ids {
			if !on[id] {
				return nil, fmt.Errorf("cpu_pool names CPU %d, which is not online (online: %s)", id, cpulist.Format(online))
			}
		}
		return ids, nil
	}
	if c.CPUCount > 0 {
		if c.CPUCount > len(online) {
			return nil, fmt.Errorf("cpu_count %d is more than the %d online CPUs", c.CPUCount, len(online))
		}
		return append([]int(nil), online[len(online)-c.CPUCount:]...), nil
	}
	return append([]int(nil), online...), nil
}

// onlineCPUs reads /sys/devices/system/cpu/online, falling back to
// runtime.NumCPU.
func onlineCPUs() []int {
	if b, err := os.ReadFile("/sys/devices/system/cpu/online"); err == nil {
		if ids, err := cpulist.Parse(string(b)); err == nil && len(ids) > 0 {
			return ids
		}
	}
	ids := make([]int, runtime.NumCPU())
	for i := range ids {
		ids[i] = i
	}
	return ids
}
