package nitro

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"testing/fstest"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/enclave/eif"
	"github.com/cloister/cloister/parent/backend"
	"github.com/cloister/cloister/parent/doctor"
	"github.com/cloister/cloister/parent/nitro/hugepage"
	"github.com/cloister/cloister/parent/nitro/hugepage/hugepagetest"
	"github.com/cloister/cloister/parent/nitro/nedev"
	"github.com/cloister/cloister/parent/nitro/nedev/nedevtest"
)

// waitFor polls cond until it holds; the deadline only bounds a broken test.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestLaunchAndExit(t *testing.T) {
	r := newRig(t, nedevtest.SimConfig{}, nil)
	r.spec.Debug = true
	// The hypervisor's console endpoint for CID 20.
	r.vs.serveGuest(t, 0, 20+nedev.ConsolePortOffset, func(c net.Conn) {
		io.WriteString(c, "Linux version 6.6.79\nhello from ttyS0\n")
	})
	// A service inside the enclave.
	r.vs.serveGuest(t, 20, 5000, func(c net.Conn) { io.Copy(c, c) })

	inst, err := r.b.Launch(context.Background(), r.spec)
	if err != nil {
		t.Fatal(err)
	}
	ni := inst.(*Instance)
	if ni.CID() != 20 || ni.MemoryMiB() != 64 || inst.Pid() != 0 || ni.SlotUID() == 0 {
		t.Errorf("instance: cid %d, %d MiB, pid %d, slot %d", ni.CID(), ni.MemoryMiB(), inst.Pid(), ni.SlotUID())
	}
	if diff := cmp.Diff([]int{1, 5}, ni.CPUs()); diff != "" {
		t.Errorf("CPUs (-want +got):\n%s", diff)
	}
	encs := r.sim.Enclaves()
	if len(encs) != 1 {
		t.Fatalf("%d enclaves", len(encs))
	}
	e := encs[0]
	if !e.Started || !e.Debug || e.CID != 20 || e.MemBytes != 64<<20 || len(e.Regions) != 32 || !e.ImageInfo {
		t.Errorf("simulated enclave: %+v", e)
	}
	if n := r.sim.OpenFDs(); n != 1 {
		t.Errorf("%d driver fds open while running, want 1 (the enclave fd)", n)
	}
	// The EIF lies byte for byte at 8 MiB of the concatenated regions.
	var addrs []uint64
	for _, reg := range e.Regions {
		addrs = append(addrs, reg.UserspaceAddr)
	}
	memory, err := r.mem.Contents(addrs)
	if err != nil {
		t.Fatal(err)
	}
	file, _ := os.ReadFile(r.spec.EIFPath)
	if !bytes.Equal(memory[nedev.EIFLoadOffset:nedev.EIFLoadOffset+len(file)], file) {
		t.Error("enclave memory at the load offset differs from the EIF")
	}

	waitFor(t, "console output", func() bool { return strings.Contains(r.console.String(), "hello from ttyS0") })

	c, err := inst.Dial(context.Background(), 5000)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "ping")
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Errorf("echo: %q, %v", buf, err)
	}
	c.Close()

	if !r.sim.Exit(20) {
		t.Fatal("sim.Exit found no enclave")
	}
	<-inst.Done()
	if x := inst.Exit(); x.Code != -1 || !strings.Contains(x.Reason, "EPOLLHUP") {
		t.Errorf("exit = %+v", x)
	}
	r.checkNoLeaks(t)
	if _, err := inst.Dial(context.Background(), 5000); err == nil {
		t.Error("Dial after exit succeeded")
	}
	if err := inst.Terminate(context.Background()); err != nil {
		t.Errorf("Terminate after exit: %v", err)
	}
}

