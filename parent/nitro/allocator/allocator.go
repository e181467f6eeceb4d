package allocator

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/cloister/cloister/internal/cpulist"
)

// Sysfs is the allocator's view of /sys. Paths are absolute ("/sys/...").
type Sysfs interface {
	// ReadFile returns a file's content.
	ReadFile(path string) ([]byte, error)
	// WriteFile writes data to an existing file (no create).
	WriteFile(path string, data []byte) error
	// ReadDir returns the names in a directory.
	ReadDir(path string) ([]string, error)
}

// Dir is a [Sysfs] rooted at a directory: Dir("/") is the real host,
// Dir(t.TempDir()) a fake tree.
type Dir string

// ReadFile reads root+p.
func (d Dir) ReadFile(p string) ([]byte, error) { return os.ReadFile(d.join(p)) }

// WriteFile opens root+p write-only with truncation (never creating it)
// and writes data in one write, as sysfs attributes expect.
func (d Dir) WriteFile(p string, data []byte) error {
	f, err := os.OpenFile(d.join(p), os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, werr := f.Write(data)
	cerr := f.Close()
	if werr != nil {
		return werr
	}
	return cerr
}

// ReadDir lists root+p.
func (d Dir) ReadDir(p string) ([]string, error) {
	ents, err := os.ReadDir(d.join(p))
	if err != nil {
		return nil, err
	}
	names := make([]string, len(ents))
	for i, e := range ents {
		names[i] = e.Name()
	}
	return names, nil
}

func (d Dir) join(p string) string { return filepath.Join(string(d), filepath.FromSlash(p)) }

// Sysfs paths.
const (
	CPUPoolPath   = "/sys/module/nitro_enclaves/parameters/ne_cpus"
	OnlinePath    = "/sys/devices/system/cpu/online"
	CPUDir        = "/sys/devices/system/cpu"
	NodeDir       = "/sys/devices/system/node"
	hugepagesName = "hugepages"
)

// Sentinel errors; every error returned is an [*Error] wrapping one.
var (
	ErrEmptyCPUPool       = errors.New("allocator: no CPUs for the enclave pool")              // exit 200
	ErrMissingNode        = errors.New("allocator: NUMA node not found")                       // exit 201
	ErrInvalidNode        = errors.New("allocator: CPUs are not on one NUMA node")             // exit 202
	ErrClearPage          = errors.New("allocator: clearing hugepages failed")                 // exit 203
	ErrSetPage            = errors.New("allocator: reserving hugepages failed")                // exit 204
	ErrRollbackPage       = errors.New("allocator: rolling hugepages back failed")             // exit 205
	ErrInsufficientMemory = errors.New("allocator: not enough memory for hugepages")           // exit 206
	ErrInvalidConfig      = errors.New("allocator: invalid configuration")                     // exit 1
	ErrCPUPool            = errors.New("allocator: cannot read or write the enclave CPU pool") // exit 1
	ErrTopology           = errors.New("allocator: cannot read the CPU topology")              // exit 1
)

// exitCodes in ascending order: when an error matches several classes (a
// failure and its failed rollback), the first — the original failure — wins.
var exitCodes = []struct {
	err  error
	code int
}{
	{ErrEmptyCPUPool, 200}, {ErrMissingNode, 201}, {ErrInvalidNode, 202}, {ErrClearPage, 203},
	{ErrSetPage, 204}, {ErrRollbackPage, 205}, {ErrInsufficientMemory, 206},
}

// Error is an allocator failure: its class, the sysfs file and value
// involved (when any), what happened and how to fix it.
type Error struct {
	Kind  error  // one of the sentinels
	Path  string // sysfs file, or ""
	Value string // value read or written, or ""
	Msg   string // what happened and the fix
	Err   error  // underlying error, or nil
}

// Error returns "allocator: <class>: <what and fix> [<file> = <value>]: <cause>".
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Kind.Error())
	b.WriteString(": ")
	b.WriteString(e.Msg)
	if e.Path != "" {
		fmt.Fprintf(&b, " [%s", e.Path)
		if e.Value != "" {
			fmt.Fprintf(&b, " = %q", e.Value)
		}
		b.WriteString("]")
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Unwrap returns the class and the underlying error.
func (e *Error) Unwrap() []error {
	if e.Err != nil {
		return []error{e.Kind, e.Err}
	}
	return []error{e.Kind}
}

// ExitCode returns nitro-cli's allocator exit code for err (200–206), 1 for
// other errors and 0 for nil.
func ExitCode(err error) int {
	if err == nil {
		return 0
	}
	for _, e := range exitCodes {
		if errors.Is(err, e.err) {
			return e.code
		}
	}
	return 1
}

// Config is the enclave resource reservation (the daemon's memory_mib and
// cpu_count / cpu_pool).
type Config struct {
	// MemoryMiB is the memory to reserve as hugepages (> 0).
	MemoryMiB int
	// CPUCount picks that many CPUs (a multiple of the threads per core)
	// from full cores of one NUMA node, skipping CPU 0's core.
	CPUCount int
	// CPUPool names the CPUs in cpu-list syntax ("2,3,6-9"): full cores of
	// one NUMA node, without CPU 0 or its siblings.
	CPUPool string
}

// Result is what Apply reserved.
type Result struct {
	// CPUs is the pool written to ne_cpus, sorted.
	CPUs []int
	// Node is the NUMA node of the CPUs and hugepages (-1 if unknown when
	// Unchanged).
	Node int
	// Pages maps page size in bytes to the number of pages reserved on the
	// node (nil when Unchanged).
	Pages map[uint64]int
	// MemoryMiB is the hugepage memory on the node.
	MemoryMiB int
	// Unchanged is true when the existing pool and hugepages already
	// satisfied the configuration and nothing was written.
	Unchanged bool
	// Cores groups CPUs into physical cores (hyperthread siblings), which
	// the driver only accepts whole. It is nil when Unchanged: Linux hides
	// the topology of CPUs the pool has taken offline, so the caller keeps
	// the grouping from the run that wrote the pool.
	Cores [][]int
}

// Apply reserves the CPUs and memory of cfg:
//  1. if ne_cpus already holds a pool that matches cfg (same list, or same
//     count without CPU 0) and its node has ≥ MemoryMiB of hugepages, it
//     changes nothing (so a daemon restart with enclaves running works);
//  2. otherwise it writes "" to ne_cpus, which brings the pool CPUs back
//     online (the driver refuses while enclaves run);
//  3. it reads the online CPUs, their thread siblings and core ids, and the
//     CPUs of each NUMA node;
//  4. cpu_pool: checks the list is online, excludes CPU 0 and its siblings,
//     consists of full cores, and lies on one node; cpu_count: checks it is
//     a multiple of the threads per core and, node by node (lowest first),
//     takes the lowest full cores other than CPU 0's until the CPUs and the
//     hugepages both fit;
//  5. hugepages on the node: clears every size, rounds the memory up to the
//     smallest size, sets nr_hugepages largest size first and reads each
//     count back; on a shortfall it restores the previous counts;
//  6. writes the pool to ne_cpus (restoring the hugepages if that fails).
func Apply(ctx context.Context, sys Sysfs, cfg Config) (Result, error) {
	if err := cfg.validate(); err != nil {
		return Result{}, err
	}
	curRaw, err := sys.ReadFile(CPUPoolPath)
	if err != nil {
		return Result{}, &Error{Kind: ErrCPUPool, Path: CPUPoolPath, Msg: "the nitro_enclaves driver is not loaded; run modprobe nitro_enclaves on an instance launched with --enclave-options Enabled=true", Err: err}
	}
	cur, err := cpulist.Parse(string(curRaw))
	if err != nil {
		return Result{}, &Error{Kind: ErrCPUPool, Path: CPUPoolPath, Value: strings.TrimSpace(string(curRaw)), Msg: "unparsable CPU pool", Err: err}
	}
	if r, ok := satisfied(sys, cfg, cur); ok {
		return r, nil
	}
	if len(cur) > 0 {
		if err := sys.WriteFile(CPUPoolPath, []byte("\n")); err != nil {
			return Result{}, &Error{Kind: ErrCPUPool, Path: CPUPoolPath, Value: "", Msg: "cannot release the current pool " + cpulist.Format(cur) + "; the driver refuses while enclaves run: terminate them (cloister terminate-enclave --all) and retry", Err: err}
		}
	}
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}
	topo, err := readTopology(sys)
	if err != nil {
		return Result{}, err
	}
	var res Result
	if cfg.CPUPool != "" {
		res, err = applyPool(sys, cfg, topo)
	} else {
		res, err = applyCount(ctx, sys, cfg, topo)
	}
	if err != nil {
		return Result{}, err
	}
	res.Cores = topo.group(res.CPUs)
	return res, nil
}

