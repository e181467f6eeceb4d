package shim

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/cloister/cloister/internal/cpulist"
	"github.com/cloister/cloister/parent"
)

// Annotations the shim reads from the OCI spec (with containerd's CRI
// plugin, pod annotations reach the spec when the runtime is configured
// with pod_annotations = ["cloister.dev/*"]).
const (
	// AnnotationPorts publishes enclave vsock ports as TCP ports in the
	// container's network namespace: "8080" (TCP 8080 → vsock 8080) or
	// "8080:5000" (TCP 8080 → vsock 5000), comma-separated.
	AnnotationPorts = "cloister.dev/ports"
	// AnnotationDebug ("true") runs the enclave in debug mode: its console
	// becomes the container's output, and its attestation documents say
	// debug (PCRs are zero on Nitro).
	AnnotationDebug = "cloister.dev/debug-mode"
	// AnnotationCPUs and AnnotationMemory size the enclave when the
	// container has no CPU or memory limit ("2", "512" MiB).
	AnnotationCPUs   = "cloister.dev/cpu-count"
	AnnotationMemory = "cloister.dev/memory-mib"
	// AnnotationEgressAllow gives the enclave its own egress allowlist,
	// which narrows the daemon's: comma-separated HOST:PORT entries
	// ("kms.us-east-1.amazonaws.com:443,10.0.0.5:5432"; an address is a
	// host name, an IP address or a CIDR prefix, IPv6 in brackets). The
	// enclave's egress proxies then reach a destination only when both
	// lists permit it; an empty value allows none. An entry the daemon's
	// allowlist does not cover fails the container's start.
	AnnotationEgressAllow = "cloister.dev/egress-allow"

	// criContainerType is set by containerd's CRI plugin: "sandbox" for
	// the pod's sandbox (pause) container, "container" otherwise.
	criContainerType = "io.kubernetes.cri.container-type"
)

// Sizing defaults when neither a limit nor an annotation sizes the enclave.
const (
	DefaultCPUs      = 1
	DefaultMemoryMiB = 256
	maxCPUs          = 1024
	maxMemoryMiB     = 1 << 24 // 16 TiB
	maxSpecBytes     = 4 << 20
)

// ErrSpec: the bundle's config.json cannot be run as an enclave.
var ErrSpec = errors.New("shim: unusable OCI runtime spec")

