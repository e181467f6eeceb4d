package daemon

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cloister/cloister/parent"
	"github.com/google/go-cmp/cmp"
)

func TestParseConfig(t *testing.T) {
	cfg, err := ParseConfig([]byte(`---
memory_mib: 4096
cpu_pool: "2,3,6-9"
heartbeat_timeout: 30s
egress:
  allowlist: /etc/cloister/allow.yaml
  nameserver: 127.0.0.53:53
  proxies:
    - port: 8000
    - port: 8001
      remote_addr: kms.us-east-1.amazonaws.com
      remote_port: 443
  max_connections: 32
console:
  max_mib: 4
nsm:
  max_connections: 8
  idle_timeout: 30s
  attestations_per_second_per_cpu: 2.5
  attestation_burst_per_cpu: 5
metrics_addr: 127.0.0.1:9464
`))
	if err != nil {
		t.Fatal(err)
	}
	want := Config{MemoryMiB: 4096, CPUPool: "2,3,6-9", HeartbeatTimeout: 30 * time.Second,
		Egress:      EgressConfig{Allowlist: "/etc/cloister/allow.yaml", Nameserver: "127.0.0.53:53", Proxies: []ProxyConfig{{Port: 8000}, {Port: 8001, RemoteAddr: "kms.us-east-1.amazonaws.com", RemotePort: 443}}, MaxConnections: 32},
		Console:     ConsoleConfig{MaxMiB: 4},
		NSM:         NSMConfig{MaxConnections: 8, IdleTimeout: 30 * time.Second, AttestationsPerSecondPerCPU: 2.5, AttestationBurstPerCPU: 5},
		MetricsAddr: "127.0.0.1:9464"}
	if diff := cmp.Diff(want, cfg); diff != "" {
		t.Errorf("config (-want +got):\n%s", diff)
	}
	if _, err := ParseConfig(nil); err != nil {
		t.Errorf("empty config: %v", err)
	}
}

func TestParseConfigErrors(t *testing.T) {
	for _, tt := range []struct{ doc, want string }{
		{"cpu_count: 2\ncpu_pool: '1'\n", "not both"},
		{"cpu_pool: 'x'\n", "invalid cpu list"},
		{"memory_mib: -1\n", "negative"},
		{"backend: docker\n", "not one of"},
		{"memroy_mib: 5\n", "memroy_mib"},
		{"egress:\n  proxies:\n  - port: 8000\n  - port: 8000\n", "twice"},
		{"egress:\n  proxies:\n  - port: 8001\n    remote_addr: x\n", "both remote_addr and remote_port"},
		{"egress:\n  proxies:\n  - port: 9000\n", "reserved"},
		{"qemu:\n  accel: hvf\n", "accel"},
		{"qemu:\n  machine: pc\n", "qemu machine"},
		{"egress:\n  nameserver: dns.example:53\n", "not IP:port"},
		{"egress:\n  nameserver: 127.0.0.1\n", "not IP:port"},
		{"console:\n  max_mib: -1\n", "max_mib"},
		{"egress:\n  max_connections: -1\n", "max_connections"},
		{"nsm:\n  max_connections: -5\n", "max_connections"},
		{"nsm:\n  idle_timeout: -1s\n", "idle_timeout"},
		{"nsm:\n  attestations_per_second_per_cpu: -1\n", "attestations_per_second_per_cpu"},
		{"nsm:\n  attestations_per_second_per_cpu: .nan\n", "attestations_per_second_per_cpu"},
		{"nsm:\n  attestation_burst_per_cpu: -1\n", "attestation_burst_per_cpu"},
		{"nsm:\n  max_conns: 5\n", "max_conns"},
		{"metrics_addr: 9464\n", "metrics_addr"},
		{"metrics_addr: 'localhost'\n", "metrics_addr"},
	} {
		_, err := ParseConfig([]byte(tt.doc))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParseConfig(%q) = %v, want error containing %q", tt.doc, err, tt.want)
		}
	}
}

