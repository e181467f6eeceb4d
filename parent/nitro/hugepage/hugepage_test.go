package hugepage_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/internal/testenv"
	"github.com/cloister/cloister/parent/nitro/hugepage"
	"github.com/cloister/cloister/parent/nitro/hugepage/hugepagetest"
)

// sizesOf returns the page sizes of regs in MiB, in order.
func sizesOf(regs hugepage.Regions) []uint64 {
	var out []uint64
	for _, r := range regs {
		out = append(out, r.Size()/hugepage.MiB)
	}
	return out
}

func TestAllocateStrategy(t *testing.T) {
	tests := []struct {
		name     string
		free     map[uint64]int
		sizes    []uint64
		wantMiB  uint64
		want     []uint64 // page sizes kept, MiB
		wantFree map[uint64]int
	}{
		{"exact 2M", map[uint64]int{2 * hugepage.MiB: 64}, nil, 64, repeat(2, 32), map[uint64]int{2 * hugepage.MiB: 32}},
		{"1G then 2M", map[uint64]int{hugepage.GiB: 2, 2 * hugepage.MiB: 512}, nil, 1536, append([]uint64{1024}, repeat(2, 256)...), map[uint64]int{hugepage.GiB: 1, 2 * hugepage.MiB: 256}},
		{"1G only, less wanted: overshoot with one large page", map[uint64]int{hugepage.GiB: 1}, nil, 512, []uint64{1024}, map[uint64]int{hugepage.GiB: 0}},
		{"small first then surplus freed", map[uint64]int{hugepage.GiB: 1, 2 * hugepage.MiB: 4}, nil, 512, []uint64{1024}, map[uint64]int{hugepage.GiB: 0, 2 * hugepage.MiB: 4}},
		{"2M short, 1G fills", map[uint64]int{hugepage.GiB: 1, 2 * hugepage.MiB: 100}, nil, 1100, []uint64{1024, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2}, map[uint64]int{hugepage.GiB: 0, 2 * hugepage.MiB: 62}},
		{"round up odd size", map[uint64]int{2 * hugepage.MiB: 8}, nil, 5, []uint64{2, 2, 2}, map[uint64]int{2 * hugepage.MiB: 5}},
		{"only listed sizes", map[uint64]int{hugepage.GiB: 4, 2 * hugepage.MiB: 4}, []uint64{2 * hugepage.MiB}, 8, []uint64{2, 2, 2, 2}, map[uint64]int{hugepage.GiB: 4, 2 * hugepage.MiB: 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := hugepagetest.NewFake(tt.free)
			sizes := tt.sizes
			if sizes == nil {
				sizes = hugepage.DefaultPageSizes
			}
			regs, err := hugepage.Allocate(context.Background(), f, sizes, tt.wantMiB*hugepage.MiB)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, sizesOf(regs)); diff != "" {
				t.Errorf("pages (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantFree, f.FreePages()); diff != "" {
				t.Errorf("free pages (-want +got):\n%s", diff)
			}
			if f.Mapped() != len(regs) {
				t.Errorf("%d live mappings, %d regions", f.Mapped(), len(regs))
			}
			if err := regs.Unmap(); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(normalize(tt.free, f.FreePages()), f.FreePages()); diff != "" {
				t.Errorf("after Unmap (-want +got):\n%s", diff)
			}
		})
	}
}

func normalize(initial, now map[uint64]int) map[uint64]int {
	out := map[uint64]int{}
	for k := range now {
		out[k] = initial[k]
	}
	return out
}

func repeat(v uint64, n int) []uint64 {
	out := make([]uint64, n)
	for i := range out {
		out[i] = v
	}
	return out
}