// Spec is the part of an OCI runtime spec (config.json) the shim uses.
type Spec struct {
	Process *struct {
		Terminal bool     `json:"terminal,omitempty"`
		Args     []string `json:"args,omitempty"`
		Env      []string `json:"env,omitempty"`
		Cwd      string   `json:"cwd"`
		User     struct {
			UID uint32 `json:"uid"`
			GID uint32 `json:"gid"`
		} `json:"user"`
	} `json:"process,omitempty"`
	Root *struct {
		Path string `json:"path"`
	} `json:"root,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Linux       *struct {
		Resources *struct {
			CPU *struct {
				Quota  *int64  `json:"quota,omitempty"`
				Period *uint64 `json:"period,omitempty"`
				Cpus   string  `json:"cpus,omitempty"`
			} `json:"cpu,omitempty"`
			Memory *struct {
				Limit *int64 `json:"limit,omitempty"`
			} `json:"memory,omitempty"`
		} `json:"resources,omitempty"`
		Namespaces []struct {
			Type string `json:"type"`
			Path string `json:"path,omitempty"`
		} `json:"namespaces,omitempty"`
	} `json:"linux,omitempty"`
}

// LoadSpec reads bundle/config.json.
func LoadSpec(bundle string) (*Spec, error) {
	f, err := os.Open(filepath.Join(bundle, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSpec, err)
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || st.Size() > maxSpecBytes {
		return nil, fmt.Errorf("%w: config.json is missing or larger than %d bytes", ErrSpec, maxSpecBytes)
	}
	var s Spec
	if err := json.NewDecoder(f).Decode(&s); err != nil {
		return nil, fmt.Errorf("%w: config.json: %w", ErrSpec, err)
	}
	return &s, nil
}

// IsSandbox reports whether the spec is a CRI pod sandbox (pause)
// container: it runs no enclave and only holds the pod's namespaces.
func (s *Spec) IsSandbox() bool { return s.Annotations[criContainerType] == "sandbox" }

// RootPath returns the root file system directory, relative paths being
// relative to the bundle.
func (s *Spec) RootPath(bundle string) string {
	p := "rootfs"
	if s.Root != nil && s.Root.Path != "" {
		p = s.Root.Path
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(bundle, p)
	}
	return p
}

// NetNS returns the path of the network namespace the container joins
// ("" when the spec asks for none or a new one: the shim then publishes
// ports in its own namespace).
func (s *Spec) NetNS() string {
	if s.Linux == nil {
		return ""
	}
	for _, ns := range s.Linux.Namespaces {
		if ns.Type == "network" {
			return ns.Path
		}
	}
	return ""
}

// Debug reports whether the enclave runs in debug mode.
func (s *Spec) Debug() bool { return s.Annotations[AnnotationDebug] == "true" }

// CPUs is the enclave's CPU count: the container's CPU limit (quota /
// period, rounded up), else the size of its cpuset, else AnnotationCPUs,
// else DefaultCPUs.
func (s *Spec) CPUs() (int, error) {
	if s.Linux != nil && s.Linux.Resources != nil && s.Linux.Resources.CPU != nil {
		c := s.Linux.Resources.CPU
		if c.Quota != nil && *c.Quota > 0 {
			period := uint64(100000)
			if c.Period != nil && *c.Period > 0 {
				period = *c.Period
			}
			n := (uint64(*c.Quota) + period - 1) / period
			if n > maxCPUs {
				return 0, fmt.Errorf("%w: CPU limit of %d CPUs is over %d", ErrSpec, n, maxCPUs)
			}
			return int(n), nil
		}
		if c.Cpus != "" {
			ids, err := cpulist.Parse(c.Cpus)
			if err != nil {
				return 0, fmt.Errorf("%w: cpuset %q: %w", ErrSpec, c.Cpus, err)
			}
			if len(ids) > 0 {
				return len(ids), nil
			}
		}
	}
	if v, ok := s.Annotations[AnnotationCPUs]; ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxCPUs {
			return 0, fmt.Errorf("%w: annotation %s=%q: want 1..%d", ErrSpec, AnnotationCPUs, v, maxCPUs)
		}
		return n, nil
	}
	return DefaultCPUs, nil
}

// MemoryMiB is the enclave's memory: the container's memory limit in MiB
// (rounded up), else AnnotationMemory, else 0 (the caller picks).
func (s *Spec) MemoryMiB() (int, error) {
	if s.Linux != nil && s.Linux.Resources != nil && s.Linux.Resources.Memory != nil {
		if l := s.Linux.Resources.Memory.Limit; l != nil && *l > 0 {
			mib := *l >> 20
			if *l&(1<<20-1) != 0 {
				mib++
			}
			if mib > maxMemoryMiB {
				return 0, fmt.Errorf("%w: memory limit %d bytes is over %d MiB", ErrSpec, *l, maxMemoryMiB)
			}
			return int(mib), nil
		}
	}
	if v, ok := s.Annotations[AnnotationMemory]; ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxMemoryMiB {
			return 0, fmt.Errorf("%w: annotation %s=%q: want 1..%d MiB", ErrSpec, AnnotationMemory, v, maxMemoryMiB)
		}
		return n, nil
	}
	return 0, nil
}

// Egress is the enclave's own egress allowlist from AnnotationEgressAllow:
// nil without the annotation (the daemon's allowlist alone applies).
func (s *Spec) Egress() (*parent.EgressPolicy, error) {
	v, ok := s.Annotations[AnnotationEgressAllow]
	if !ok {
		return nil, nil
	}
	p, err := parent.ParseEgressPolicy(v)
	if err != nil {
		return nil, fmt.Errorf("%w: annotation %s: %w; want comma-separated HOST:PORT entries", ErrSpec, AnnotationEgressAllow, err)
	}
	return p, nil
}

// Port is a TCP port published for an enclave vsock port.
type Port struct {
	TCP, Vsock uint32
}

// Ports parses AnnotationPorts.
func (s *Spec) Ports() ([]Port, error) {
	v := strings.TrimSpace(s.Annotations[AnnotationPorts])
	if v == "" {
		return nil, nil
	}
	var out []Port
	for part := range strings.SplitSeq(v, ",") {
		part = strings.TrimSpace(part)
		tcp, vs, found := strings.Cut(part, ":")
		if !found {
			vs = tcp
		}
		t, err1 := strconv.ParseUint(tcp, 10, 16)
		p, err2 := strconv.ParseUint(vs, 10, 32)
		if err1 != nil || err2 != nil || t == 0 {
			return nil, fmt.Errorf("%w: annotation %s: %q: want TCP[:VSOCK] (TCP 1..65535)", ErrSpec, AnnotationPorts, part)
		}
		if slices.ContainsFunc(out, func(q Port) bool { return q.TCP == uint32(t) }) {
			return nil, fmt.Errorf("%w: annotation %s: TCP port %d listed twice", ErrSpec, AnnotationPorts, t)
		}
		out = append(out, Port{TCP: uint32(t), Vsock: uint32(p)})
	}
	return out, nil
}