func TestTerminate(t *testing.T) {
	r := newRig(t, nedevtest.SimConfig{}, nil)
	r.spec.Debug = true // console endpoint absent: launch still succeeds
	inst, err := r.b.Launch(context.Background(), r.spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := inst.Terminate(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-inst.Done():
	default:
		t.Fatal("Done not closed after Terminate returned")
	}
	if x := inst.Exit(); x.Reason != "terminated" || x.Code != -1 {
		t.Errorf("exit = %+v", x)
	}
	r.checkNoLeaks(t)
	if err := inst.Terminate(context.Background()); err != nil {
		t.Errorf("second Terminate: %v", err)
	}
	// The CPUs are free again: a second enclave can use them.
	inst2, err := r.b.Launch(context.Background(), r.spec)
	if err != nil {
		t.Fatalf("relaunch: %v", err)
	}
	inst2.Terminate(context.Background())
	r.checkNoLeaks(t)
}

func TestProductionModeNoConsole(t *testing.T) {
	r := newRig(t, nedevtest.SimConfig{}, nil)
	dialed := make(chan struct{}, 1)
	r.vs.serveGuest(t, 0, 20+nedev.ConsolePortOffset, func(c net.Conn) { dialed <- struct{}{} })
	inst, err := r.b.Launch(context.Background(), r.spec)
	if err != nil {
		t.Fatal(err)
	}
	if e := r.sim.Enclaves()[0]; e.Debug {
		t.Error("production launch started in debug mode")
	}
	inst.Terminate(context.Background())
	select {
	case <-dialed:
		t.Error("console dialed for a production enclave")
	default:
	}
	r.checkNoLeaks(t)
}

// TestLaunchFailures drives the launch into every documented failure and
// checks that nothing leaks.
func TestLaunchFailures(t *testing.T) {
	inject := func(op nedev.Op, e nedev.Errno) func(*rig) {
		return func(r *rig) { r.sim.Inject(op, syscall.Errno(e)) }
	}
	tests := []struct {
		name  string
		sim   nedevtest.SimConfig
		free  map[uint64]int
		setup func(r *rig)
		want  error
		step  string
	}{
		{"256 cpu twice", nedevtest.SimConfig{}, nil, func(r *rig) { r.spec.CPUs = []int{1, 1} }, nedev.ErrVCPUAlreadyUsed, "NE_ADD_VCPU cpu 1"},
		{"257 cpu not in pool", nedevtest.SimConfig{}, nil, func(r *rig) { r.spec.CPUs = []int{4, 0} }, nedev.ErrVCPUNotInCPUPool, "NE_ADD_VCPU cpu 4"},
		{"258 invalid core", nedevtest.SimConfig{}, nil, inject(nedev.OpAddVCPU, nedev.ErrVCPUInvalidCPUCore), nedev.ErrVCPUInvalidCPUCore, "NE_ADD_VCPU cpu 1"},
		{"259 region size", nedevtest.SimConfig{}, nil, inject(nedev.OpSetUserMemoryRegion, nedev.ErrInvalidMemRegionSize), nedev.ErrInvalidMemRegionSize, "NE_SET_USER_MEMORY_REGION 1/32"},
		{"260 region addr", nedevtest.SimConfig{}, nil, inject(nedev.OpSetUserMemoryRegion, nedev.ErrInvalidMemRegionAddr), nedev.ErrInvalidMemRegionAddr, "NE_SET_USER_MEMORY_REGION 1/32"},
		{"261 unaligned", nedevtest.SimConfig{}, nil, inject(nedev.OpSetUserMemoryRegion, nedev.ErrUnalignedMemRegion), nedev.ErrUnalignedMemRegion, "NE_SET_USER_MEMORY_REGION"},
		{"263 not hugetlb", nedevtest.SimConfig{}, nil, func(r *rig) { r.mem.NotHugeTLB = true }, nedev.ErrMemNotHugePage, "NE_SET_USER_MEMORY_REGION 1/32"},
		{"264 other node", nedevtest.SimConfig{Node: 1}, nil, nil, nedev.ErrMemDifferentNUMANode, "NE_SET_USER_MEMORY_REGION 1/32"},
		{"265 max regions", nedevtest.SimConfig{MaxRegions: 4}, nil, nil, nedev.ErrMemMaxRegions, "NE_SET_USER_MEMORY_REGION 5/32"},
		{"266 no memory", nedevtest.SimConfig{}, nil, inject(nedev.OpStartEnclave, nedev.ErrNoMemRegionsAdded), nedev.ErrNoMemRegionsAdded, "NE_START_ENCLAVE"},
		{"267 no vcpus", nedevtest.SimConfig{}, nil, inject(nedev.OpStartEnclave, nedev.ErrNoVCPUsAdded), nedev.ErrNoVCPUsAdded, "NE_START_ENCLAVE"},
		{"268 below 64 MiB", nedevtest.SimConfig{}, nil, func(r *rig) { r.spec.MemoryMiB = 32 }, nedev.ErrEnclaveMemMinSize, "NE_START_ENCLAVE"},
		{"269 half core", nedevtest.SimConfig{}, nil, func(r *rig) { r.spec.CPUs = []int{1} }, nedev.ErrFullCoresNotUsed, "NE_START_ENCLAVE"},
		{"270 not in init state", nedevtest.SimConfig{}, nil, inject(nedev.OpGetImageLoadInfo, nedev.ErrNotInInitState), nedev.ErrNotInInitState, "NE_GET_IMAGE_LOAD_INFO"},
		{"271 cpu beyond host", nedevtest.SimConfig{}, nil, func(r *rig) { r.spec.CPUs = []int{9, 1} }, nedev.ErrInvalidVCPU, "NE_ADD_VCPU cpu 9"},
		{"272 empty pool", nedevtest.SimConfig{Cores: [][]int{}}, nil, nil, nedev.ErrNoCPUsAvailInPool, "NE_CREATE_VM"},
		{"273 page size", nedevtest.SimConfig{}, nil, inject(nedev.OpSetUserMemoryRegion, nedev.ErrInvalidPageSize), nedev.ErrInvalidPageSize, "NE_SET_USER_MEMORY_REGION"},
		{"274 flag", nedevtest.SimConfig{}, nil, inject(nedev.OpGetImageLoadInfo, nedev.ErrInvalidFlagValue), nedev.ErrInvalidFlagValue, "NE_GET_IMAGE_LOAD_INFO"},
		{"275 cid", nedevtest.SimConfig{}, nil, inject(nedev.OpStartEnclave, nedev.ErrInvalidEnclaveCID), nedev.ErrInvalidEnclaveCID, "NE_START_ENCLAVE"},
		{"device open denied", nedevtest.SimConfig{}, nil, func(r *rig) { r.sim.Inject(nedev.OpOpen, syscall.EACCES) }, syscall.EACCES, "open device"},
		{"hypervisor out of slots", nedevtest.SimConfig{}, nil, func(r *rig) { r.sim.Inject(nedev.OpCreateVM, syscall.ENOMEM) }, syscall.ENOMEM, "NE_CREATE_VM"},
		{"mmap fails", nedevtest.SimConfig{}, nil, func(r *rig) { r.mem.FailMap = syscall.ENOMEM }, hugepage.ErrInsufficient, "allocate hugepages"},
		{"too few hugepages", nedevtest.SimConfig{}, map[uint64]int{2 << 20: 20}, nil, hugepage.ErrInsufficient, "allocate hugepages"},
		{"image does not fit after the load offset", nedevtest.SimConfig{LoadOffset: 64 << 20}, nil, nil, hugepage.ErrImageTooLarge, "copy image"},
		{"image read fails during the copy", nedevtest.SimConfig{}, nil, func(r *rig) {
			// Let eif.Read's own reads through, then fail the copy's.
			calls := countReads(r.spec.EIFPath)
			r.b.cfg.WrapImage = func(f *os.File) ImageFile { return &failingFile{File: f, n: calls} }
		}, hugepage.ErrCopy, "copy image"},
		{"no-kernel image", nedevtest.SimConfig{}, nil, func(r *rig) {
			r.spec.EIFPath = testEIF(r.testingT, r.spec.Dir.Path(), []byte(eif.NoKernelMarker), 0)
		}, backend.ErrUnsupportedImage, "read image"},
		{"memory below 4 x EIF", nedevtest.SimConfig{}, nil, func(r *rig) {
			r.spec.EIFPath = testEIF(r.testingT, r.spec.Dir.Path(), []byte("bzImage"), 16<<20)
		}, ErrInsufficientMemory, "read image"},
		{"corrupt EIF", nedevtest.SimConfig{}, nil, func(r *rig) {
			os.WriteFile(r.spec.EIFPath, []byte("not an eif at all"), 0o644)
		}, eif.ErrBadMagic, "read image"},
	}
	covered := map[nedev.Errno]bool{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t, tt.sim, tt.free)
			r.testingT = t
			if tt.setup != nil {
				tt.setup(r)
				r.openImage(t)
			}
			inst, err := r.b.Launch(context.Background(), r.spec)
			if err == nil {
				inst.Terminate(context.Background())
				t.Fatal("launch succeeded")
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			var se *backend.StepError
			if !errors.As(err, &se) || !strings.HasPrefix(se.Step, tt.step) {
				t.Errorf("step of %v is not %q", err, tt.step)
			}
			if e, ok := tt.want.(nedev.Errno); ok {
				covered[e] = true
				if !strings.Contains(err.Error(), e.Fix()) {
					t.Errorf("error %q lacks the fix %q", err, e.Fix())
				}
			}
			r.checkNoLeaks(t)
		})
	}
	// 262 (region already used) cannot arise from the launch sequence,
	// which maps each page once; it is injected.
	t.Run("262 region used", func(t *testing.T) {
		r := newRig(t, nedevtest.SimConfig{}, nil)
		r.sim.Inject(nedev.OpSetUserMemoryRegion, syscall.Errno(nedev.ErrMemRegionAlreadyUsed))
		_, err := r.b.Launch(context.Background(), r.spec)
		if !errors.Is(err, nedev.ErrMemRegionAlreadyUsed) {
			t.Fatalf("err = %v", err)
		}
		covered[nedev.ErrMemRegionAlreadyUsed] = true
		r.checkNoLeaks(t)
	})
	for e := nedev.FirstErrno; e <= nedev.LastErrno; e++ {
		if !covered[e] {
			t.Errorf("driver error %d (%s) is not exercised", e, e.Name())
		}
	}
}

