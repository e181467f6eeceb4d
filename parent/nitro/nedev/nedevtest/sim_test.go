package nedevtest

import (
	"context"
	"errors"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/parent/nitro/nedev"
)

// mem is a MemoryInfo with fixed answers per address.
type mem map[uint64]MemInfo

func (m mem) MemInfo(addr, size uint64) (MemInfo, bool) {
	i, ok := m[addr]
	return i, ok
}

const mib = 1 << 20

var huge2M = MemInfo{HugeTLB: true, PageSize: 2 * mib}

func goodMem() mem {
	m := mem{}
	for i := uint64(0); i < 64; i++ {
		m[(1<<30)+i*2*mib] = huge2M
	}
	m[1<<40] = MemInfo{HugeTLB: true, PageSize: 64 * mib}
	return m
}

func newEnclave(t *testing.T, s *Sim) nedev.Enclave {
	t.Helper()
	d, err := s.Open(nedev.DevicePath)
	if err != nil {
		t.Fatal(err)
	}
	e, _, err := d.CreateVM()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	return e
}

func TestSimHappyPath(t *testing.T) {
	s := NewSim(SimConfig{Memory: goodMem()})
	e := newEnclave(t, s)
	got, err := e.AddVCPU(0)
	if err != nil || got != 1 {
		t.Fatalf("AddVCPU(0) = %d, %v; want 1 (lowest free core)", got, err)
	}
	if got, err = e.AddVCPU(0); err != nil || got != 5 {
		t.Fatalf("AddVCPU(0) = %d, %v; want 5 (sibling of 1)", got, err)
	}
	off, err := e.GetImageLoadInfo(nedev.EIFImage)
	if err != nil || off != nedev.EIFLoadOffset {
		t.Fatalf("GetImageLoadInfo = %d, %v", off, err)
	}
	if err := e.SetUserMemoryRegion(nedev.UserMemoryRegion{MemorySize: 64 * mib, UserspaceAddr: 1 << 40}); err != nil {
		t.Fatal(err)
	}
	cid, err := e.StartEnclave(nedev.EnclaveDebugMode, 0)
	if err != nil || cid != 16 {
		t.Fatalf("StartEnclave = %d, %v; want auto CID 16", cid, err)
	}
	if _, err := e.AddVCPU(2); !errors.Is(err, nedev.ErrNotInInitState) {
		t.Errorf("AddVCPU after start: %v, want NOT_IN_INIT_STATE", err)
	}
	if diff := cmp.Diff([]int{1, 5}, s.UsedCPUs()); diff != "" {
		t.Errorf("used CPUs (-want +got):\n%s", diff)
	}
	done := make(chan error, 1)
	go func() { done <- e.WaitHangup(context.Background()) }()
	if !s.Exit(16) {
		t.Fatal("Exit(16) found no enclave")
	}
	if err := <-done; err != nil {
		t.Fatalf("WaitHangup: %v", err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); !errors.Is(err, nedev.ErrClosed) {
		t.Errorf("second Close: %v", err)
	}
	if n := s.OpenFDs(); n != 0 {
		t.Errorf("OpenFDs = %d after close", n)
	}
	if u := s.UsedCPUs(); len(u) != 0 {
		t.Errorf("CPUs %v still used after close", u)
	}
}

func TestSimWaitHangupCancel(t *testing.T) {
	s := NewSim(SimConfig{})
	e := newEnclave(t, s)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := e.WaitHangup(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("WaitHangup = %v, want context.Canceled", err)
	}
	e.Close()
}

// TestSimRules drives the simulated driver into each of its error codes.
func TestSimRules(t *testing.T) {
	region := func(addr, size uint64) nedev.UserMemoryRegion {
		return nedev.UserMemoryRegion{MemorySize: size, UserspaceAddr: addr}
	}
	base := uint64(1 << 30)
	tests := []struct {
		name string
		cfg  SimConfig
		run  func(e nedev.Enclave) error
		want nedev.Errno
	}{
		{"vcpu twice", SimConfig{}, func(e nedev.Enclave) error { e.AddVCPU(2); _, err := e.AddVCPU(2); return err }, nedev.ErrVCPUAlreadyUsed},
		{"vcpu not in pool", SimConfig{}, func(e nedev.Enclave) error { _, err := e.AddVCPU(4); return err }, nedev.ErrVCPUNotInCPUPool},
		{"vcpu beyond cpus", SimConfig{}, func(e nedev.Enclave) error { _, err := e.AddVCPU(64); return err }, nedev.ErrInvalidVCPU},
		{"pool exhausted", SimConfig{Cores: [][]int{{1, 5}}}, func(e nedev.Enclave) error {
			e.AddVCPU(0)
			e.AddVCPU(0)
			_, err := e.AddVCPU(0)
			return err
		}, nedev.ErrNoCPUsAvailInPool},
		{"bad image flag", SimConfig{}, func(e nedev.Enclave) error { _, err := e.GetImageLoadInfo(2); return err }, nedev.ErrInvalidFlagValue},
		{"region flag", SimConfig{}, func(e nedev.Enclave) error {
			return e.SetUserMemoryRegion(nedev.UserMemoryRegion{Flags: 1, MemorySize: 2 * mib, UserspaceAddr: base})
		}, nedev.ErrInvalidFlagValue},
		{"region size", SimConfig{}, func(e nedev.Enclave) error { return e.SetUserMemoryRegion(region(base, mib)) }, nedev.ErrInvalidMemRegionSize},
		{"region zero", SimConfig{}, func(e nedev.Enclave) error { return e.SetUserMemoryRegion(region(base, 0)) }, nedev.ErrInvalidMemRegionSize},
		{"region unaligned", SimConfig{}, func(e nedev.Enclave) error { return e.SetUserMemoryRegion(region(base+4096, 2*mib)) }, nedev.ErrUnalignedMemRegion},
		{"region unmapped", SimConfig{}, func(e nedev.Enclave) error { return e.SetUserMemoryRegion(region(1<<41, 2*mib)) }, nedev.ErrInvalidMemRegionAddr},
		{"region not huge", SimConfig{Memory: mem{base: {PageSize: 2 * mib}}}, func(e nedev.Enclave) error {
			return e.SetUserMemoryRegion(region(base, 2*mib))
		}, nedev.ErrMemNotHugePage},
		{"page size", SimConfig{Memory: mem{base: {HugeTLB: true, PageSize: mib}}}, func(e nedev.Enclave) error {
			return e.SetUserMemoryRegion(region(base, 2*mib))
		}, nedev.ErrInvalidPageSize},
		{"overlap", SimConfig{}, func(e nedev.Enclave) error {
			e.SetUserMemoryRegion(region(base, 2*mib))
			return e.SetUserMemoryRegion(region(base, 2*mib))
		}, nedev.ErrMemRegionAlreadyUsed},
		{"numa", SimConfig{Node: 1}, func(e nedev.Enclave) error { return e.SetUserMemoryRegion(region(base, 2*mib)) }, nedev.ErrMemDifferentNUMANode},
		{"max regions", SimConfig{MaxRegions: 1}, func(e nedev.Enclave) error {
			e.SetUserMemoryRegion(region(base, 2*mib))
			return e.SetUserMemoryRegion(region(base+2*mib, 2*mib))
		}, nedev.ErrMemMaxRegions},
		{"no memory", SimConfig{}, func(e nedev.Enclave) error { e.AddVCPU(0); _, err := e.StartEnclave(0, 0); return err }, nedev.ErrNoMemRegionsAdded},
		{"no vcpus", SimConfig{}, func(e nedev.Enclave) error {
			e.SetUserMemoryRegion(region(1<<40, 64*mib))
			_, err := e.StartEnclave(0, 0)
			return err
		}, nedev.ErrNoVCPUsAdded},
		{"min size", SimConfig{}, func(e nedev.Enclave) error {
			e.AddVCPU(1)
			e.AddVCPU(5)
			e.SetUserMemoryRegion(region(base, 2*mib))
			_, err := e.StartEnclave(0, 0)
			return err
		}, nedev.ErrEnclaveMemMinSize},
		{"half core", SimConfig{}, func(e nedev.Enclave) error {
			e.AddVCPU(1)
			e.SetUserMemoryRegion(region(1<<40, 64*mib))
			_, err := e.StartEnclave(0, 0)
			return err
		}, nedev.ErrFullCoresNotUsed},
		{"start flags", SimConfig{}, func(e nedev.Enclave) error { _, err := e.StartEnclave(2, 0); return err }, nedev.ErrInvalidFlagValue},
		{"cid 3", SimConfig{}, func(e nedev.Enclave) error {
			e.AddVCPU(1)
			e.AddVCPU(5)
			e.SetUserMemoryRegion(region(1<<40, 64*mib))
			_, err := e.StartEnclave(0, 3)
			return err
		}, nedev.ErrInvalidEnclaveCID},
		{"cid max", SimConfig{}, func(e nedev.Enclave) error {
			e.AddVCPU(1)
			e.AddVCPU(5)
			e.SetUserMemoryRegion(region(1<<40, 64*mib))
			_, err := e.StartEnclave(0, 0xFFFFFFFF)
			return err
		}, nedev.ErrInvalidEnclaveCID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.cfg.Memory == nil {
				tt.cfg.Memory = goodMem()
			}
			s := NewSim(tt.cfg)
			e := newEnclave(t, s)
			err := tt.run(e)
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %s", err, tt.want.Name())
			}
			var ie *nedev.IoctlError
			if !errors.As(err, &ie) {
				t.Fatalf("%T is not an *IoctlError", err)
			}
			e.Close()
			if n := s.OpenFDs(); n != 0 {
				t.Errorf("OpenFDs = %d", n)
			}
		})
	}
}