func TestConfigLimitDefaults(t *testing.T) {
	got := Config{}.withDefaults()
	want := struct {
		Console ConsoleConfig
		NSM     NSMConfig
		Egress  int
	}{
		ConsoleConfig{MaxMiB: 16},
		NSMConfig{MaxConnections: 64, IdleTimeout: time.Minute, AttestationsPerSecondPerCPU: 20, AttestationBurstPerCPU: 40},
		256,
	}
	gotLimits := struct {
		Console ConsoleConfig
		NSM     NSMConfig
		Egress  int
	}{got.Console, got.NSM, got.Egress.MaxConnections}
	if diff := cmp.Diff(want, gotLimits); diff != "" {
		t.Errorf("default limits (-want +got):\n%s", diff)
	}
}

func TestLoadConfigErrors(t *testing.T) {
	if _, err := LoadConfig(filepath.Join(t.TempDir(), "missing.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func TestPoolCPUs(t *testing.T) {
	online := []int{0, 1, 2, 3}
	got, err := Config{CPUCount: 2}.poolCPUs(online)
	if err != nil || !cmp.Equal(got, []int{2, 3}) {
		t.Errorf("cpu_count 2: %v %v", got, err)
	}
	if _, err := (Config{CPUCount: 5}).poolCPUs(online); err == nil {
		t.Error("cpu_count above online accepted")
	}
	if _, err := (Config{CPUPool: "7"}).poolCPUs(online); err == nil {
		t.Error("offline CPU in pool accepted")
	}
	got, _ = Config{}.poolCPUs(online)
	if !cmp.Equal(got, online) {
		t.Errorf("default pool %v", got)
	}
}

func TestPoolAllocation(t *testing.T) {
	p := newPool([]int{2, 3, 4, 5}, 1000)
	a, err := p.allocate("a", 2, nil, 600)
	if err != nil || !cmp.Equal(a, []int{2, 3}) {
		t.Fatalf("allocate a: %v %v", a, err)
	}
	if _, err := p.allocate("b", 1, nil, 500); !errors.Is(err, parent.ErrResources) {
		t.Errorf("memory over budget: %v", err)
	}
	if _, err := p.allocate("b", 0, []int{3}, 10); !errors.Is(err, parent.ErrResources) {
		t.Errorf("busy CPU: %v", err)
	}
	b, err := p.allocate("b", 0, []int{5}, 400)
	if err != nil || !cmp.Equal(b, []int{5}) {
		t.Fatalf("allocate b: %v %v", b, err)
	}
	if _, err := p.allocate("c", 2, nil, 0); !errors.Is(err, parent.ErrResources) {
		t.Errorf("one CPU left, two requested: %v", err)
	}
	p.release("a")
	all, free, total, freeMem := p.snapshot()
	if !cmp.Equal(all, []int{2, 3, 4, 5}) || !cmp.Equal(free, []int{2, 3, 4}) || total != 1000 || freeMem != 600 {
		t.Errorf("snapshot %v %v %d %d", all, free, total, freeMem)
	}
	p.claim("d", []int{4}, 100)
	if _, free, _, freeMem := p.snapshot(); !cmp.Equal(free, []int{2, 3}) || freeMem != 500 {
		t.Errorf("after claim %v %d", free, freeMem)
	}
}

func TestHeartbeatTimeoutFormula(t *testing.T) {
	d := &Daemon{}
	if got := d.heartbeatTimeout(100<<20, 512); got != 180*time.Second {
		t.Errorf("small image: %v, want 180s", got)
	}
	if got := d.heartbeatTimeout(7<<30, 512); got != 270*time.Second {
		t.Errorf("7 GiB image: %v, want 270s", got)
	}
	d.cfg.HeartbeatTimeout = time.Second
	if got := d.heartbeatTimeout(7<<30, 512); got != time.Second {
		t.Errorf("configured: %v", got)
	}
}

func TestMinMemory(t *testing.T) {
	for _, tt := range []struct {
		size int64
		want int
	}{{1, 64}, {16 << 20, 64}, {17 << 20, 68}, {(17 << 20) + 1, 69}} {
		if got := minMemoryMiB(tt.size); got != tt.want {
			t.Errorf("minMemoryMiB(%d) = %d, want %d", tt.size, got, tt.want)
		}
	}
}
