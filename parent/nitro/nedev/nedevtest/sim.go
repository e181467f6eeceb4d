package nedevtest

import (
	"context"
	"sort"
	"sync"
	"syscall"

	"github.com/cloister/cloister/parent/nitro/nedev"
)

// MemInfo describes the memory behind a user-space range, as the real
// driver learns it from the page tables.
type MemInfo struct {
	// HugeTLB is true when the range is backed by hugetlb pages.
	HugeTLB bool
	// PageSize is the backing page size in bytes.
	PageSize uint64
	// Node is the NUMA node of the backing pages.
	Node int
}

// MemoryInfo lets the simulated driver look at the caller's mappings.
// hugepagetest.Fake implements it.
type MemoryInfo interface {
	// MemInfo describes [addr, addr+size); ok is false when the range is
	// not entirely inside one live mapping of the caller.
	MemInfo(addr, size uint64) (info MemInfo, ok bool)
}

// SimConfig describes the simulated host. Zero fields take the documented
// defaults.
type SimConfig struct {
	// Cores is the CPU pool (ne_cpus) grouped by physical core: each entry
	// lists the hyperthread siblings of one core. Default {{1,5},{2,6},{3,7}}
	// (an 8-vCPU instance with 2 threads per core; core 0 = {0,4} is the
	// parent's). An empty non-nil slice means an empty pool.
	Cores [][]int
	// NumCPUs is the parent instance's CPU count; vCPU ids ≥ NumCPUs are
	// NE_ERR_INVALID_VCPU. Default: highest pool CPU + 1, at least 8.
	NumCPUs int
	// Node is the NUMA node of the pool's CPUs (default 0).
	Node int
	// MaxRegions is the per-enclave memory region limit the hypervisor
	// reports (default 256).
	MaxRegions int
	// Memory resolves user addresses; without it every region is
	// NE_ERR_INVALID_MEM_REGION_ADDR.
	Memory MemoryInfo
	// LoadOffset is what NE_GET_IMAGE_LOAD_INFO returns (default 8 MiB).
	LoadOffset uint64
	// FirstAutoCID is the first CID handed out for CID 0 (default 16).
	FirstAutoCID uint64
}

// SimEnclave is a snapshot of one simulated enclave.
type SimEnclave struct {
	SlotUID   uint64
	CPUs      []int // sorted
	Regions   []nedev.UserMemoryRegion
	MemBytes  uint64
	Started   bool
	Debug     bool
	CID       uint64
	HungUp    bool
	ClosedFD  bool
	ImageInfo bool // NE_GET_IMAGE_LOAD_INFO was called
}

// Sim is a simulated nitro_enclaves driver. It is safe for concurrent use.
type Sim struct {
	mu       sync.Mutex
	cfg      SimConfig
	coreOf   map[int]int // cpu -> core index
	owner    map[int]*simEnclave
	enclaves []*simEnclave
	devFDs   int
	nextSlot uint64
	inject   map[nedev.Op][]syscall.Errno
}

// NewSim returns a simulated driver for cfg.
func NewSim(cfg SimConfig) *Sim {
	if cfg.Cores == nil {
		cfg.Cores = [][]int{{1, 5}, {2, 6}, {3, 7}}
	}
	if cfg.NumCPUs == 0 {
		cfg.NumCPUs = 8
		for _, c := range cfg.Cores {
			for _, id := range c {
				cfg.NumCPUs = max(cfg.NumCPUs, id+1)
			}
		}
	}
	if cfg.MaxRegions == 0 {
		cfg.MaxRegions = 256
	}
	if cfg.LoadOffset == 0 {
		cfg.LoadOffset = nedev.EIFLoadOffset
	}
	if cfg.FirstAutoCID == 0 {
		cfg.FirstAutoCID = 16
	}
	s := &Sim{cfg: cfg, coreOf: map[int]int{}, owner: map[int]*simEnclave{}, nextSlot: 1, inject: map[nedev.Op][]syscall.Errno{}}
	for i, c := range cfg.Cores {
		for _, id := range c {
			s.coreOf[id] = i
		}
	}
	return s
}

// Inject makes the next call of op fail with errno (queued: several
// injections for one op fail consecutive calls). OpOpen injections make
// Open fail.
func (s *Sim) Inject(op nedev.Op, errno syscall.Errno) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.inject[op] = append(s.inject[op], errno)
}

func (s *Sim) injected(op nedev.Op) error {
	q := s.inject[op]
	if len(q) == 0 {
		return nil
	}
	s.inject[op] = q[1:]
	return nedev.NewIoctlError(op, q[0])
}

// Open is an [nedev.Opener]: it ignores path and returns a device handle (one
// open fd until closed).
func (s *Sim) Open(path string) (nedev.Device, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.injected(nedev.OpOpen); err != nil {
		return nil, err
	}
	s.devFDs++
	return &simDevice{s: s}, nil
}

// OpenFDs returns the number of device and enclave handles not yet closed.
func (s *Sim) OpenFDs() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.devFDs
	for _, e := range s.enclaves {
		if !e.closed {
			n++
		}
	}
	return n
}

