package cgroups

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cloister/cloister/internal/cpulist"
)

// Errors returned by this package; concrete errors wrap one of them.
var (
	// ErrUnavailable reports a host without a usable cgroup layout or
	// without a controller the group needs.
	ErrUnavailable = errors.New("cgroups: not available")
	// ErrInvalid reports an invalid group id or limit.
	ErrInvalid = errors.New("cgroups: invalid argument")
	// ErrExists reports a group that already exists and still has processes.
	ErrExists = errors.New("cgroups: group already exists")
	// ErrBusy reports a group that could not be emptied or removed in time.
	ErrBusy = errors.New("cgroups: group busy")
)

// Mode is the cgroup layout of a host.
type Mode int

// Layouts.
const (
	// ModeUnavailable: no cgroup file system found.
	ModeUnavailable Mode = iota
	// ModeV1: only v1 hierarchies.
	ModeV1
	// ModeHybrid: v1 hierarchies plus cgroup2 at <root>/unified; v1 is used.
	ModeHybrid
	// ModeV2: <root> is cgroup2.
	ModeV2
)

// String returns "unavailable", "v1", "hybrid" or "v2".
func (m Mode) String() string {
	switch m {
	case ModeV1:
		return "v1"
	case ModeHybrid:
		return "hybrid"
	case ModeV2:
		return "v2"
	}
	return "unavailable"
}

// File system magic numbers (linux/magic.h).
const (
	cgroup2SuperMagic = 0x63677270
	cgroupSuperMagic  = 0x27e0eb
)

func fsMagic(path string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return 0, err
	}
	return int64(st.Type), nil
}

// DetectMode reports the layout under root (normally /sys/fs/cgroup): v2
// when root is a cgroup2 mount; hybrid when root/unified is cgroup2 and
// root/memory a v1 hierarchy; v1 when root/memory is a v1 hierarchy;
// otherwise unavailable (with an error wrapping [ErrUnavailable]).
func DetectMode(root string) (Mode, error) {
	magic, err := fsMagic(root)
	if err != nil {
		return ModeUnavailable, fmt.Errorf("%w: statfs %s: %w", ErrUnavailable, root, err)
	}
	if magic == cgroup2SuperMagic {
		return ModeV2, nil
	}
	v1 := false
	if m, err := fsMagic(filepath.Join(root, "memory")); err == nil && m == cgroupSuperMagic {
		v1 = true
	}
	unified := false
	if m, err := fsMagic(filepath.Join(root, "unified")); err == nil && m == cgroup2SuperMagic {
		unified = true
	}
	switch {
	case v1 && unified:
		return ModeHybrid, nil
	case v1:
		return ModeV1, nil
	}
	return ModeUnavailable, fmt.Errorf("%w: %s is neither cgroup2 nor holds a v1 memory hierarchy", ErrUnavailable, root)
}

// Config configures a [Manager]. The zero value is usable.
type Config struct {
	// Root is where the cgroup file systems are mounted; default /sys/fs/cgroup.
	Root string
	// Parent is the group (relative to each hierarchy's root) holding the
	// per-enclave groups; default "cloister".
	Parent string
	// Mode forces a layout; ModeUnavailable (the zero value) detects it
	// with [DetectMode].
	Mode Mode
}

// Manager creates, finds and removes groups under one parent.
type Manager struct {
	root   string
	parent string
	mode   Mode
	// mkdir creates a group directory; a seam so tests can emulate cgroupfs.
	mkdir func(path string) error
	// rmdir removes a group directory (seam, as mkdir).
	rmdir func(path string) error
	// write writes one value to a cgroup file; a seam so tests can record
	// and emulate cgroupfs.
	write func(path, value string) error
	// poll is the interval of the waits in KillAll and Remove.
	poll time.Duration
}