// countReads returns how many ReadAt calls eif.Read makes on the file.
func countReads(path string) int {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	ff := &failingFile{File: f, n: 1 << 30}
	fi, _ := f.Stat()
	_, _ = eif.Read(ff, fi.Size(), eif.ReadOptions{})
	return ff.calls
}

func TestLaunchCancelled(t *testing.T) {
	r := newRig(t, nedevtest.SimConfig{}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := r.b.Launch(ctx, r.spec); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	r.checkNoLeaks(t)
}

func TestLaunchInvalidSpec(t *testing.T) {
	r := newRig(t, nedevtest.SimConfig{}, nil)
	r.spec.CID = 3
	if _, err := r.b.Launch(context.Background(), r.spec); err == nil || !strings.Contains(err.Error(), "CID") {
		t.Fatalf("err = %v", err)
	}
	r.checkNoLeaks(t)
}

func TestDuplicateCID(t *testing.T) {
	r := newRig(t, nedevtest.SimConfig{}, nil)
	first, err := r.b.Launch(context.Background(), r.spec)
	if err != nil {
		t.Fatal(err)
	}
	second := r.spec
	second.CPUs = []int{2, 6}
	_, err = r.b.Launch(context.Background(), second)
	if !errors.Is(err, nedev.ErrInvalidEnclaveCID) {
		t.Fatalf("second launch with CID 20: %v", err)
	}
	if diff := cmp.Diff([]int{1, 5}, r.sim.UsedCPUs()); diff != "" {
		t.Errorf("the failed launch kept CPUs (-want +got):\n%s", diff)
	}
	first.Terminate(context.Background())
	r.checkNoLeaks(t)
}

func TestHostListenFiltersCID(t *testing.T) {
	r := newRig(t, nedevtest.SimConfig{}, nil)
	l, err := r.b.HostListen(context.Background(), r.spec, 9000)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	got := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			got <- c
		}
	}()
	// Another enclave (CID 21) is refused: its connection is closed.
	other, err := r.vs.enclaveDial(21, 9000)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Read(make([]byte, 1)); err == nil {
		t.Error("connection from CID 21 was not closed")
	}
	other.Close()
	mine, err := r.vs.enclaveDial(20, 9000)
	if err != nil {
		t.Fatal(err)
	}
	defer mine.Close()
	c := <-got
	defer c.Close()
	mine.Write([]byte{0xB7})
	b := make([]byte, 1)
	if _, err := io.ReadFull(c, b); err != nil || b[0] != 0xB7 {
		t.Errorf("heartbeat byte %x, %v", b, err)
	}
	if _, err := r.b.HostListen(context.Background(), r.spec, 9000); err == nil {
		t.Error("second listener on the same port succeeded")
	}
}