// UsedCPUs returns the pool CPUs held by enclaves whose fd is open, sorted.
func (s *Sim) UsedCPUs() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []int
	for _, e := range s.enclaves {
		if !e.closed {
			out = append(out, e.cpus...)
		}
	}
	sort.Ints(out)
	return out
}

// Enclaves returns snapshots of every enclave ever created, in creation order.
func (s *Sim) Enclaves() []SimEnclave {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]SimEnclave, 0, len(s.enclaves))
	for _, e := range s.enclaves {
		cpus := append([]int(nil), e.cpus...)
		sort.Ints(cpus)
		out = append(out, SimEnclave{
			SlotUID: e.slot, CPUs: cpus, Regions: append([]nedev.UserMemoryRegion(nil), e.regions...), MemBytes: e.mem,
			Started: e.started, Debug: e.debug, CID: e.cid, HungUp: e.hungUp, ClosedFD: e.closed, ImageInfo: e.imageInfo,
		})
	}
	return out
}

// Exit ends the running enclave with the given CID as if it had exited or
// crashed: its fd reports EPOLLHUP. It reports whether such an enclave
// exists.
func (s *Sim) Exit(cid uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.enclaves {
		if e.started && !e.closed && e.cid == cid && !e.hungUp {
			e.hungUp = true
			close(e.hup)
			return true
		}
	}
	return false
}

type simDevice struct {
	s      *Sim
	closed bool
}

type simEnclave struct {
	s         *Sim
	slot      uint64
	cpus      []int
	cores     map[int]bool
	regions   []nedev.UserMemoryRegion
	mem       uint64
	started   bool
	debug     bool
	cid       uint64
	hungUp    bool
	hup       chan struct{}
	closed    bool
	imageInfo bool
}

func (d *simDevice) CreateVM() (nedev.Enclave, uint64, error) {
	s := d.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if d.closed {
		return nil, 0, nedev.ErrClosed
	}
	if err := s.injected(nedev.OpCreateVM); err != nil {
		return nil, 0, err
	}
	if len(s.coreOf) == 0 {
		return nil, 0, nedev.NewIoctlError(nedev.OpCreateVM, syscall.Errno(nedev.ErrNoCPUsAvailInPool))
	}
	e := &simEnclave{s: s, slot: s.nextSlot, cores: map[int]bool{}, hup: make(chan struct{})}
	s.nextSlot++
	s.enclaves = append(s.enclaves, e)
	return e, e.slot, nil
}

func (d *simDevice) Close() error {
	d.s.mu.Lock()
	defer d.s.mu.Unlock()
	if d.closed {
		return nedev.ErrClosed
	}
	d.closed = true
	d.s.devFDs--
	return nil
}

func errno(op nedev.Op, e nedev.Errno) error { return nedev.NewIoctlError(op, syscall.Errno(e)) }

// check is the common prologue of the setup ioctls.
func (e *simEnclave) check(op nedev.Op) error {
	if e.closed {
		return nedev.ErrClosed
	}
	if err := e.s.injected(op); err != nil {
		return err
	}
	if e.started {
		return errno(op, nedev.ErrNotInInitState)
	}
	return nil
}

func (e *simEnclave) AddVCPU(id uint32) (uint32, error) {
	s := e.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := e.check(nedev.OpAddVCPU); err != nil {
		return 0, err
	}
	cpu := int(id)
	if id == 0 {
		picked, ok := e.pickLocked()
		if !ok {
			return 0, errno(nedev.OpAddVCPU, nedev.ErrNoCPUsAvailInPool)
		}
		cpu = picked
	} else {
		if cpu >= s.cfg.NumCPUs {
			return 0, errno(nedev.OpAddVCPU, nedev.ErrInvalidVCPU)
		}
		for _, c := range e.cpus {
			if c == cpu {
				return 0, errno(nedev.OpAddVCPU, nedev.ErrVCPUAlreadyUsed)
			}
		}
		core, inPool := s.coreOf[cpu]
		if !inPool {
			return 0, errno(nedev.OpAddVCPU, nedev.ErrVCPUNotInCPUPool)
		}
		if o := s.owner[core]; o != nil && o != e {
			// The core was handed to another enclave and left the pool.
			return 0, errno(nedev.OpAddVCPU, nedev.ErrVCPUNotInCPUPool)
		}
	}
	core := s.coreOf[cpu]
	s.owner[core] = e
	e.cores[core] = true
	e.cpus = append(e.cpus, cpu)
	return uint32(cpu), nil
}

// pickLocked chooses a CPU for id 0: first a free sibling on a core this
// enclave already uses, then the lowest CPU of the first free core.
func (e *simEnclave) pickLocked() (int, bool) {
	s := e.s
	used := map[int]bool{}
	for _, c := range e.cpus {
		used[c] = true
	}
	for i, core := range s.cfg.Cores {
		if !e.cores[i] {
			continue
		}
		for _, c := range core {
			if !used[c] {
				return c, true
			}
		}
	}
	for i, core := range s.cfg.Cores {
		if s.owner[i] == nil && len(core) > 0 {
			return minInt(core), true
		}
	}
	return 0, false
}