// New returns a Manager for cfg, detecting the layout unless cfg.Mode is set.
func New(cfg Config) (*Manager, error) {
	m := &Manager{root: cfg.Root, parent: cfg.Parent, mode: cfg.Mode,
		mkdir: func(p string) error { return os.Mkdir(p, 0o755) }, rmdir: syscall.Rmdir, write: writeValue, poll: 5 * time.Millisecond}
	if m.root == "" {
		m.root = "/sys/fs/cgroup"
	}
	if m.parent == "" {
		m.parent = "cloister"
	}
	if err := checkRel(m.parent); err != nil {
		return nil, err
	}
	if m.mode == ModeUnavailable {
		mode, err := DetectMode(m.root)
		if err != nil {
			return nil, err
		}
		m.mode = mode
	}
	return m, nil
}

// Mode returns the layout the manager uses.
func (m *Manager) Mode() Mode { return m.mode }

func (m *Manager) v2() bool { return m.mode == ModeV2 }

func checkRel(p string) error {
	if p == "" || filepath.IsAbs(p) || filepath.Clean(p) != p || p == ".." || strings.HasPrefix(p, "../") {
		return fmt.Errorf("%w: parent %q must be a clean relative path", ErrInvalid, p)
	}
	return nil
}

// CheckID reports whether id can name a group: 1–128 characters from
// [A-Za-z0-9._-], not "." or "..".
func CheckID(id string) error {
	if id == "" || len(id) > 128 || id == "." || id == ".." {
		return fmt.Errorf("%w: group id %q", ErrInvalid, id)
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("%w: group id %q has character %q", ErrInvalid, id, c)
		}
	}
	return nil
}

// Limits are the resources of one group. Zero fields mean "no limit" /
// "inherit".
type Limits struct {
	// MemoryBytes limits memory (page cache and tmpfs included); swap is
	// disabled where the kernel accounts it. 0 = unlimited.
	MemoryBytes int64
	// CPUs are the CPUs the group may run on; nil = the parent's.
	CPUs []int
	// PidsMax limits the number of tasks (threads count); 0 = unlimited.
	PidsMax int
	// CPUQuota and CPUPeriod set a CFS bandwidth limit (quota per period);
	// CPUQuota 0 = none. CPUPeriod defaults to 100ms.
	CPUQuota, CPUPeriod time.Duration
	// Devices are further v1 device rules to allow beyond the fixed list,
	// in devices.allow syntax ("c 10:232 rwm" for /dev/kvm).
	Devices []string
}

// KVMDevice is the device rule for /dev/kvm (character device 10:232).
const KVMDevice = "c 10:232 rwm"

// v1Controllers are the hierarchies every v1 group joins; "cpu" is added
// when a quota is set.
var v1Controllers = []string{"memory", "cpuset", "pids", "devices", "freezer"}

// allowedDevices is the v1 device allow-list: /dev/null, zero, full,
// random, urandom, tty, ptmx and the pseudo-terminals of a private devpts.
var allowedDevices = []string{
	"c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm", "c 5:0 rwm", "c 5:2 rwm", "c 136:* rwm",
}

// Group is one enclave's control group (one directory per v1 hierarchy,
// or one v2 directory).
type Group struct {
	m    *Manager
	id   string
	dirs map[string]string // v1: controller → directory; v2: "" → directory
}

// ID returns the group's id.
func (g *Group) ID() string { return g.id }

// Dirs returns the group's directories: controller → path on v1, a
// single entry with key "" on v2.
func (g *Group) Dirs() map[string]string {
	out := make(map[string]string, len(g.dirs))
	for k, v := range g.dirs {
		out[k] = v
	}
	return out
}

func (m *Manager) group(id string, cpu bool) *Group {
	g := &Group{m: m, id: id, dirs: map[string]string{}}
	if m.v2() {
		g.dirs[""] = filepath.Join(m.root, m.parent, id)
		return g
	}
	ctrls := v1Controllers
	if cpu {
		ctrls = append(ctrls[:len(ctrls):len(ctrls)], "cpu")
	}
	for _, c := range ctrls {
		g.dirs[c] = filepath.Join(m.root, c, m.parent, id)
	}
	return g
}