// group splits cpus into their physical cores (thread siblings), in the
// order of their lowest CPU.
func (t *topology) group(cpus []int) [][]int {
	seen := map[int]bool{}
	var cores [][]int
	for _, c := range cpus {
		if seen[c] {
			continue
		}
		var core []int
		for _, s := range t.siblings[c] {
			seen[s] = true
			core = append(core, s)
		}
		if len(core) == 0 {
			core = []int{c}
			seen[c] = true
		}
		cores = append(cores, core)
	}
	return cores
}

func (c Config) validate() error {
	switch {
	case c.MemoryMiB <= 0:
		return &Error{Kind: ErrInvalidConfig, Msg: fmt.Sprintf("memory_mib %d: set memory_mib to the enclave memory budget in MiB", c.MemoryMiB)}
	case c.CPUCount < 0:
		return &Error{Kind: ErrInvalidConfig, Msg: fmt.Sprintf("cpu_count %d is negative", c.CPUCount)}
	case c.CPUCount > 0 && c.CPUPool != "":
		return &Error{Kind: ErrInvalidConfig, Msg: "set cpu_count or cpu_pool, not both"}
	case c.CPUCount == 0 && c.CPUPool == "":
		return &Error{Kind: ErrInvalidConfig, Msg: "set cpu_count (e.g. 2) or cpu_pool (e.g. \"2,3\") in the daemon config: the nitro backend needs a dedicated CPU pool"}
	}
	if c.CPUPool != "" {
		ids, err := cpulist.Parse(c.CPUPool)
		if err != nil || len(ids) == 0 {
			return &Error{Kind: ErrInvalidConfig, Value: c.CPUPool, Msg: "cpu_pool must be a non-empty cpu list such as \"2,3,6-9\"", Err: err}
		}
	}
	return nil
}

