package daemon

import (
	"fmt"
	"net"
	"net/http"
	"runtime"
	"sync"

	"github.com/cloister/cloister/internal/connlimit"
	"github.com/cloister/cloister/internal/ratelimit"
	"github.com/cloister/cloister/internal/unotify"
	"github.com/cloister/cloister/parent/backend"
	"github.com/cloister/cloister/parent/nsmemu"
)

// serviceLimits holds a monitor's bounded service listeners and its
// emulated security module, for their counters (GET /stats).
type serviceLimits struct {
	mu   sync.Mutex
	ls   map[string]*connlimit.Listener
	emu  *nsmemu.Emulator
	inst backend.Instance
}

// bound limits l to n concurrent connections and records it as service
// name ("nsm", "egress:8000").
func (s *serviceLimits) bound(name string, l net.Listener, n int) net.Listener {
	bl := connlimit.New(l, n)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ls == nil {
		s.ls = make(map[string]*connlimit.Listener)
	}
	s.ls[name] = bl
	return bl
}

func (s *serviceLimits) setEmulator(e *nsmemu.Emulator) {
	s.mu.Lock()
	s.emu = e
	s.mu.Unlock()
}

func (s *serviceLimits) emulator() *nsmemu.Emulator {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.emu
}

func (s *serviceLimits) setInstance(i backend.Instance) {
	s.mu.Lock()
	s.inst = i
	s.mu.Unlock()
}

// supervised is a backend instance with a seccomp supervisor (the
// sandbox's, for its AF_VSOCK sockets and /dev/nsm).
type supervised interface {
	SupervisorStats() (unotify.Stats, bool)
}

// monitorStats is a monitor's answer to GET /stats: how much of the host
// the enclave's services use.
type monitorStats struct {
	// Goroutines is the monitor process's goroutine count.
	Goroutines int `json:"goroutines"`
	// Services are the connection counters of each bounded service.
	Services map[string]connlimit.Stats `json:"services"`
	// NSM are the emulated security module's counters, when it runs.
	NSM *nsmemu.Stats `json:"nsm,omitempty"`
	// Supervisor are the counters of the sandbox's seccomp supervisor
	// (emulated AF_VSOCK sockets, /dev/nsm), when it has one.
	Supervisor *unotify.Stats `json:"supervisor,omitempty"`
}

func (s *serviceLimits) stats() monitorStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := monitorStats{Goroutines: runtime.NumGoroutine(), Services: make(map[string]connlimit.Stats, len(s.ls))}
	for name, l := range s.ls {
		st.Services[name] = l.Stats()
	}
	if s.emu != nil {
		es := s.emu.Stats()
		st.NSM = &es
	}
	if sv, ok := s.inst.(supervised); ok {
		if ss, ok := sv.SupervisorStats(); ok {
			st.Supervisor = &ss
		}
	}
	return st
}

func (s *serviceLimits) handleStats(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.stats())
}

// attestationBucket paces the emulated security module's attestations for
// an enclave with cpus vCPUs: rate and burst are per vCPU, so an enclave
// gets signing in proportion to the CPUs it was given. Signing runs in the
// monitor, outside the enclave's cgroup; charging it to that cgroup would
// take a signer process per enclave inside it (holding the development
// root's key) or per-thread cgroup moves, which cgroup v2 forbids outside
// threaded subtrees, so the work is bounded by rate instead.
func attestationBucket(c NSMConfig, cpus int) (*ratelimit.Bucket, error) {
	c = c.withDefaults()
	cpus = max(cpus, 1)
	b, err := ratelimit.New(ratelimit.Config{
		Rate:  c.AttestationsPerSecondPerCPU * float64(cpus),
		Burst: c.AttestationBurstPerCPU * cpus,
	})
	if err != nil {
		return nil, fmt.Errorf("attestation rate: %w", err)
	}
	return b, nil
}

// consoleMaxBytes is the cap of each kept console file.
func (c Config) consoleMaxBytes() int64 {
	n := c.Console.MaxMiB
	if n <= 0 {
		n = DefaultConsoleMaxMiB
	}
	return int64(n) << 20
}

// egressMaxConnections is the bound of each egress proxy port.
func (c Config) egressMaxConnections() int {
	if c.Egress.MaxConnections <= 0 {
		return DefaultEgressMaxConnections
	}
	return c.Egress.MaxConnections
}