func TestCheck(t *testing.T) {
	good := fstest.MapFS{
		"dev/nitro_enclaves": {},
		"dev/vsock":          {},
		"sys/module/nitro_enclaves/parameters/ne_cpus":          {Data: []byte("1,5\n")},
		"sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages": {Data: []byte("64\n")},
	}
	openOK := func(string) error { return nil }
	b := New(Config{Host: doctor.Host{FS: good, Euid: 0, OpenRW: openOK}})
	if err := b.Check(context.Background()); err != nil {
		t.Errorf("ready host: %v", err)
	}
	bare := fstest.MapFS{"dev/vsock": {}}
	b = New(Config{Host: doctor.Host{FS: bare, Euid: 1000, OpenRW: openOK}})
	err := b.Check(context.Background())
	if !errors.Is(err, backend.ErrUnavailable) {
		t.Fatalf("bare host: %v", err)
	}
	for _, s := range []string{"modprobe nitro_enclaves", "ne_cpus", "hugepages", "sudo"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("Check error %q does not mention %q", err, s)
		}
	}
	if b.Kind() != backend.KindNitro {
		t.Errorf("Kind = %q", b.Kind())
	}
}

func BenchmarkLaunchTerminate(b *testing.B) {
	dir := b.TempDir()
	mem := hugepagetest.NewFake(map[uint64]int{2 << 20: 64})
	sim := nedevtest.NewSim(nedevtest.SimConfig{Memory: mem})
	be := New(Config{OpenDevice: sim.Open, Mapper: mem, Vsock: &fakeVsock{dir: dir}})
	spec := backend.Spec{ID: "bench", CID: 20, CPUs: []int{1, 5}, MemoryMiB: 64, EIFPath: testEIF(b, dir, []byte("k"), 1<<20), Dir: backend.Dir(dir)}
	img, err := os.Open(spec.EIFPath)
	if err != nil {
		b.Fatal(err)
	}
	defer img.Close()
	spec.Image = img
	for b.Loop() {
		inst, err := be.Launch(context.Background(), spec)
		if err != nil {
			b.Fatal(err)
		}
		inst.Terminate(context.Background())
	}
}