// topology is what the allocator knows about the CPUs.
type topology struct {
	online   []int
	isOnline map[int]bool
	siblings map[int][]int // cpu -> sorted siblings (itself included)
	coreID   map[int]int
	nodeOf   map[int]int
	nodes    []int // sorted node ids
}

func readTopology(sys Sysfs) (*topology, error) {
	raw, err := sys.ReadFile(OnlinePath)
	if err != nil {
		return nil, &Error{Kind: ErrTopology, Path: OnlinePath, Msg: "cannot list the online CPUs", Err: err}
	}
	online, err := cpulist.Parse(string(raw))
	if err != nil || len(online) == 0 {
		return nil, &Error{Kind: ErrTopology, Path: OnlinePath, Value: strings.TrimSpace(string(raw)), Msg: "no online CPUs listed", Err: err}
	}
	t := &topology{online: online, isOnline: map[int]bool{}, siblings: map[int][]int{}, coreID: map[int]int{}, nodeOf: map[int]int{}}
	for _, c := range online {
		t.isOnline[c] = true
	}
	for _, c := range online {
		p := fmt.Sprintf("%s/cpu%d/topology/thread_siblings_list", CPUDir, c)
		raw, err := sys.ReadFile(p)
		if err != nil {
			return nil, &Error{Kind: ErrTopology, Path: p, Msg: fmt.Sprintf("cannot read the hyperthread siblings of CPU %d", c), Err: err}
		}
		sib, err := cpulist.Parse(string(raw))
		if err != nil || !contains(sib, c) {
			return nil, &Error{Kind: ErrTopology, Path: p, Value: strings.TrimSpace(string(raw)), Msg: fmt.Sprintf("invalid sibling list for CPU %d", c), Err: err}
		}
		t.siblings[c] = sib
		p = fmt.Sprintf("%s/cpu%d/topology/core_id", CPUDir, c)
		if raw, err := sys.ReadFile(p); err == nil {
			if id, err := strconv.Atoi(strings.TrimSpace(string(raw))); err == nil {
				t.coreID[c] = id
			}
		}
	}
	names, err := sys.ReadDir(NodeDir)
	if err != nil {
		return nil, &Error{Kind: ErrMissingNode, Path: NodeDir, Msg: "cannot list the NUMA nodes", Err: err}
	}
	for _, n := range names {
		id, ok := nodeID(n)
		if !ok {
			continue
		}
		p := fmt.Sprintf("%s/node%d/cpulist", NodeDir, id)
		raw, err := sys.ReadFile(p)
		if err != nil {
			return nil, &Error{Kind: ErrMissingNode, Path: p, Msg: fmt.Sprintf("cannot read the CPUs of NUMA node %d", id), Err: err}
		}
		cpus, err := cpulist.Parse(string(raw))
		if err != nil {
			return nil, &Error{Kind: ErrMissingNode, Path: p, Value: strings.TrimSpace(string(raw)), Msg: fmt.Sprintf("invalid CPU list of NUMA node %d", id), Err: err}
		}
		for _, c := range cpus {
			t.nodeOf[c] = id
		}
		t.nodes = append(t.nodes, id)
	}
	sort.Ints(t.nodes)
	if len(t.nodes) == 0 {
		return nil, &Error{Kind: ErrMissingNode, Path: NodeDir, Msg: "no nodeN directory; the kernel needs CONFIG_NUMA sysfs nodes"}
	}
	return t, nil
}

