package shim

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/parent"
)

func parseSpec(t testing.TB, js string) *Spec {
	t.Helper()
	var s Spec
	if err := json.Unmarshal([]byte(js), &s); err != nil {
		t.Fatal(err)
	}
	return &s
}

func TestSpecSizing(t *testing.T) {
	tests := []struct {
		name      string
		spec      string
		cpus, mem int
		wantErr   bool
	}{
		{"defaults", `{}`, DefaultCPUs, 0, false},
		{"quota", `{"linux":{"resources":{"cpu":{"quota":150000,"period":100000},"memory":{"limit":314572800}}}}`, 2, 300, false},
		{"quota-default-period", `{"linux":{"resources":{"cpu":{"quota":400000}}}}`, 4, 0, false},
		{"memory-rounds-up", `{"linux":{"resources":{"memory":{"limit":1048577}}}}`, DefaultCPUs, 2, false},
		{"cpuset", `{"linux":{"resources":{"cpu":{"cpus":"2-3,6"}}}}`, 3, 0, false},
		{"annotations", `{"annotations":{"cloister.dev/cpu-count":"4","cloister.dev/memory-mib":"1024"}}`, 4, 1024, false},
		{"limits-beat-annotations", `{"annotations":{"cloister.dev/cpu-count":"4"},"linux":{"resources":{"cpu":{"quota":100000,"period":100000}}}}`, 1, 0, false},
		{"bad-annotation", `{"annotations":{"cloister.dev/cpu-count":"lots"}}`, 0, 0, true},
		{"bad-cpuset", `{"linux":{"resources":{"cpu":{"cpus":"3-1"}}}}`, 0, 0, true},
		{"too-many-cpus", `{"linux":{"resources":{"cpu":{"quota":999999999999,"period":1000}}}}`, 0, 0, true},
		{"too-much-memory", `{"linux":{"resources":{"memory":{"limit":9223372036854775807}}}}`, DefaultCPUs, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := parseSpec(t, tt.spec)
			cpus, err1 := s.CPUs()
			mem, err2 := s.MemoryMiB()
			if tt.wantErr {
				if err := errors.Join(err1, err2); !errors.Is(err, ErrSpec) {
					t.Fatalf("error %v, want ErrSpec", err)
				}
				return
			}
			if err1 != nil || err2 != nil {
				t.Fatal(err1, err2)
			}
			if diff := cmp.Diff([2]int{tt.cpus, tt.mem}, [2]int{cpus, mem}); diff != "" {
				t.Errorf("[cpus, MiB] (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSpecPorts(t *testing.T) {
	tests := []struct {
		in      string
		want    []Port
		wantErr bool
	}{
		{"", nil, false},
		{"8080", []Port{{8080, 8080}}, false},
		{"8080:5000, 9090", []Port{{8080, 5000}, {9090, 9090}}, false},
		{"0:5000", nil, true},
		{"70000", nil, true},
		{"80:x", nil, true},
		{"80,80:81", nil, true},
		{"80:4294967296", nil, true},
	}
	for _, tt := range tests {
		s := &Spec{Annotations: map[string]string{AnnotationPorts: tt.in}}
		got, err := s.Ports()
		if (err != nil) != tt.wantErr || (err != nil && !errors.Is(err, ErrSpec)) {
			t.Errorf("%q: error %v, want error %v", tt.in, err, tt.wantErr)
			continue
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("%q (-want +got):\n%s", tt.in, diff)
		}
	}
}

func TestSpecEgress(t *testing.T) {
	many := strings.Repeat("10.0.0.1:1,", parent.MaxEgressEntries) + "10.0.0.1:1"
	tests := []struct {
		name        string
		annotations map[string]string
		want        *parent.EgressPolicy
		wantErr     bool
	}{
		{"none", nil, nil, false},
		{"empty: allows nothing", map[string]string{AnnotationEgressAllow: ""}, &parent.EgressPolicy{Allowlist: []parent.EgressEntry{}}, false},
		{"two", map[string]string{AnnotationEgressAllow: "kms.us-east-1.amazonaws.com:443, 10.0.0.5:5432"},
			&parent.EgressPolicy{Allowlist: []parent.EgressEntry{{Address: "kms.us-east-1.amazonaws.com", Port: 443}, {Address: "10.0.0.5", Port: 5432}}}, false},
		{"prefixes", map[string]string{AnnotationEgressAllow: "10.0.0.0/8:5432,[fd00::/8]:443"},
			&parent.EgressPolicy{Allowlist: []parent.EgressEntry{{Address: "10.0.0.0/8", Port: 5432}, {Address: "fd00::/8", Port: 443}}}, false},
		{"no port", map[string]string{AnnotationEgressAllow: "kms.us-east-1.amazonaws.com"}, nil, true},
		{"bad port", map[string]string{AnnotationEgressAllow: "a.example:0"}, nil, true},
		{"empty entry", map[string]string{AnnotationEgressAllow: "a.example:443,,b.example:443"}, nil, true},
		{"this host", map[string]string{AnnotationEgressAllow: "0.0.0.0:443"}, nil, true},
		{"non-canonical IPv4", map[string]string{AnnotationEgressAllow: "2130706433:443"}, nil, true},
		{"host bits", map[string]string{AnnotationEgressAllow: "10.0.0.1/8:443"}, nil, true},
		{"IPv6 without brackets", map[string]string{AnnotationEgressAllow: "fd00::1:443"}, nil, true},
		{"too many", map[string]string{AnnotationEgressAllow: many}, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := (&Spec{Annotations: tt.annotations}).Egress()
			if (err != nil) != tt.wantErr || (err != nil && (!errors.Is(err, ErrSpec) || !strings.Contains(err.Error(), AnnotationEgressAllow))) {
				t.Fatalf("error %v, want error %v naming the annotation", err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestSpecNamespacesAndRoot(t *testing.T) {
	s := parseSpec(t, `{"root":{"path":"rootfs"},"annotations":{"io.kubernetes.cri.container-type":"sandbox","cloister.dev/debug-mode":"true"},
		"linux":{"namespaces":[{"type":"pid"},{"type":"network","path":"/var/run/netns/cni-1"}]}}`)
	got := []any{s.RootPath("/b"), s.NetNS(), s.IsSandbox(), s.Debug()}
	if diff := cmp.Diff([]any{"/b/rootfs", "/var/run/netns/cni-1", true, true}, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if p := parseSpec(t, `{"root":{"path":"/abs"}}`).RootPath("/b"); p != "/abs" {
		t.Errorf("absolute root %q", p)
	}
}

func TestLoadSpecRefusesHuge(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "config.json"), make([]byte, maxSpecBytes+1), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadSpec(dir); !errors.Is(err, ErrSpec) {
		t.Fatalf("huge config.json: %v", err)
	}
	if _, err := LoadSpec(t.TempDir()); !errors.Is(err, ErrSpec) {
		t.Fatalf("missing config.json: %v", err)
	}
}

func TestSignalNumber(t *testing.T) {
	for in, want := range map[string]syscall.Signal{"SIGKILL": 9, "SIGTERM": 15, "15": 15, "SIGSEGV": 11, "nonsense": 9} {
		if got := signalNumber(in); got != want {
			t.Errorf("%q: %d, want %d", in, got, want)
		}
	}
}

// TestImageKey: the cache key changes with every input and with nothing else.
func TestImageKey(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "rootfs")
	initPath := filepath.Join(dir, "init")
	write := func(p, s string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(root, "bin", "app"), "app v1")
	write(initPath, "init v1")
	base := ImageRequest{RootFS: root, Args: []string{"/bin/app"}, Env: []string{"A=1"}, Cwd: "/", InitPath: initPath,
		Getenv: func(string) string { return filepath.Join(dir, "no-blobs") }}
	key := func(r ImageRequest) string {
		t.Helper()
		k, err := imageKey(context.Background(), r)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	k0 := key(base)
	if key(base) != k0 {
		t.Fatal("the key is not deterministic")
	}
	seen := map[string]string{k0: "base"}
	check := func(name string, r ImageRequest) {
		t.Helper()
		k := key(r)
		if prev, ok := seen[k]; ok {
			t.Errorf("%s gives the same key as %s", name, prev)
		}
		seen[k] = name
	}
	r := base
	r.Args = []string{"/bin/app", "x"}
	check("args", r)
	r = base
	r.Env = []string{"A=2"}
	check("env", r)
	r = base
	r.Cwd = "/tmp"
	check("cwd", r)
	r = base
	r.UID = 1000
	check("uid", r)
	write(initPath, "init v2")
	check("init", base)
	write(filepath.Join(root, "bin", "app"), "app v2")
	check("file content", base)
	if err := os.Chmod(filepath.Join(root, "bin", "app"), 0o700); err != nil {
		t.Fatal(err)
	}
	check("file mode", base)
	if err := os.Symlink("app", filepath.Join(root, "bin", "link")); err != nil {
		t.Fatal(err)
	}
	check("symlink", base)
}

// FuzzSpec: any config.json either decodes and sizes without panicking,
// or is refused.
func FuzzSpec(f *testing.F) {
	f.Add(`{"annotations":{"cloister.dev/ports":"8080:5000,9090"},"linux":{"resources":{"cpu":{"quota":150000,"period":100000,"cpus":"0-3"},"memory":{"limit":314572800}}}}`)
	f.Add(`{"process":{"args":["/bin/app"],"cwd":"/"},"root":{"path":"rootfs"}}`)
	f.Fuzz(func(t *testing.T, js string) {
		var s Spec
		if json.Unmarshal([]byte(js), &s) != nil {
			return
		}
		if n, err := s.CPUs(); err == nil && (n < 1 || n > maxCPUs) {
			t.Fatalf("CPUs %d", n)
		}
		if n, err := s.MemoryMiB(); err == nil && (n < 0 || n > maxMemoryMiB) {
			t.Fatalf("memory %d", n)
		}
		if ps, err := s.Ports(); err == nil {
			for _, p := range ps {
				if p.TCP == 0 || p.TCP > 65535 {
					t.Fatalf("port %+v", p)
				}
			}
		}
		_ = s.NetNS()
		_ = s.RootPath("/b")
	})
}
