package daemon

import (
	"sort"
	"sync"

	"github.com/cloister/cloister/internal/cpulist"
	"github.com/cloister/cloister/parent"
)

// pool carves dedicated CPUs and memory out of the daemon's budget. Every
// enclave owns its CPUs exclusively; memory is accounted in MiB.
type pool struct {
	mu       sync.Mutex
	cpus     []int          // the pool, sorted
	owner    map[int]string // cpu -> enclave id
	memTotal int
	memUsed  map[string]int // enclave id -> MiB
	// coreOf maps a CPU to its physical core (its siblings, sorted) when
	// enclaves must get whole cores; nil otherwise.
	coreOf map[int][]int
}

func newPool(cpus []int, memMiB int) *pool {
	s := append([]int(nil), cpus...)
	sort.Ints(s)
	return &pool{cpus: s, owner: map[int]string{}, memTotal: memMiB, memUsed: map[string]int{}}
}

// withCores makes the pool hand out whole cores only.
func (p *pool) withCores(cores [][]int) *pool {
	if len(cores) == 0 {
		return p
	}
	p.coreOf = map[int][]int{}
	for _, core := range cores {
		c := append([]int(nil), core...)
		sort.Ints(c)
		for _, id := range c {
			p.coreOf[id] = c
		}
	}
	return p
}

// allocate reserves CPUs (count from the pool, or the exact ids) and memory
// for enclave id. It reserves nothing when it fails.
func (p *pool) allocate(id string, count int, ids []int, memMiB int) ([]int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	inPool := map[int]bool{}
	for _, c := range p.cpus {
		inPool[c] = true
	}
	var chosen []int
	switch {
	case len(ids) > 0:
		seen := map[int]bool{}
		for _, c := range ids {
			if seen[c] {
				return nil, newErr("E20", parent.ErrInvalidArgument, "CPU %d is listed more than once in --cpu-ids", c)
			}
			seen[c] = true
			if !inPool[c] {
				return nil, newErr("E21", parent.ErrResources, "CPU %d is not in the enclave CPU pool (%s); pick CPUs from the pool or change cpu_pool in the daemon config", c, cpulist.Format(p.cpus))
			}
			if o, busy := p.owner[c]; busy {
				return nil, newErr("E21", parent.ErrResources, "CPU %d is already used by enclave %s", c, o)
			}
		}
		chosen = append(chosen, ids...)
		sort.Ints(chosen)
		for _, c := range chosen {
			for _, s := range p.coreOf[c] {
				if !seen[s] {
					return nil, newErr("E20", parent.ErrInvalidArgument, "CPU %d shares its core with CPU %d, which is not listed: enclaves get whole cores (add %d to --cpu-ids)", c, s, s)
				}
			}
		}
	case count > 0 && p.coreOf != nil:
		taken := map[int]bool{}
		for _, c := range p.cpus {
			core := p.coreOf[c]
			if taken[c] || len(chosen)+len(core) > count {
				continue
			}
			free := true
			for _, s := range core {
				if _, busy := p.owner[s]; busy {
					free = false
				}
			}
			if !free {
				continue
			}
			for _, s := range core {
				taken[s] = true
			}
			chosen = append(chosen, core...)
		}
		sort.Ints(chosen)
		if len(chosen) < count {
			return nil, newErr("E22", parent.ErrResources, "%d CPUs requested but only %d are free in whole cores (the pool has %d); request a multiple of the threads per core, terminate an enclave or enlarge the pool", count, len(chosen), len(p.cpus))
		}
	case count > 0:
		for _, c := range p.cpus {
			if _, busy := p.owner[c]; !busy {
				chosen = append(chosen, c)
				if len(chosen) == count {
					break
				}
			}
		}
		if len(chosen) < count {
			return nil, newErr("E22", parent.ErrResources, "%d CPUs requested but only %d of the pool's %d are free; terminate an enclave or enlarge the pool (cpu_count/cpu_pool in the daemon config)", count, len(chosen), len(p.cpus))
		}
	default:
		return nil, newErr("E01", parent.ErrInvalidArgument, "no CPUs requested: give --cpu-count or --cpu-ids")
	}
	if free := p.memTotal - p.usedLocked(); memMiB > free {
		return nil, newErr("E27", parent.ErrResources, "%d MiB requested but only %d MiB of the %d MiB budget are free; terminate an enclave or raise memory_mib in the daemon config", memMiB, free, p.memTotal)
	}
	for _, c := range chosen {
		p.owner[c] = id
	}
	p.memUsed[id] = memMiB
	return chosen, nil
}

// claim re-reserves exactly what a running enclave holds (after a daemon
// restart). CPUs that are no longer in the pool are still recorded as
// owned so they are not handed out twice.
func (p *pool) claim(id string, cpus []int, memMiB int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cpus {
		p.owner[c] = id
	}
	p.memUsed[id] = memMiB
}

// release returns everything enclave id holds.
func (p *pool) release(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c, o := range p.owner {
		if o == id {
			delete(p.owner, c)
		}
	}
	delete(p.memUsed, id)
}

func (p *pool) usedLocked() int {
	n := 0
	for _, m := range p.memUsed {
		n += m
	}
	return n
}

// snapshot returns the pool, the free CPUs, the budget and the free memory.
func (p *pool) snapshot() (all, free []int, memTotal, memFree int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.cpus {
		if _, busy := p.owner[c]; !busy {
			free = append(free, c)
		}
	}
	return append([]int(nil), p.cpus...), free, p.memTotal, p.memTotal - p.usedLocked()
}