func nodeID(name string) (int, bool) {
	s, ok := strings.CutPrefix(name, "node")
	if !ok || s == "" {
		return 0, false
	}
	id, err := strconv.Atoi(s)
	return id, err == nil && id >= 0
}

func contains(xs []int, x int) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

// forbidden returns CPU 0 and its siblings.
func (t *topology) forbidden() map[int]bool {
	f := map[int]bool{0: true}
	for _, c := range t.siblings[0] {
		f[c] = true
	}
	return f
}

func applyPool(sys Sysfs, cfg Config, t *topology) (Result, error) {
	ids, _ := cpulist.Parse(cfg.CPUPool)
	want := map[int]bool{}
	for _, c := range ids {
		want[c] = true
	}
	bad := t.forbidden()
	for _, c := range ids {
		if !t.isOnline[c] {
			return Result{}, &Error{Kind: ErrEmptyCPUPool, Path: OnlinePath, Value: cpulist.Format(t.online), Msg: fmt.Sprintf("cpu_pool names CPU %d, which is not online; pick online CPUs", c)}
		}
		if bad[c] {
			return Result{}, &Error{Kind: ErrInvalidConfig, Path: fmt.Sprintf("%s/cpu0/topology/thread_siblings_list", CPUDir), Value: cpulist.Format(t.siblings[0]),
				Msg: fmt.Sprintf("cpu_pool names CPU %d, but CPU 0 and its siblings stay with the parent; remove it from cpu_pool", c)}
		}
		for _, s := range t.siblings[c] {
			if !want[s] {
				return Result{}, &Error{Kind: ErrInvalidConfig, Path: fmt.Sprintf("%s/cpu%d/topology/thread_siblings_list", CPUDir, c), Value: cpulist.Format(t.siblings[c]),
					Msg: fmt.Sprintf("cpu_pool must hold full cores: CPU %d is listed but its sibling %d is not; add %d", c, s, s)}
			}
		}
	}
	node, ok := t.nodeOf[ids[0]]
	if !ok {
		return Result{}, &Error{Kind: ErrMissingNode, Path: NodeDir, Msg: fmt.Sprintf("no NUMA node lists CPU %d in its cpulist", ids[0])}
	}
	for _, c := range ids {
		if n, ok := t.nodeOf[c]; !ok || n != node {
			return Result{}, &Error{Kind: ErrInvalidNode, Path: fmt.Sprintf("%s/node%d/cpulist", NodeDir, node),
				Msg: fmt.Sprintf("cpu_pool spans NUMA nodes (CPU %d is on node %d, CPU %d is not); enclave CPUs must come from one node", ids[0], node, c)}
		}
	}
	pages, err := reserve(sys, node, cfg.MemoryMiB)
	if err != nil {
		return Result{}, err
	}
	return commit(sys, ids, node, pages)
}