// Open returns the existing group id (for stats, killing or removal after
// a restart); it checks that its directories exist.
func (m *Manager) Open(id string) (*Group, error) {
	if err := CheckID(id); err != nil {
		return nil, err
	}
	g := m.group(id, false)
	if !m.v2() {
		if _, err := os.Stat(filepath.Join(m.root, "cpu", m.parent, id)); err == nil {
			g = m.group(id, true)
		}
	}
	for _, d := range g.dirs {
		if _, err := os.Stat(d); err != nil {
			return nil, fmt.Errorf("cgroups: open %s: %w", id, err)
		}
	}
	return g, nil
}

// Create makes the group id with limits lim. A leftover empty group of
// the same id is removed first; one that still has processes is an error
// wrapping [ErrExists]. On v1 it joins memory, cpuset, pids, devices,
// freezer (and cpu with a quota): memory.limit_in_bytes and, when swap is
// accounted, memory.memsw.limit_in_bytes to the same value; the OOM killer
// stays enabled (memory.oom_control=0); cpuset.cpus = lim.CPUs (or the
// parent's) and cpuset.mems = the parent's, after filling the parent's
// empty cpuset from its own parent; pids.max; devices deny-all plus the
// allow-list; cpu.cfs_period_us/cfs_quota_us. On v2 it enables memory,
// pids, cpuset (and cpu) in the subtree_control of the root and the
// parent, then writes memory.max, memory.swap.max=0, cpuset.cpus, pids.max
// and cpu.max. On failure nothing is left behind.
func (m *Manager) Create(ctx context.Context, id string, lim Limits) (*Group, error) {
	if err := CheckID(id); err != nil {
		return nil, err
	}
	if lim.MemoryBytes < 0 || lim.PidsMax < 0 || lim.CPUQuota < 0 || lim.CPUPeriod < 0 {
		return nil, fmt.Errorf("%w: negative limit", ErrInvalid)
	}
	if lim.CPUQuota > 0 && lim.CPUPeriod == 0 {
		lim.CPUPeriod = 100 * time.Millisecond
	}
	if lim.CPUQuota > 0 && (lim.CPUQuota < time.Millisecond || lim.CPUPeriod < time.Millisecond || lim.CPUPeriod > time.Second) {
		return nil, fmt.Errorf("%w: cpu quota %v per %v (quota ≥ 1ms, period 1ms–1s)", ErrInvalid, lim.CPUQuota, lim.CPUPeriod)
	}
	for _, c := range lim.CPUs {
		if c < 0 || c > cpulist.MaxCPU {
			return nil, fmt.Errorf("%w: cpu %d", ErrInvalid, c)
		}
	}
	if old := m.group(id, true); old.anyExists() {
		if procs, _ := old.Procs(); len(procs) > 0 {
			return nil, fmt.Errorf("%w: %s has %d processes", ErrExists, id, len(procs))
		}
		if err := old.Remove(ctx); err != nil {
			return nil, err
		}
	}
	g := m.group(id, lim.CPUQuota > 0)
	var err error
	if m.v2() {
		err = m.createV2(g, lim)
	} else {
		err = m.createV1(g, lim)
	}
	if err != nil {
		if rerr := g.rmdirAll(); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return nil, err
	}
	return g, nil
}

func (m *Manager) mkdirExist(p string) error {
	if err := m.mkdir(p); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("cgroups: mkdir %s: %w", p, err)
	}
	return nil
}