func TestAllocateInsufficient(t *testing.T) {
	f := hugepagetest.NewFake(map[uint64]int{2 * hugepage.MiB: 10})
	_, err := hugepage.Allocate(context.Background(), f, hugepage.DefaultPageSizes, 64*hugepage.MiB)
	if !errors.Is(err, hugepage.ErrInsufficient) || !strings.Contains(err.Error(), "20 MiB of 64 MiB") {
		t.Fatalf("err = %v", err)
	}
	if f.Mapped() != 0 || f.FreePages()[2*hugepage.MiB] != 10 {
		t.Errorf("leak: %d mapped, free %v", f.Mapped(), f.FreePages())
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := hugepage.Allocate(ctx, f, hugepage.DefaultPageSizes, 4*hugepage.MiB); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
	if _, err := hugepage.Allocate(context.Background(), f, hugepage.DefaultPageSizes, 0); !errors.Is(err, hugepage.ErrInsufficient) {
		t.Errorf("zero: %v", err)
	}
}

func TestCopyImage(t *testing.T) {
	f := hugepagetest.NewFake(map[uint64]int{2 * hugepage.MiB: 8})
	regs, err := hugepage.Allocate(context.Background(), f, hugepage.DefaultPageSizes, 16*hugepage.MiB)
	if err != nil {
		t.Fatal(err)
	}
	defer regs.Unmap()
	img := make([]byte, 5*hugepage.MiB+123)
	for i := range img {
		img[i] = byte(i * 7)
	}
	const off = 3 * hugepage.MiB
	if err := regs.CopyImage(off, bytes.NewReader(img), uint64(len(img))); err != nil {
		t.Fatal(err)
	}
	var addrs []uint64
	for _, r := range regs {
		addrs = append(addrs, r.Addr())
	}
	all, err := f.Contents(addrs)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(all[off:off+len(img)], img) {
		t.Error("copied bytes differ from the image")
	}
	if err := regs.CopyImage(off, bytes.NewReader(img), 14*hugepage.MiB); !errors.Is(err, hugepage.ErrImageTooLarge) {
		t.Errorf("too large: %v", err)
	}
	if err := regs.CopyImage(off, bytes.NewReader(img[:100]), uint64(len(img))); !errors.Is(err, hugepage.ErrCopy) {
		t.Errorf("short source: %v", err)
	}
	if err := regs.CopyImage(0, iotest.ErrReader(io.ErrClosedPipe), 10); !errors.Is(err, hugepage.ErrCopy) {
		t.Errorf("failing source: %v", err)
	}
}

// TestMmapReal maps real hugetlb pages (root; it reserves two 2 MiB pages
// itself when none are free and restores the count).
func TestMmapReal(t *testing.T) {
	testenv.RequireRoot(t)
	const nr = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
	const free = "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages"
	read := func(p string) int {
		b, err := os.ReadFile(p)
		testenv.Require(t, err == nil, "2 MiB hugepages ("+p+")", "use a kernel with CONFIG_HUGETLBFS")
		n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		return n
	}
	if read(free) < 2 {
		old := read(nr)
		if err := os.WriteFile(nr, []byte(strconv.Itoa(old+2)), 0); err != nil {
			t.Fatalf("reserve hugepages: %v", err)
		}
		t.Cleanup(func() { _ = os.WriteFile(nr, []byte(strconv.Itoa(old)), 0) })
	}
	testenv.Require(t, read(free) >= 2, "two free 2 MiB hugepages", "free memory or echo 2 > "+nr)
	regs, err := hugepage.Allocate(context.Background(), hugepage.Mmap{}, hugepage.DefaultPageSizes, 4*hugepage.MiB)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range regs {
		if r.Size() != 2*hugepage.MiB || r.Addr()%(2*hugepage.MiB) != 0 {
			t.Errorf("mapping %#x+%d is not one aligned 2 MiB page", r.Addr(), r.Size())
		}
	}
	img := bytes.Repeat([]byte("eif!"), 1<<18)
	if err := regs.CopyImage(hugepage.MiB, bytes.NewReader(img), uint64(len(img))); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(regs[0].Bytes()[hugepage.MiB:2*hugepage.MiB], img[:hugepage.MiB]) {
		t.Error("copy into real pages differs")
	}
	if err := regs.Unmap(); err != nil {
		t.Fatal(err)
	}
	if err := regs[0].Unmap(); err == nil {
		t.Error("second Unmap succeeded")
	}
	if _, err := (hugepage.Mmap{}).Map(3 * hugepage.MiB); err == nil {
		t.Error("Map(3 MiB) succeeded")
	}
}

func BenchmarkCopyImage(b *testing.B) {
	f := hugepagetest.NewFake(map[uint64]int{2 * hugepage.MiB: 64})
	regs, err := hugepage.Allocate(context.Background(), f, hugepage.DefaultPageSizes, 128*hugepage.MiB)
	if err != nil {
		b.Fatal(err)
	}
	defer regs.Unmap()
	img := make([]byte, 32*hugepage.MiB)
	b.SetBytes(int64(len(img)))
	for b.Loop() {
		if err := regs.CopyImage(8*hugepage.MiB, bytes.NewReader(img), uint64(len(img))); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAllocate(b *testing.B) {
	f := hugepagetest.NewFake(map[uint64]int{2 * hugepage.MiB: 1024, hugepage.GiB: 1})
	for b.Loop() {
		regs, err := hugepage.Allocate(context.Background(), f, hugepage.DefaultPageSizes, 2*hugepage.GiB)
		if err != nil {
			b.Fatal(err)
		}
		regs.Unmap()
	}
}