// cores returns the full cores usable for enclaves on node: every sibling
// online and on the node, CPU 0's core excluded; each core sorted, cores
// ordered by lowest CPU.
func (t *topology) cores(node int) [][]int {
	bad := t.forbidden()
	seen := map[string]bool{}
	var out [][]int
	for _, c := range t.online {
		sib := t.siblings[c]
		key := cpulist.Format(sib)
		if seen[key] {
			continue
		}
		seen[key] = true
		ok := true
		for _, s := range sib {
			n, has := t.nodeOf[s]
			if bad[s] || !t.isOnline[s] || !has || n != node {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, sib)
		}
	}
	return out
}

func applyCount(ctx context.Context, sys Sysfs, cfg Config, t *topology) (Result, error) {
	tpc := len(t.siblings[t.online[0]])
	if s, ok := t.siblings[0]; ok {
		tpc = len(s)
	}
	if cfg.CPUCount%tpc != 0 {
		return Result{}, &Error{Kind: ErrInvalidConfig, Path: fmt.Sprintf("%s/cpu0/topology/thread_siblings_list", CPUDir), Value: cpulist.Format(t.siblings[0]),
			Msg: fmt.Sprintf("cpu_count %d is not a multiple of the %d threads per core; enclaves need full cores: use cpu_count %d or %d", cfg.CPUCount, tpc, cfg.CPUCount/tpc*tpc, (cfg.CPUCount/tpc+1)*tpc)}
	}
	var why []string
	memShort := false
	for _, node := range t.nodes {
		if err := ctx.Err(); err != nil {
			return Result{}, err
		}
		cores := t.cores(node)
		var ids []int
		for _, core := range cores {
			if len(ids) >= cfg.CPUCount {
				break
			}
			if len(core) != tpc {
				continue
			}
			ids = append(ids, core...)
		}
		if len(ids) < cfg.CPUCount {
			why = append(why, fmt.Sprintf("node %d has %d usable CPUs in full cores", node, len(ids)))
			continue
		}
		sort.Ints(ids)
		pages, err := reserve(sys, node, cfg.MemoryMiB)
		if errors.Is(err, ErrInsufficientMemory) {
			memShort = true
			why = append(why, fmt.Sprintf("node %d: %v", node, err))
			continue
		}
		if err != nil {
			return Result{}, err
		}
		return commit(sys, ids, node, pages)
	}
	kind, fix := ErrEmptyCPUPool, "lower cpu_count or use a larger instance (at most one NUMA node's CPUs minus CPU 0's core can go to enclaves)"
	if memShort {
		kind, fix = ErrInsufficientMemory, "lower memory_mib, free memory on the instance, or reboot to defragment memory"
	}
	return Result{}, &Error{Kind: kind, Path: NodeDir, Msg: fmt.Sprintf("no NUMA node can hold %d CPUs and %d MiB (%s); %s", cfg.CPUCount, cfg.MemoryMiB, strings.Join(why, "; "), fix)}
}

