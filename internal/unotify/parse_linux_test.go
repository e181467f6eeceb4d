//go:build linux

package unotify

import (
	"os"
	"runtime"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/google/go-cmp/cmp"
)

func TestFindMapping(t *testing.T) {
	maps := []byte("00400000-00452000 r-xp 00000000 08:02 173521 /usr/bin/dbus-daemon\n" +
		"00651000-00652000 rw-p 00051000 08:02 173521 /usr/bin/dbus-daemon\n" +
		"7fff5a4a0000-7fff5a4c1000 rw-s 00000000 00:00 0\n" +
		"garbage line\n" +
		"ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]")
	type m struct {
		Start, End, Flags uint64
		OK                bool
	}
	for _, tc := range []struct {
		addr uint64
		want m
	}{
		{0x400000, m{0x400000, 0x452000, 0x5, true}},
		{0x451fff, m{0x400000, 0x452000, 0x5, true}},
		{0x452000, m{}},
		{0x651800, m{0x651000, 0x652000, 0x3, true}},
		{0x7fff5a4a0010, m{0x7fff5a4a0000, 0x7fff5a4c1000, 0xb, true}},
		{0xffffffffff600000, m{0xffffffffff600000, 0xffffffffff601000, 0x4, true}},
		{0, m{}},
	} {
		s, e, f, ok := FindMapping(maps, tc.addr)
		if diff := cmp.Diff(tc.want, m{s, e, f, ok}); diff != "" {
			t.Errorf("FindMapping(%#x) (-want +got):\n%s", tc.addr, diff)
		}
	}
}

// FuzzFindMapping: the /proc/<pid>/maps parser never panics and only
// returns a mapping that covers the address.
func FuzzFindMapping(f *testing.F) {
	f.Add([]byte("00400000-00452000 r-xp 00000000 08:02 173521 /bin/x\n"), uint64(0x400010))
	f.Add([]byte("1-2 rw\n-\n 3-4"), uint64(1))
	f.Fuzz(func(t *testing.T, maps []byte, addr uint64) {
		s, e, _, ok := FindMapping(maps, addr)
		if ok && (addr < s || addr >= e) {
			t.Fatalf("mapping [%#x, %#x) does not cover %#x", s, e, addr)
		}
	})
}

// FuzzParseNetlink: the sock_diag answer parser never panics and every
// message it returns lies inside the datagram.
func FuzzParseNetlink(f *testing.F) {
	f.Add([]byte{20, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xfe, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		msgs, err := parseNetlink(b)
		if err != nil {
			return
		}
		total := 0
		for _, m := range msgs {
			total += nlmsgHdrLen + len(m.data)
		}
		if total > len(b) {
			t.Fatalf("messages of %d bytes from %d", total, len(b))
		}
	})
}

// TestMapsFallbackMemory is an attack on the monitor's memory on kernels
// without PROCMAP_QUERY (before 6.11, Debian 12's 6.1 among them): a
// caller with tens of thousands of mappings makes every check of a write
// to its memory read its /proc/<tid>/maps, megabytes of text, and up to
// MaxInFlight handlers do that at once. The fallback must read the text
// in bounded pieces, never hold all of it.
func TestMapsFallbackMemory(t *testing.T) {
	const n = 30000
	page := unix.Getpagesize()
	var last []byte
	for i := range n {
		prot := unix.PROT_READ
		if i%2 == 1 {
			prot |= unix.PROT_WRITE // alternate, so no two mappings merge
		}
		b, err := unix.Mmap(-1, 0, page, prot, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			t.Fatalf("mapping %d: %v", i, err)
		}
		defer unix.Munmap(b)
		if i == n-1 || i == n-2 {
			last = b
		}
	}
	maps, err := os.Open("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	defer maps.Close()
	c := &Caller{maps: maps, pidfd: -1}
	addr := uint64(uintptr(unsafe.Pointer(&last[0])))
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start, end, _, err := c.mappingFromText(addr)
	runtime.ReadMemStats(&after)
	if err != nil || addr < start || addr >= end {
		t.Fatalf("mappingFromText(%#x) = [%#x, %#x), %v", addr, start, end, err)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 512<<10 {
		t.Errorf("one look-up in a memory map of %d mappings allocated %d bytes, want at most 512 KiB", n, alloc)
	}
}