func (m *Manager) createV1(g *Group, lim Limits) error {
	for _, ctrl := range sortedKeys(g.dirs) {
		base := filepath.Join(m.root, ctrl)
		if _, err := os.Stat(base); err != nil {
			return fmt.Errorf("%w: v1 controller %s: %w", ErrUnavailable, ctrl, err)
		}
		// Every level of Parent, then the group itself.
		dir := base
		for _, elem := range strings.Split(m.parent, "/") {
			dir = filepath.Join(dir, elem)
			if err := m.mkdirExist(dir); err != nil {
				return err
			}
			if ctrl == "cpuset" {
				if err := m.inheritCpuset(dir); err != nil {
					return err
				}
			}
		}
		if err := m.mkdir(g.dirs[ctrl]); err != nil {
			return fmt.Errorf("cgroups: mkdir %s: %w", g.dirs[ctrl], err)
		}
	}
	d := g.dirs
	// memory
	if lim.MemoryBytes > 0 {
		v := strconv.FormatInt(lim.MemoryBytes, 10)
		if err := m.writeFile(d["memory"], "memory.limit_in_bytes", v); err != nil {
			return err
		}
		if exists(d["memory"], "memory.memsw.limit_in_bytes") {
			if err := m.writeFile(d["memory"], "memory.memsw.limit_in_bytes", v); err != nil {
				return err
			}
		}
	}
	if exists(d["memory"], "memory.oom_control") {
		if err := m.writeFile(d["memory"], "memory.oom_control", "0"); err != nil {
			return err
		}
	}
	// cpuset
	parent := filepath.Dir(d["cpuset"])
	cpus := cpulist.Format(lim.CPUs)
	if cpus == "" {
		v, err := readFile(parent, "cpuset.cpus")
		if err != nil {
			return err
		}
		cpus = v
	}
	mems, err := readFile(parent, "cpuset.mems")
	if err != nil {
		return err
	}
	if err := m.writeFile(d["cpuset"], "cpuset.cpus", cpus); err != nil {
		return err
	}
	if err := m.writeFile(d["cpuset"], "cpuset.mems", mems); err != nil {
		return err
	}
	// pids
	if err := m.writeFile(d["pids"], "pids.max", pidsMax(lim.PidsMax)); err != nil {
		return err
	}
	// devices
	if err := m.writeFile(d["devices"], "devices.deny", "a"); err != nil {
		return err
	}
	for _, a := range append(allowedDevices[:len(allowedDevices):len(allowedDevices)], lim.Devices...) {
		if err := m.writeFile(d["devices"], "devices.allow", a); err != nil {
			return err
		}
	}
	// cpu
	if lim.CPUQuota > 0 {
		if err := m.writeFile(d["cpu"], "cpu.cfs_period_us", strconv.FormatInt(lim.CPUPeriod.Microseconds(), 10)); err != nil {
			return err
		}
		if err := m.writeFile(d["cpu"], "cpu.cfs_quota_us", strconv.FormatInt(lim.CPUQuota.Microseconds(), 10)); err != nil {
			return err
		}
	}
	return nil
}

// inheritCpuset fills an empty v1 cpuset.cpus/cpuset.mems of dir from its
// parent (a v1 cpuset cannot hold tasks or children with empty sets).
func (m *Manager) inheritCpuset(dir string) error {
	for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
		v, err := readFile(dir, f)
		if err != nil {
			return err
		}
		if v != "" {
			continue
		}
		pv, err := readFile(filepath.Dir(dir), f)
		if err != nil {
			return err
		}
		if err := m.writeFile(dir, f, pv); err != nil {
			return err
		}
	}
	return nil
}