func minInt(xs []int) int {
	m := xs[0]
	for _, x := range xs[1:] {
		m = min(m, x)
	}
	return m
}

func (e *simEnclave) GetImageLoadInfo(flags uint64) (uint64, error) {
	s := e.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := e.check(nedev.OpGetImageLoadInfo); err != nil {
		return 0, err
	}
	if flags != nedev.EIFImage {
		return 0, errno(nedev.OpGetImageLoadInfo, nedev.ErrInvalidFlagValue)
	}
	e.imageInfo = true
	return s.cfg.LoadOffset, nil
}

func (e *simEnclave) SetUserMemoryRegion(r nedev.UserMemoryRegion) error {
	s := e.s
	s.mu.Lock()
	defer s.mu.Unlock()
	const op = nedev.OpSetUserMemoryRegion
	if err := e.check(op); err != nil {
		return err
	}
	switch {
	case r.Flags != nedev.DefaultMemoryRegion:
		return errno(op, nedev.ErrInvalidFlagValue)
	case r.MemorySize == 0 || r.MemorySize%nedev.MemRegionAlign != 0:
		return errno(op, nedev.ErrInvalidMemRegionSize)
	case r.UserspaceAddr%nedev.MemRegionAlign != 0:
		return errno(op, nedev.ErrUnalignedMemRegion)
	}
	if s.cfg.Memory == nil {
		return errno(op, nedev.ErrInvalidMemRegionAddr)
	}
	info, ok := s.cfg.Memory.MemInfo(r.UserspaceAddr, r.MemorySize)
	switch {
	case !ok:
		return errno(op, nedev.ErrInvalidMemRegionAddr)
	case !info.HugeTLB:
		return errno(op, nedev.ErrMemNotHugePage)
	case info.PageSize == 0 || info.PageSize%nedev.MemRegionAlign != 0:
		return errno(op, nedev.ErrInvalidPageSize)
	}
	for _, old := range e.regions {
		if r.UserspaceAddr < old.UserspaceAddr+old.MemorySize && old.UserspaceAddr < r.UserspaceAddr+r.MemorySize {
			return errno(op, nedev.ErrMemRegionAlreadyUsed)
		}
	}
	if info.Node != s.cfg.Node {
		return errno(op, nedev.ErrMemDifferentNUMANode)
	}
	if len(e.regions)+1 > s.cfg.MaxRegions {
		return errno(op, nedev.ErrMemMaxRegions)
	}
	e.regions = append(e.regions, r)
	e.mem += r.MemorySize
	return nil
}

func (e *simEnclave) StartEnclave(flags, cid uint64) (uint64, error) {
	s := e.s
	s.mu.Lock()
	defer s.mu.Unlock()
	const op = nedev.OpStartEnclave
	if err := e.check(op); err != nil {
		return 0, err
	}
	if flags&^uint64(nedev.EnclaveDebugMode) != 0 {
		return 0, errno(op, nedev.ErrInvalidFlagValue)
	}
	if len(e.regions) == 0 {
		return 0, errno(op, nedev.ErrNoMemRegionsAdded)
	}
	if len(e.cpus) == 0 {
		return 0, errno(op, nedev.ErrNoVCPUsAdded)
	}
	if e.mem < nedev.MinEnclaveMemory {
		return 0, errno(op, nedev.ErrEnclaveMemMinSize)
	}
	mine := map[int]bool{}
	for _, c := range e.cpus {
		mine[c] = true
	}
	for core := range e.cores {
		for _, c := range s.cfg.Cores[core] {
			if !mine[c] {
				return 0, errno(op, nedev.ErrFullCoresNotUsed)
			}
		}
	}
	inUse := func(c uint64) bool {
		for _, o := range s.enclaves {
			if o != e && o.started && !o.closed && o.cid == c {
				return true
			}
		}
		return false
	}
	if cid == 0 {
		for cid = s.cfg.FirstAutoCID; inUse(cid); cid++ {
		}
	} else if cid < nedev.MinEnclaveCID || cid > nedev.MaxEnclaveCID || inUse(cid) {
		return 0, errno(op, nedev.ErrInvalidEnclaveCID)
	}
	e.started = true
	e.debug = flags&nedev.EnclaveDebugMode != 0
	e.cid = cid
	return cid, nil
}

func (e *simEnclave) WaitHangup(ctx context.Context) error {
	e.s.mu.Lock()
	if e.closed {
		e.s.mu.Unlock()
		return nedev.ErrClosed
	}
	hup := e.hup
	e.s.mu.Unlock()
	select {
	case <-hup:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close releases the enclave's cores back to the pool, as the driver does
// on close (ENCLAVE_STOP, SLOT_FREE).
func (e *simEnclave) Close() error {
	s := e.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if e.closed {
		return nedev.ErrClosed
	}
	e.closed = true
	for core := range e.cores {
		if s.owner[core] == e {
			delete(s.owner, core)
		}
	}
	return nil
}
