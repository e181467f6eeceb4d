package allocator

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/internal/cpulist"
)

const (
	size2M = 2 << 20
	size1G = 1 << 30
)

// fakeSysfs builds a 2-socket host: 4 cores × 2 threads per socket, CPUs
// numbered like Linux does on such machines (node 0 = 0-3,8-11, node 1 =
// 4-7,12-15, siblings i and i+8), 2 MiB and 1 GiB hugepages per node.
func fakeSysfs(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	write := func(p, v string) {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(CPUPoolPath, "")
	write(OnlinePath, "0-15")
	for c := 0; c < 16; c++ {
		lo := c % 8
		write(fmt.Sprintf("%s/cpu%d/topology/thread_siblings_list", CPUDir, c), fmt.Sprintf("%d,%d", lo, lo+8))
		write(fmt.Sprintf("%s/cpu%d/topology/core_id", CPUDir, c), strconv.Itoa(lo%4))
	}
	write(NodeDir+"/node0/cpulist", "0-3,8-11")
	write(NodeDir+"/node1/cpulist", "4-7,12-15")
	write(NodeDir+"/possible", "0-1")
	for n := 0; n < 2; n++ {
		for _, kb := range []int{2048, 1048576} {
			write(fmt.Sprintf("%s/node%d/hugepages/hugepages-%dkB/nr_hugepages", NodeDir, n, kb), "0")
		}
	}
	return root
}

// hookFS is a Sysfs over a fake tree that mimics the kernel: nr_hugepages
// writes are capped (the kernel finds only so many free pages), and writes
// to chosen files fail.
type hookFS struct {
	Dir
	cap    map[string]int   // path -> max nr_hugepages granted
	fail   map[string]error // path -> write error
	failN  map[string]int   // path -> fail only the n-th write (1-based)
	writes map[string]int
	log    []string
}

func newHook(root string) *hookFS {
	return &hookFS{Dir: Dir(root), cap: map[string]int{}, fail: map[string]error{}, failN: map[string]int{}, writes: map[string]int{}}
}

func (h *hookFS) WriteFile(p string, data []byte) error {
	h.writes[p]++
	if err, ok := h.fail[p]; ok && (h.failN[p] == 0 || h.failN[p] == h.writes[p]) {
		return err
	}
	h.log = append(h.log, p+"="+strings.TrimSpace(string(data)))
	if c, ok := h.cap[p]; ok {
		n, err := strconv.Atoi(strings.TrimSpace(string(data)))
		if err == nil && n > c {
			data = []byte(strconv.Itoa(c) + "\n")
		}
	}
	return h.Dir.WriteFile(p, data)
}

func hp(node, kb int) string {
	return fmt.Sprintf("%s/node%d/hugepages/hugepages-%dkB/nr_hugepages", NodeDir, node, kb)
}

func read(t *testing.T, sys Sysfs, p string) string {
	t.Helper()
	b, err := sys.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// pages returns node's counts "2M/1G".
func pages(t *testing.T, sys Sysfs, node int) string {
	return read(t, sys, hp(node, 2048)) + "/" + read(t, sys, hp(node, 1048576))
}

func TestApplyCount(t *testing.T) {
	tests := []struct {
		name      string
		count     int
		mem       int
		cap       map[string]int
		wantCPUs  []int
		wantNode  int
		wantPages map[uint64]int
		node0     string // hugepage counts after, "2M/1G"
		node1     string
	}{
		{"two cores on node 0, CPU 0's core skipped", 4, 1536, nil, []int{1, 2, 9, 10}, 0, map[uint64]int{size1G: 1, size2M: 256}, "256/1", "0/0"},
		{"one core", 2, 64, nil, []int{1, 9}, 0, map[uint64]int{size2M: 32}, "32/0", "0/0"},
		{"node 0 has only 3 usable cores: node 1", 8, 512, nil, []int{4, 5, 6, 7, 12, 13, 14, 15}, 1, map[uint64]int{size2M: 256}, "0/0", "256/0"},
		{"memory short on node 0: node 1", 2, 1024, map[string]int{hp(0, 2048): 100, hp(0, 1048576): 0}, []int{4, 12}, 1, map[uint64]int{size1G: 1}, "0/0", "0/1"},
		{"kernel grants fewer 1G pages: 2M fill the rest", 2, 2048, map[string]int{hp(0, 1048576): 1}, []int{1, 9}, 0, map[uint64]int{size1G: 1, size2M: 512}, "512/1", "0/0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHook(fakeSysfs(t))
			for k, v := range tt.cap {
				h.cap[k] = v
			}
			res, err := Apply(context.Background(), h, Config{MemoryMiB: tt.mem, CPUCount: tt.count})
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.wantCPUs, res.CPUs); diff != "" {
				t.Errorf("CPUs (-want +got):\n%s", diff)
			}
			if res.Node != tt.wantNode {
				t.Errorf("node = %d, want %d", res.Node, tt.wantNode)
			}
			// Cores are whole: two hyperthreads each, covering the pool.
			var flat []int
			for _, core := range res.Cores {
				if len(core) != 2 {
					t.Errorf("core %v is not a pair of siblings", core)
				}
				flat = append(flat, core...)
			}
			sort.Ints(flat)
			if diff := cmp.Diff(tt.wantCPUs, flat); diff != "" {
				t.Errorf("cores do not cover the pool (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantPages, res.Pages); diff != "" {
				t.Errorf("pages (-want +got):\n%s", diff)
			}
			if got := pages(t, h, 0); got != tt.node0 {
				t.Errorf("node0 hugepages %s, want %s", got, tt.node0)
			}
			if got := pages(t, h, 1); got != tt.node1 {
				t.Errorf("node1 hugepages %s, want %s", got, tt.node1)
			}
			if got, want := read(t, h, CPUPoolPath), cpulist.Format(tt.wantCPUs); got != want {
				t.Errorf("ne_cpus = %q, want %q", got, want)
			}
		})
	}
}

func TestApplyPool(t *testing.T) {
	h := newHook(fakeSysfs(t))
	res, err := Apply(context.Background(), h, Config{MemoryMiB: 128, CPUPool: "5,13,6,14"})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(Result{CPUs: []int{5, 6, 13, 14}, Node: 1, Pages: map[uint64]int{size2M: 64}, MemoryMiB: 128, Cores: [][]int{{5, 13}, {6, 14}}}, res); diff != "" {
		t.Errorf("result (-want +got):\n%s", diff)
	}
	if got := read(t, h, CPUPoolPath); got != "5-6,13-14" {
		t.Errorf("ne_cpus = %q", got)
	}
	if got := pages(t, h, 1); got != "64/0" {
		t.Errorf("node1 hugepages %s", got)
	}
}

func TestApplyErrors(t *testing.T) {
	eperm := syscall.EPERM
	tests := []struct {
		name     string
		cfg      Config
		setup    func(t *testing.T, root string, h *hookFS)
		kind     error
		exit     int
		contains []string
	}{
		{"no cpus configured", Config{MemoryMiB: 64}, nil, ErrInvalidConfig, 1, []string{"cpu_count"}},
		{"both", Config{MemoryMiB: 64, CPUCount: 2, CPUPool: "1,9"}, nil, ErrInvalidConfig, 1, []string{"not both"}},
		{"no memory", Config{CPUCount: 2}, nil, ErrInvalidConfig, 1, []string{"memory_mib"}},
		{"bad pool syntax", Config{MemoryMiB: 64, CPUPool: "1-"}, nil, ErrInvalidConfig, 1, []string{"cpu_pool"}},
		{"odd count", Config{MemoryMiB: 64, CPUCount: 3}, nil, ErrInvalidConfig, 1, []string{"multiple of the 2 threads per core", "cpu_count 2 or 4", "thread_siblings_list"}},
		{"too many cpus", Config{MemoryMiB: 64, CPUCount: 10}, nil, ErrEmptyCPUPool, 200, []string{"node 0 has 6 usable CPUs", "node 1 has 8"}},
		{"pool with cpu 0", Config{MemoryMiB: 64, CPUPool: "0,8"}, nil, ErrInvalidConfig, 1, []string{"CPU 0 and its siblings", "cpu0/topology/thread_siblings_list"}},
		{"pool with cpu 0's sibling", Config{MemoryMiB: 64, CPUPool: "8"}, nil, ErrInvalidConfig, 1, []string{"CPU 8"}},
		{"half core", Config{MemoryMiB: 64, CPUPool: "1"}, nil, ErrInvalidConfig, 1, []string{"full cores", "add 9", "cpu1/topology/thread_siblings_list"}},
		{"two nodes", Config{MemoryMiB: 64, CPUPool: "1,9,4,12"}, nil, ErrInvalidNode, 202, []string{"spans NUMA nodes"}},
		{"offline cpu", Config{MemoryMiB: 64, CPUPool: "20,21"}, nil, ErrEmptyCPUPool, 200, []string{"not online", OnlinePath}},
		{"memory on no node", Config{MemoryMiB: 4096, CPUCount: 2}, func(t *testing.T, root string, h *hookFS) {
			h.cap[hp(0, 2048)], h.cap[hp(1, 2048)] = 10, 20
			h.cap[hp(0, 1048576)], h.cap[hp(1, 1048576)] = 0, 0
		}, ErrInsufficientMemory, 206, []string{"only 20 of 4096 MiB", "only 40 of 4096 MiB", "lower memory_mib"}},
		{"driver not loaded", Config{MemoryMiB: 64, CPUCount: 2}, func(t *testing.T, root string, h *hookFS) {
			os.Remove(filepath.Join(root, CPUPoolPath))
		}, ErrCPUPool, 1, []string{"modprobe nitro_enclaves", CPUPoolPath}},
		{"enclaves running", Config{MemoryMiB: 64, CPUCount: 4}, func(t *testing.T, root string, h *hookFS) {
			os.WriteFile(filepath.Join(root, CPUPoolPath), []byte("1,9\n"), 0o644)
			h.fail[CPUPoolPath] = eperm
		}, ErrCPUPool, 1, []string{"terminate-enclave", "1,9"}},
		{"driver refuses pool", Config{MemoryMiB: 64, CPUCount: 2}, func(t *testing.T, root string, h *hookFS) {
			h.fail[CPUPoolPath] = syscall.EINVAL
		}, ErrCPUPool, 1, []string{"refused the pool", `"1,9"`}},
		{"clear fails", Config{MemoryMiB: 64, CPUCount: 2}, func(t *testing.T, root string, h *hookFS) {
			h.fail[hp(0, 2048)] = syscall.EBUSY
			h.failN[hp(0, 2048)] = 1
		}, ErrClearPage, 203, []string{hp(0, 2048), "cannot clear"}},
		{"set fails", Config{MemoryMiB: 64, CPUCount: 2}, func(t *testing.T, root string, h *hookFS) {
			h.fail[hp(0, 2048)] = syscall.EIO
			h.failN[hp(0, 2048)] = 2
		}, ErrSetPage, 204, []string{hp(0, 2048), `"32"`}},
		{"rollback fails", Config{MemoryMiB: 64, CPUCount: 2}, func(t *testing.T, root string, h *hookFS) {
			h.fail[hp(0, 2048)] = syscall.EIO
			h.failN[hp(0, 2048)] = 2
			h.fail[hp(0, 1048576)] = syscall.EIO
			h.failN[hp(0, 1048576)] = 2
		}, ErrRollbackPage, 204, []string{"set it by hand"}},
		{"no node dirs", Config{MemoryMiB: 64, CPUCount: 2}, func(t *testing.T, root string, h *hookFS) {
			os.RemoveAll(filepath.Join(root, NodeDir))
		}, ErrMissingNode, 201, []string{NodeDir}},
		{"no hugepage sizes", Config{MemoryMiB: 64, CPUPool: "1,9"}, func(t *testing.T, root string, h *hookFS) {
			os.RemoveAll(filepath.Join(root, NodeDir, "node0", "hugepages"))
		}, ErrMissingNode, 201, []string{"hugepage"}},
		{"topology unreadable", Config{MemoryMiB: 64, CPUCount: 2}, func(t *testing.T, root string, h *hookFS) {
			os.Remove(filepath.Join(root, CPUDir, "cpu3", "topology", "thread_siblings_list"))
		}, ErrTopology, 1, []string{"cpu3/topology/thread_siblings_list"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := fakeSysfs(t)
			h := newHook(root)
			// Previous reservations the allocator must restore on failure.
			for n := 0; n < 2; n++ {
				os.WriteFile(filepath.Join(root, hp(n, 2048)), []byte("7\n"), 0o644)
				os.WriteFile(filepath.Join(root, hp(n, 1048576)), []byte("0\n"), 0o644)
			}
			if tt.setup != nil {
				tt.setup(t, root, h)
			}
			_, err := Apply(context.Background(), h, tt.cfg)
			if !errors.Is(err, tt.kind) {
				t.Fatalf("err = %v, want %v", err, tt.kind)
			}
			if got := ExitCode(err); got != tt.exit {
				t.Errorf("ExitCode = %d, want %d", got, tt.exit)
			}
			for _, s := range tt.contains {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
			if tt.kind == ErrRollbackPage {
				return
			}
			for n := 0; n < 2; n++ {
				if b, err := os.ReadFile(filepath.Join(root, hp(n, 2048))); err == nil {
					if got := pages(t, h, n); got != "7/0" {
						t.Errorf("node%d hugepages %s after failure, want the previous 7/0", n, got)
					}
				} else if !os.IsNotExist(err) {
					t.Error(err, b)
				}
			}
		})
	}
}

func TestApplyUnchanged(t *testing.T) {
	root := fakeSysfs(t)
	h := newHook(root)
	if _, err := Apply(context.Background(), h, Config{MemoryMiB: 256, CPUCount: 4}); err != nil {
		t.Fatal(err)
	}
	// A restarted daemon with enclaves running: the driver refuses pool
	// changes, so nothing may be written.
	for _, p := range []string{CPUPoolPath, hp(0, 2048), hp(0, 1048576)} {
		h.fail[p] = syscall.EPERM
	}
	res, err := Apply(context.Background(), h, Config{MemoryMiB: 256, CPUCount: 4})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(Result{CPUs: []int{1, 2, 9, 10}, Node: 0, MemoryMiB: 256, Unchanged: true}, res); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	res, err = Apply(context.Background(), h, Config{MemoryMiB: 256, CPUPool: "1-2,9-10"})
	if err != nil || !res.Unchanged {
		t.Errorf("same pool by list: %+v, %v", res, err)
	}
	// More memory than reserved: must reconfigure, which the driver refuses.
	if _, err := Apply(context.Background(), h, Config{MemoryMiB: 512, CPUCount: 4}); !errors.Is(err, ErrCPUPool) {
		t.Errorf("more memory: %v", err)
	}
}

func TestApplyCancelled(t *testing.T) {
	h := newHook(fakeSysfs(t))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Apply(ctx, h, Config{MemoryMiB: 64, CPUCount: 2}); !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v", err)
	}
}