func (m *Manager) createV2(g *Group, lim Limits) error {
	need := []string{"memory", "pids", "cpuset"}
	if lim.CPUQuota > 0 {
		need = append(need, "cpu")
	}
	avail, err := readFile(m.root, "cgroup.controllers")
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	have := map[string]bool{}
	for _, c := range strings.Fields(avail) {
		have[c] = true
	}
	var missing []string
	for _, c := range need {
		if !have[c] {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: cgroup2 at %s lacks controllers %s", ErrUnavailable, m.root, strings.Join(missing, ", "))
	}
	// Enable the controllers from the root down to the parent, creating
	// the parent levels on the way.
	dir := m.root
	for _, elem := range strings.Split(m.parent, "/") {
		if err := m.enableV2(dir, need); err != nil {
			return err
		}
		dir = filepath.Join(dir, elem)
		if err := m.mkdirExist(dir); err != nil {
			return err
		}
	}
	if err := m.enableV2(dir, need); err != nil {
		return err
	}
	gd := g.dirs[""]
	if err := m.mkdir(gd); err != nil {
		return fmt.Errorf("cgroups: mkdir %s: %w", gd, err)
	}
	if lim.MemoryBytes > 0 {
		if err := m.writeFile(gd, "memory.max", strconv.FormatInt(lim.MemoryBytes, 10)); err != nil {
			return err
		}
	}
	if exists(gd, "memory.swap.max") {
		if err := m.writeFile(gd, "memory.swap.max", "0"); err != nil {
			return err
		}
	}
	if cpus := cpulist.Format(lim.CPUs); cpus != "" {
		if err := m.writeFile(gd, "cpuset.cpus", cpus); err != nil {
			return err
		}
	}
	if err := m.writeFile(gd, "pids.max", pidsMax(lim.PidsMax)); err != nil {
		return err
	}
	if lim.CPUQuota > 0 {
		v := fmt.Sprintf("%d %d", lim.CPUQuota.Microseconds(), lim.CPUPeriod.Microseconds())
		if err := m.writeFile(gd, "cpu.max", v); err != nil {
			return err
		}
	}
	return nil
}

// enableV2 writes "+ctrl" for each controller not yet in dir's
// cgroup.subtree_control.
func (m *Manager) enableV2(dir string, ctrls []string) error {
	cur, err := readFile(dir, "cgroup.subtree_control")
	if err != nil {
		return err
	}
	on := map[string]bool{}
	for _, c := range strings.Fields(cur) {
		on[c] = true
	}
	for _, c := range ctrls {
		if on[c] {
			continue
		}
		if err := m.writeFile(dir, "cgroup.subtree_control", "+"+c); err != nil {
			return err
		}
	}
	return nil
}

func pidsMax(n int) string {
	if n <= 0 {
		return "max"
	}
	return strconv.Itoa(n)
}

// Attach moves process pid (all its threads) into the group: on v1 into
// every hierarchy of the group, on v2 into its directory.
func (g *Group) Attach(pid int) error {
	if pid <= 0 {
		return fmt.Errorf("%w: pid %d", ErrInvalid, pid)
	}
	for _, k := range sortedKeys(g.dirs) {
		if err := g.m.writeFile(g.dirs[k], "cgroup.procs", strconv.Itoa(pid)); err != nil {
			return err
		}
	}
	return nil
}

// Procs returns the ids (in the host's pid namespace) of the processes in
// the group, sorted, without duplicates across v1 hierarchies.
func (g *Group) Procs() ([]int, error) {
	seen := map[int]bool{}
	for _, k := range sortedKeys(g.dirs) {
		v, err := readFile(g.dirs[k], "cgroup.procs")
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return nil, err
		}
		for _, f := range strings.Fields(v) {
			pid, err := strconv.Atoi(f)
			if err != nil {
				return nil, fmt.Errorf("cgroups: %s/cgroup.procs: bad pid %q", g.dirs[k], f)
			}
			seen[pid] = true
		}
	}
	out := make([]int, 0, len(seen))
	for p := range seen {
		out = append(out, p)
	}
	sort.Ints(out)
	return out, nil
}

// Stats are a group's resource counters.
type Stats struct {
	// MemoryUsage is the current memory use in bytes.
	MemoryUsage uint64
	// MemoryPeak is the highest memory use seen (0 if the kernel does not tell).
	MemoryPeak uint64
	// MemoryLimitHits counts allocations that hit the limit (v1 the larger
	// of memory.failcnt and memory.memsw.failcnt, v2 memory.events "max");
	// informational: some kernels leave the v1 counters at 0 even when the
	// OOM killer ran, so OOMKills is the reliable signal.
	MemoryLimitHits uint64
	// OOMKills counts processes killed by the OOM killer in the group.
	OOMKills uint64
	// Pids is the current number of tasks.
	Pids uint64
	// PidsLimitHits counts forks refused by pids.max (pids.events "max").
	PidsLimitHits uint64
}