// commit writes the pool, restoring the hugepages when the driver refuses.
func commit(sys Sysfs, ids []int, node int, pages *reservation) (Result, error) {
	list := cpulist.Format(ids)
	if err := sys.WriteFile(CPUPoolPath, []byte(list+"\n")); err != nil {
		rerr := pages.rollback(sys)
		e := &Error{Kind: ErrCPUPool, Path: CPUPoolPath, Value: list, Msg: "the nitro_enclaves driver refused the pool (see dmesg)", Err: err}
		if rerr != nil {
			return Result{}, errors.Join(e, rerr)
		}
		return Result{}, e
	}
	return Result{CPUs: ids, Node: node, Pages: pages.got, MemoryMiB: pages.mib()}, nil
}

// satisfied reports whether the current pool already fits cfg.
func satisfied(sys Sysfs, cfg Config, cur []int) (Result, bool) {
	if len(cur) == 0 || contains(cur, 0) {
		return Result{}, false
	}
	if cfg.CPUPool != "" {
		want, _ := cpulist.Parse(cfg.CPUPool)
		if cpulist.Format(want) != cpulist.Format(cur) {
			return Result{}, false
		}
	} else if len(cur) != cfg.CPUCount {
		return Result{}, false
	}
	node := -1
	if names, err := sys.ReadDir(NodeDir); err == nil {
		for _, n := range names {
			id, ok := nodeID(n)
			if !ok {
				continue
			}
			raw, err := sys.ReadFile(fmt.Sprintf("%s/node%d/cpulist", NodeDir, id))
			if err != nil {
				continue
			}
			if cpus, err := cpulist.Parse(string(raw)); err == nil && contains(cpus, cur[0]) {
				node = id
			}
		}
	}
	if node < 0 {
		return Result{}, false
	}
	sizes, err := pageSizes(sys, node)
	if err != nil {
		return Result{}, false
	}
	var total uint64
	for _, s := range sizes {
		n, err := readCount(sys, countPath(node, s))
		if err != nil {
			return Result{}, false
		}
		total += uint64(n) * s
	}
	if total < uint64(cfg.MemoryMiB)<<20 {
		return Result{}, false
	}
	return Result{CPUs: cur, Node: node, MemoryMiB: int(total >> 20), Unchanged: true}, true
}

// reservation is the hugepage state of one node before and after.
type reservation struct {
	node int
	prev map[uint64]int
	got  map[uint64]int
}

func (r *reservation) mib() int {
	var t uint64
	for s, n := range r.got {
		t += s * uint64(n)
	}
	return int(t >> 20)
}

func hugeDir(node int) string { return fmt.Sprintf("%s/node%d/%s", NodeDir, node, hugepagesName) }

func countPath(node int, size uint64) string {
	return path.Join(hugeDir(node), fmt.Sprintf("hugepages-%dkB", size>>10), "nr_hugepages")
}

// pageSizes lists the node's hugepage sizes in bytes, largest first.
func pageSizes(sys Sysfs, node int) ([]uint64, error) {
	names, err := sys.ReadDir(hugeDir(node))
	if err != nil {
		return nil, &Error{Kind: ErrMissingNode, Path: hugeDir(node), Msg: fmt.Sprintf("NUMA node %d has no hugepage directory; the kernel needs CONFIG_HUGETLBFS", node), Err: err}
	}
	var sizes []uint64
	for _, n := range names {
		s, ok := strings.CutPrefix(n, "hugepages-")
		if !ok {
			continue
		}
		kb, err := strconv.ParseUint(strings.TrimSuffix(s, "kB"), 10, 64)
		if err != nil || !strings.HasSuffix(s, "kB") || kb == 0 {
			continue
		}
		sizes = append(sizes, kb<<10)
	}
	if len(sizes) == 0 {
		return nil, &Error{Kind: ErrMissingNode, Path: hugeDir(node), Msg: fmt.Sprintf("NUMA node %d offers no hugepage size", node)}
	}
	sort.Slice(sizes, func(i, j int) bool { return sizes[i] > sizes[j] })
	return sizes, nil
}

