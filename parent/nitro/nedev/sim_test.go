package nedev

import (
	"context"
	"errors"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
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

func newEnclave(t *testing.T, s *Sim) Enclave {
	t.Helper()
	d, err := s.Open(DevicePath)
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
	off, err := e.GetImageLoadInfo(EIFImage)
	if err != nil || off != EIFLoadOffset {
		t.Fatalf("GetImageLoadInfo = %d, %v", off, err)
	}
	if err := e.SetUserMemoryRegion(UserMemoryRegion{MemorySize: 64 * mib, UserspaceAddr: 1 << 40}); err != nil {
		t.Fatal(err)
	}
	cid, err := e.StartEnclave(EnclaveDebugMode, 0)
	if err != nil || cid != 16 {
		t.Fatalf("StartEnclave = %d, %v; want auto CID 16", cid, err)
	}
	if _, err := e.AddVCPU(2); !errors.Is(err, ErrNotInInitState) {
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
	if err := e.Close(); !errors.Is(err, ErrClosed) {
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
	region := func(addr, size uint64) UserMemoryRegion {
		return UserMemoryRegion{MemorySize: size, UserspaceAddr: addr}
	}
	base := uint64(1 << 30)
	tests := []struct {
		name string
		cfg  SimConfig
		run  func(e Enclave) error
		want Errno
	}{
		{"vcpu twice", SimConfig{}, func(e Enclave) error { e.AddVCPU(2); _, err := e.AddVCPU(2); return err }, ErrVCPUAlreadyUsed},
		{"vcpu not in pool", SimConfig{}, func(e Enclave) error { _, err := e.AddVCPU(4); return err }, ErrVCPUNotInCPUPool},
		{"vcpu beyond cpus", SimConfig{}, func(e Enclave) error { _, err := e.AddVCPU(64); return err }, ErrInvalidVCPU},
		{"pool exhausted", SimConfig{Cores: [][]int{{1, 5}}}, func(e Enclave) error {
			e.AddVCPU(0)
			e.AddVCPU(0)
			_, err := e.AddVCPU(0)
			return err
		}, ErrNoCPUsAvailInPool},
		{"bad image flag", SimConfig{}, func(e Enclave) error { _, err := e.GetImageLoadInfo(2); return err }, ErrInvalidFlagValue},
		{"region flag", SimConfig{}, func(e Enclave) error {
			return e.SetUserMemoryRegion(UserMemoryRegion{Flags: 1, MemorySize: 2 * mib, UserspaceAddr: base})
		}, ErrInvalidFlagValue},
		{"region size", SimConfig{}, func(e Enclave) error { return e.SetUserMemoryRegion(region(base, mib)) }, ErrInvalidMemRegionSize},
		{"region zero", SimConfig{}, func(e Enclave) error { return e.SetUserMemoryRegion(region(base, 0)) }, ErrInvalidMemRegionSize},
		{"region unaligned", SimConfig{}, func(e Enclave) error { return e.SetUserMemoryRegion(region(base+4096, 2*mib)) }, ErrUnalignedMemRegion},
		{"region unmapped", SimConfig{}, func(e Enclave) error { return e.SetUserMemoryRegion(region(1<<41, 2*mib)) }, ErrInvalidMemRegionAddr},
		{"region not huge", SimConfig{Memory: mem{base: {PageSize: 2 * mib}}}, func(e Enclave) error {
			return e.SetUserMemoryRegion(region(base, 2*mib))
		}, ErrMemNotHugePage},
		{"page size", SimConfig{Memory: mem{base: {HugeTLB: true, PageSize: mib}}}, func(e Enclave) error {
			return e.SetUserMemoryRegion(region(base, 2*mib))
		}, ErrInvalidPageSize},
		{"overlap", SimConfig{}, func(e Enclave) error {
			e.SetUserMemoryRegion(region(base, 2*mib))
			return e.SetUserMemoryRegion(region(base, 2*mib))
		}, ErrMemRegionAlreadyUsed},
		{"numa", SimConfig{Node: 1}, func(e Enclave) error { return e.SetUserMemoryRegion(region(base, 2*mib)) }, ErrMemDifferentNUMANode},
		{"max regions", SimConfig{MaxRegions: 1}, func(e Enclave) error {
			e.SetUserMemoryRegion(region(base, 2*mib))
			return e.SetUserMemoryRegion(region(base+2*mib, 2*mib))
		}, ErrMemMaxRegions},
		{"no memory", SimConfig{}, func(e Enclave) error { e.AddVCPU(0); _, err := e.StartEnclave(0, 0); return err }, ErrNoMemRegionsAdded},
		{"no vcpus", SimConfig{}, func(e Enclave) error {
			e.SetUserMemoryRegion(region(1<<40, 64*mib))
			_, err := e.StartEnclave(0, 0)
			return err
		}, ErrNoVCPUsAdded},
		{"min size", SimConfig{}, func(e Enclave) error {
			e.AddVCPU(1)
			e.AddVCPU(5)
			e.SetUserMemoryRegion(region(base, 2*mib))
			_, err := e.StartEnclave(0, 0)
			return err
		}, ErrEnclaveMemMinSize},
		{"half core", SimConfig{}, func(e Enclave) error {
			e.AddVCPU(1)
			e.SetUserMemoryRegion(region(1<<40, 64*mib))
			_, err := e.StartEnclave(0, 0)
			return err
		}, ErrFullCoresNotUsed},
		{"start flags", SimConfig{}, func(e Enclave) error { _, err := e.StartEnclave(2, 0); return err }, ErrInvalidFlagValue},
		{"cid 3", SimConfig{}, func(e Enclave) error {
			e.AddVCPU(1)
			e.AddVCPU(5)
			e.SetUserMemoryRegion(region(1<<40, 64*mib))
			_, err := e.StartEnclave(0, 3)
			return err
		}, ErrInvalidEnclaveCID},
		{"cid max", SimConfig{}, func(e Enclave) error {
			e.AddVCPU(1)
			e.AddVCPU(5)
			e.SetUserMemoryRegion(region(1<<40, 64*mib))
			_, err := e.StartEnclave(0, 0xFFFFFFFF)
			return err
		}, ErrInvalidEnclaveCID},
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
			var ie *IoctlError
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
	if _, err := b.AddVCPU(5); !errors.Is(err, ErrVCPUNotInCPUPool) {
		t.Errorf("b.AddVCPU(5) = %v, want NOT_IN_CPU_POOL", err)
	}
	if got, err := b.AddVCPU(0); err != nil || got != 2 {
		t.Errorf("b.AddVCPU(0) = %d, %v; want 2", got, err)
	}
	a.AddVCPU(5)
	a.SetUserMemoryRegion(UserMemoryRegion{MemorySize: 64 * mib, UserspaceAddr: 1 << 40})
	if _, err := a.StartEnclave(0, 20); err != nil {
		t.Fatal(err)
	}
	b.AddVCPU(6)
	b.SetUserMemoryRegion(UserMemoryRegion{MemorySize: 2 * mib, UserspaceAddr: 1 << 30})
	for i := uint64(1); i < 32; i++ {
		b.SetUserMemoryRegion(UserMemoryRegion{MemorySize: 2 * mib, UserspaceAddr: 1<<30 + i*2*mib})
	}
	if _, err := b.StartEnclave(0, 20); !errors.Is(err, ErrInvalidEnclaveCID) {
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
	d, _ := s.Open(DevicePath)
	if _, _, err := d.CreateVM(); !errors.Is(err, ErrNoCPUsAvailInPool) {
		t.Errorf("CreateVM with empty pool: %v", err)
	}
	d.Close()

	s = NewSim(SimConfig{Memory: goodMem()})
	s.Inject(OpOpen, syscall.EACCES)
	if _, err := s.Open(DevicePath); !errors.Is(err, syscall.EACCES) {
		t.Errorf("Open with injected EACCES: %v", err)
	}
	for e := FirstErrno; e <= LastErrno; e++ {
		for _, op := range []Op{OpAddVCPU, OpGetImageLoadInfo, OpSetUserMemoryRegion, OpStartEnclave} {
			s.Inject(op, syscall.Errno(e))
		}
		enc := newEnclave(t, s)
		if _, err := enc.AddVCPU(0); !errors.Is(err, e) {
			t.Errorf("AddVCPU injected %d: %v", e, err)
		}
		if _, err := enc.GetImageLoadInfo(EIFImage); !errors.Is(err, e) {
			t.Errorf("GetImageLoadInfo injected %d: %v", e, err)
		}
		if err := enc.SetUserMemoryRegion(UserMemoryRegion{}); !errors.Is(err, e) {
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