// Stats reads the group's counters.
func (g *Group) Stats() (Stats, error) {
	var s Stats
	var err error
	memDir, pidsDir := g.dirs[""], g.dirs[""]
	if !g.m.v2() {
		memDir, pidsDir = g.dirs["memory"], g.dirs["pids"]
	}
	read := func(dir, file string, dst *uint64) {
		if err != nil {
			return
		}
		var v string
		if v, err = readFile(dir, file); err != nil {
			return
		}
		*dst, err = strconv.ParseUint(v, 10, 64)
		if err != nil {
			err = fmt.Errorf("cgroups: %s/%s: %w", dir, file, err)
		}
	}
	key := func(dir, file, k string, dst *uint64) {
		if err != nil {
			return
		}
		*dst, err = readKey(dir, file, k)
	}
	if g.m.v2() {
		read(memDir, "memory.current", &s.MemoryUsage)
		if exists(memDir, "memory.peak") {
			read(memDir, "memory.peak", &s.MemoryPeak)
		}
		key(memDir, "memory.events", "max", &s.MemoryLimitHits)
		key(memDir, "memory.events", "oom_kill", &s.OOMKills)
	} else {
		read(memDir, "memory.usage_in_bytes", &s.MemoryUsage)
		read(memDir, "memory.max_usage_in_bytes", &s.MemoryPeak)
		read(memDir, "memory.failcnt", &s.MemoryLimitHits)
		if exists(memDir, "memory.memsw.failcnt") {
			// With memsw = limit, the memory+swap counter usually hits first.
			var sw uint64
			read(memDir, "memory.memsw.failcnt", &sw)
			s.MemoryLimitHits = max(s.MemoryLimitHits, sw)
		}
		key(memDir, "memory.oom_control", "oom_kill", &s.OOMKills)
	}
	read(pidsDir, "pids.current", &s.Pids)
	key(pidsDir, "pids.events", "max", &s.PidsLimitHits)
	if err != nil {
		return Stats{}, err
	}
	return s, nil
}

// KillAll kills every process in the group and waits until it is empty
// or ctx is done. v2 with cgroup.kill: writes 1 to it (the kernel kills
// atomically, new forks included). Otherwise the group is frozen (v1
// freezer.state=FROZEN, v2 cgroup.freeze=1) so no process can fork or
// exit, every listed process gets SIGKILL, and the group is thawed; this
// repeats until cgroup.procs is empty.
func (g *Group) KillAll(ctx context.Context) error {
	if g.m.v2() && exists(g.dirs[""], "cgroup.kill") {
		if err := g.m.writeFile(g.dirs[""], "cgroup.kill", "1"); err != nil {
			return err
		}
		return g.waitEmpty(ctx)
	}
	for {
		procs, err := g.Procs()
		if err != nil {
			return err
		}
		if len(procs) == 0 {
			return nil
		}
		if err := g.freeze(ctx, true); err != nil {
			return err
		}
		procs, err = g.Procs()
		if err == nil {
			for _, p := range procs {
				if kerr := syscall.Kill(p, syscall.SIGKILL); kerr != nil && !errors.Is(kerr, syscall.ESRCH) {
					err = fmt.Errorf("cgroups: kill %d: %w", p, kerr)
					break
				}
			}
		}
		if terr := g.freeze(ctx, false); terr != nil && err == nil {
			err = terr
		}
		if err != nil {
			return err
		}
		if err := g.waitEmpty(ctx); err == nil {
			return nil
		} else if ctx.Err() != nil {
			return err
		}
	}
}

// freeze freezes (on=true) or thaws the group and waits for the state.
func (g *Group) freeze(ctx context.Context, on bool) error {
	if g.m.v2() {
		v := "0"
		if on {
			v = "1"
		}
		if err := g.m.writeFile(g.dirs[""], "cgroup.freeze", v); err != nil {
			return err
		}
		return g.waitFor(ctx, func() (bool, error) {
			f, err := readKey(g.dirs[""], "cgroup.events", "frozen")
			return (f == 1) == on, err
		})
	}
	dir := g.dirs["freezer"]
	want := "THAWED"
	if on {
		want = "FROZEN"
	}
	if err := g.m.writeFile(dir, "freezer.state", want); err != nil {
		return err
	}
	return g.waitFor(ctx, func() (bool, error) {
		s, err := readFile(dir, "freezer.state")
		return s == want, err
	})
}