func readCount(sys Sysfs, p string) (int, error) {
	raw, err := sys.ReadFile(p)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(raw)))
}

// reserve sets the node's hugepages to cover memMiB (see Apply, step 5).
func reserve(sys Sysfs, node int, memMiB int) (*reservation, error) {
	sizes, err := pageSizes(sys, node)
	if err != nil {
		return nil, err
	}
	r := &reservation{node: node, prev: map[uint64]int{}, got: map[uint64]int{}}
	for _, s := range sizes {
		p := countPath(node, s)
		n, err := readCount(sys, p)
		if err != nil {
			return nil, &Error{Kind: ErrClearPage, Path: p, Msg: "cannot read the current hugepage count", Err: err}
		}
		r.prev[s] = n
	}
	for _, s := range sizes {
		p := countPath(node, s)
		if err := sys.WriteFile(p, []byte("0\n")); err != nil {
			e := &Error{Kind: ErrClearPage, Path: p, Value: "0", Msg: "cannot clear hugepages (are hugepages of this size in use by a running enclave or another program?)", Err: err}
			return nil, withRollback(sys, r, e)
		}
	}
	smallest := sizes[len(sizes)-1]
	need := (uint64(memMiB)<<20 + smallest - 1) / smallest * smallest
	left := need
	for _, s := range sizes {
		n := left / s
		if n == 0 {
			continue
		}
		p := countPath(node, s)
		v := strconv.FormatUint(n, 10)
		if err := sys.WriteFile(p, []byte(v+"\n")); err != nil {
			e := &Error{Kind: ErrSetPage, Path: p, Value: v, Msg: "cannot set the hugepage count", Err: err}
			return nil, withRollback(sys, r, e)
		}
		got, err := readCount(sys, p)
		if err != nil {
			e := &Error{Kind: ErrSetPage, Path: p, Msg: "cannot read back the hugepage count", Err: err}
			return nil, withRollback(sys, r, e)
		}
		if got < 0 || uint64(got) > n {
			got = int(min(uint64(max(got, 0)), n))
		}
		r.got[s] = got
		left -= uint64(got) * s
	}
	if left > 0 {
		e := &Error{Kind: ErrInsufficientMemory, Path: hugeDir(node),
			Msg: fmt.Sprintf("only %d of %d MiB could be reserved as hugepages on NUMA node %d; lower memory_mib, free memory, or reserve hugepages at boot (hugepagesz=1G hugepages=N on the kernel command line)", (need-left)>>20, need>>20, node)}
		return nil, withRollback(sys, r, e)
	}
	return r, nil
}

// rollback restores the counts read before reserve changed them.
func (r *reservation) rollback(sys Sysfs) error {
	var errs []error
	sizes := make([]uint64, 0, len(r.prev))
	for s := range r.prev {
		sizes = append(sizes, s)
	}
	sort.Slice(sizes, func(i, j int) bool { return sizes[i] > sizes[j] })
	for _, s := range sizes {
		p := countPath(r.node, s)
		v := strconv.Itoa(r.prev[s])
		if err := sys.WriteFile(p, []byte(v+"\n")); err != nil {
			errs = append(errs, &Error{Kind: ErrRollbackPage, Path: p, Value: v, Msg: "cannot restore the previous hugepage count; set it by hand", Err: err})
		}
	}
	return errors.Join(errs...)
}

func withRollback(sys Sysfs, r *reservation, e error) error {
	if rerr := r.rollback(sys); rerr != nil {
		return errors.Join(e, rerr)
	}
	return e
}