func TestSimCrossEnclave(t *testing.T) {
	s := NewSim(SimConfig{Memory: goodMem()})
	a := newEnclave(t, s)
	b := newEnclave(t, s)
	if _, err := a.AddVCPU(1); err != nil {
		t.Fatal(err)
	}
	// CPU 5 shares CPU 1's core, which now belongs to a.
	if _, err := b.AddVCPU(5); !errors.Is(err, nedev.ErrVCPUNotInCPUPool) {
		t.Errorf("b.AddVCPU(5) = %v, want NOT_IN_CPU_POOL", err)
	}
	if got, err := b.AddVCPU(0); err != nil || got != 2 {
		t.Errorf("b.AddVCPU(0) = %d, %v; want 2", got, err)
	}
	a.AddVCPU(5)
	a.SetUserMemoryRegion(nedev.UserMemoryRegion{MemorySize: 64 * mib, UserspaceAddr: 1 << 40})
	if _, err := a.StartEnclave(0, 20); err != nil {
		t.Fatal(err)
	}
	b.AddVCPU(6)
	b.SetUserMemoryRegion(nedev.UserMemoryRegion{MemorySize: 2 * mib, UserspaceAddr: 1 << 30})
	for i := uint64(1); i < 32; i++ {
		b.SetUserMemoryRegion(nedev.UserMemoryRegion{MemorySize: 2 * mib, UserspaceAddr: 1<<30 + i*2*mib})
	}
	if _, err := b.StartEnclave(0, 20); !errors.Is(err, nedev.ErrInvalidEnclaveCID) {
		t.Errorf("CID 20 twice: %v", err)
	}
	a.Close()
	if diff := cmp.Diff([]int{2, 6}, s.UsedCPUs()); diff != "" {
		t.Errorf("after closing a (-want +got):\n%s", diff)
	}
	b.Close()
}