// waitEmpty waits for cgroup.procs to be empty in every directory.
func (g *Group) waitEmpty(ctx context.Context) error {
	return g.waitFor(ctx, func() (bool, error) {
		procs, err := g.Procs()
		return len(procs) == 0, err
	})
}

// waitFor polls cond until it holds, fails, or ctx is done (ErrBusy).
func (g *Group) waitFor(ctx context.Context, cond func() (bool, error)) error {
	t := time.NewTicker(g.m.poll)
	defer t.Stop()
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %s: %w", ErrBusy, g.id, ctx.Err())
		case <-t.C:
		}
	}
}

// Remove kills whatever still runs in the group ([Group.KillAll]) and
// removes its directories, retrying rmdir while the kernel reports EBUSY
// until ctx is done. Directories already gone are not an error.
func (g *Group) Remove(ctx context.Context) error {
	if err := g.KillAll(ctx); err != nil {
		return err
	}
	return g.waitFor(ctx, func() (bool, error) {
		err := g.rmdirAll()
		if errors.Is(err, syscall.EBUSY) {
			return false, nil
		}
		return err == nil, err
	})
}

func (g *Group) anyExists() bool {
	for _, d := range g.dirs {
		if _, err := os.Stat(d); err == nil {
			return true
		}
	}
	return false
}

// rmdirAll removes every directory of the group that still exists.
func (g *Group) rmdirAll() error {
	var errs []error
	for _, k := range sortedKeys(g.dirs) {
		if err := g.m.rmdir(g.dirs[k]); err != nil && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("cgroups: rmdir %s: %w", g.dirs[k], err))
		}
	}
	return errors.Join(errs...)
}

// Cleanup removes every group under the parent whose id starts with
// prefix (all groups for ""), killing their processes first, and returns
// the ids removed. It is meant for a daemon restarting after a crash.
func (m *Manager) Cleanup(ctx context.Context, prefix string) ([]string, error) {
	var bases []string
	if m.v2() {
		bases = []string{filepath.Join(m.root, m.parent)}
	} else {
		for _, c := range append(v1Controllers, "cpu") {
			bases = append(bases, filepath.Join(m.root, c, m.parent))
		}
	}
	ids := map[string]bool{}
	for _, b := range bases {
		ents, err := os.ReadDir(b)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return nil, fmt.Errorf("cgroups: cleanup: %w", err)
		}
		for _, e := range ents {
			if e.IsDir() && strings.HasPrefix(e.Name(), prefix) && CheckID(e.Name()) == nil {
				ids[e.Name()] = true
			}
		}
	}
	var removed []string
	var errs []error
	for _, id := range sortedKeys(ids) {
		// Build the group from every hierarchy, whether or not all of
		// them still hold a directory.
		g := m.group(id, true)
		if err := g.Remove(ctx); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, id)
	}
	return removed, errors.Join(errs...)
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func exists(dir, file string) bool {
	_, err := os.Stat(filepath.Join(dir, file))
	return err == nil
}

// writeFile writes value to the cgroup interface file dir/file.
func (m *Manager) writeFile(dir, file, value string) error {
	return m.write(filepath.Join(dir, file), value)
}

// writeValue writes value to an existing cgroup interface file in one
// write(2), as cgroupfs requires.
func writeValue(p, value string) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return fmt.Errorf("cgroups: write %s: %w", p, err)
	}
	_, err = f.Write([]byte(value))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("cgroups: write %q to %s: %w", value, p, err)
	}
	return nil
}

// readFile returns the content of a cgroup interface file, trimmed.
func readFile(dir, file string) (string, error) {
	p := filepath.Join(dir, file)
	b, err := os.ReadFile(p)
	if err != nil {
		return "", fmt.Errorf("cgroups: read %s: %w", p, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// readKey returns the value of "key N" in a flat-keyed file (0 if absent).
func readKey(dir, file, key string) (uint64, error) {
	v, err := readFile(dir, file)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(v, "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == key {
			n, err := strconv.ParseUint(f[1], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("cgroups: %s/%s: %s: %w", dir, file, key, err)
			}
			return n, nil
		}
	}
	return 0, nil
}