func TestSimEmptyPoolAndInjection(t *testing.T) {
	s := NewSim(SimConfig{Cores: [][]int{}})
	d, _ := s.Open(nedev.DevicePath)
	if _, _, err := d.CreateVM(); !errors.Is(err, nedev.ErrNoCPUsAvailInPool) {
		t.Errorf("CreateVM with empty pool: %v", err)
	}
	d.Close()

	s = NewSim(SimConfig{Memory: goodMem()})
	s.Inject(nedev.OpOpen, syscall.EACCES)
	if _, err := s.Open(nedev.DevicePath); !errors.Is(err, syscall.EACCES) {
		t.Errorf("Open with injected EACCES: %v", err)
	}
	for e := nedev.FirstErrno; e <= nedev.LastErrno; e++ {
		for _, op := range []nedev.Op{nedev.OpAddVCPU, nedev.OpGetImageLoadInfo, nedev.OpSetUserMemoryRegion, nedev.OpStartEnclave} {
			s.Inject(op, syscall.Errno(e))
		}
		enc := newEnclave(t, s)
		if _, err := enc.AddVCPU(0); !errors.Is(err, e) {
			t.Errorf("AddVCPU injected %d: %v", e, err)
		}
		if _, err := enc.GetImageLoadInfo(nedev.EIFImage); !errors.Is(err, e) {
			t.Errorf("GetImageLoadInfo injected %d: %v", e, err)
		}
		if err := enc.SetUserMemoryRegion(nedev.UserMemoryRegion{}); !errors.Is(err, e) {
			t.Errorf("SetUserMemoryRegion injected %d: %v", e, err)
		}
		if _, err := enc.StartEnclave(0, 0); !errors.Is(err, e) {
			t.Errorf("StartEnclave injected %d: %v", e, err)
		}
		enc.Close()
	}
	if n := s.OpenFDs(); n != 0 {
		t.Errorf("OpenFDs = %d", n)
	}
}
