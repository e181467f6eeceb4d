package nsmcuse_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/internal/cuse"
	"github.com/cloister/cloister/internal/cuse/cusetest"
	"github.com/cloister/cloister/internal/nsm/nsmcuse"
	"github.com/cloister/cloister/internal/nsm/nsmdev"
	"github.com/cloister/cloister/internal/nsm/nsmdev/nsmdevtest"
)

const (
	argAddr  = 0x1000
	roAddr   = 0x3000
	reqAddr  = 0x10000
	respAddr = 0x20000
	edge     = 0x30000
)

// world is one caller memory and module, built twice: once for the
// driver (nsmdev.Ioctl directly), once for CUSE.
type world struct {
	mem *nsmdevtest.Memory
	mod *nsmdevtest.Module
}

func newWorld(raw nsmdev.Raw, resp []byte, rtErr error) world {
	mem := nsmdevtest.NewMemory(nsmdevtest.Region{Addr: reqAddr, Data: nsmdevtest.Pattern(nsmdev.RequestMaxSize+100, 1), Perm: nsmdevtest.Read})
	rb := raw.Bytes()
	copy(mem.Map(argAddr, nsmdev.RawSize, nsmdevtest.RW), rb[:])
	copy(mem.Map(roAddr, nsmdev.RawSize, nsmdevtest.Read), rb[:])
	mem.Map(respAddr, 16384, nsmdevtest.RW)
	copy(mem.Map(edge, 16, nsmdevtest.RW), rb[:])
	return world{mem: mem, mod: &nsmdevtest.Module{Resp: resp, Err: rtErr}}
}

// TestMatchesDriver runs each case through the driver's semantics directly
// and through the CUSE retry protocol, and compares errno, what reached
// the module, and the caller's memory afterwards; the two documented
// differences in the order of the final copies are pinned exactly.
func TestMatchesDriver(t *testing.T) {
	response := nsmdevtest.Pattern(nsmdev.ResponseMaxSize, 9)
	okRaw := nsmdev.Raw{RequestAddr: reqAddr, RequestLen: 40, ResponseAddr: respAddr, ResponseLen: 16384}
	tests := []struct {
		name   string
		cmd    uint32
		arg    uint64
		raw    nsmdev.Raw
		resp   []byte
		rtErr  error
		want   syscall.Errno
		passes int // including a last one that fails in the kernel's copy-in
		// differs names the documented difference in memory, if any.
		differs string
	}{
		{name: "ok", arg: argAddr, raw: okRaw, resp: response[:3000], passes: 3},
		{name: "truncated", arg: argAddr, raw: nsmdev.Raw{RequestAddr: reqAddr, RequestLen: 40, ResponseAddr: respAddr, ResponseLen: 100}, resp: response[:3000], passes: 3},
		{name: "full-size response", arg: argAddr, raw: okRaw, resp: response, passes: 3},
		{name: "largest request", arg: argAddr, raw: nsmdev.Raw{RequestAddr: reqAddr, RequestLen: 4096, ResponseAddr: respAddr, ResponseLen: 10}, resp: response[:5], passes: 3},
		{name: "empty request at a bad address", arg: argAddr, raw: nsmdev.Raw{RequestAddr: 0xdead0000, ResponseAddr: respAddr, ResponseLen: 10}, resp: response[:5], passes: 3},
		{name: "no response buffer", arg: argAddr, raw: nsmdev.Raw{RequestAddr: reqAddr, RequestLen: 40}, resp: response[:5], passes: 3},
		{name: "empty response", arg: argAddr, raw: okRaw, resp: []byte{}, passes: 3},
		{name: "wrong cmd", cmd: 0xc0200a01, arg: argAddr, raw: okRaw, want: syscall.EINVAL, passes: 1},
		{name: "wrong cmd, bad arg", cmd: 1, arg: 0, want: syscall.EINVAL, passes: 1},
		{name: "NULL arg", arg: 0, want: syscall.EFAULT, passes: 2},
		{name: "arg partly mapped", arg: edge, want: syscall.EFAULT, passes: 2},
		{name: "arg wraps", arg: 1<<64 - 16, want: syscall.EFAULT, passes: 1},
		{name: "request too long", arg: argAddr, raw: nsmdev.Raw{RequestAddr: reqAddr, RequestLen: 4097, ResponseAddr: respAddr, ResponseLen: 10}, want: syscall.EMSGSIZE, passes: 2},
		{name: "request length 2^63", arg: argAddr, raw: nsmdev.Raw{RequestLen: 1 << 63}, want: syscall.EMSGSIZE, passes: 2},
		{name: "request unmapped", arg: argAddr, raw: nsmdev.Raw{RequestAddr: 0xdead0000, RequestLen: 10, ResponseAddr: respAddr, ResponseLen: 10}, want: syscall.EFAULT, passes: 3},
		{name: "request past its mapping", arg: argAddr, raw: nsmdev.Raw{RequestAddr: edge, RequestLen: 17, ResponseAddr: respAddr, ResponseLen: 10}, want: syscall.EFAULT, passes: 3},
		{name: "module timed out", arg: argAddr, raw: okRaw, rtErr: context.DeadlineExceeded, want: syscall.ETIMEDOUT, passes: 3},
		{name: "module unreachable", arg: argAddr, raw: okRaw, rtErr: errors.New("refused"), want: syscall.EIO, passes: 3},
		{name: "response too long", arg: argAddr, raw: okRaw, resp: nsmdevtest.Pattern(nsmdev.ResponseMaxSize+1, 2), want: syscall.EIO, passes: 3},
		{name: "response claims more than mapped, fits", arg: argAddr, raw: nsmdev.Raw{RequestAddr: reqAddr, RequestLen: 40, ResponseAddr: edge, ResponseLen: 1 << 40}, resp: response[:16], passes: 3},
		{name: "response buffer read-only", arg: argAddr, raw: nsmdev.Raw{RequestAddr: reqAddr, RequestLen: 40, ResponseAddr: reqAddr, ResponseLen: 100}, resp: response[:50], want: syscall.EFAULT, passes: 3,
			differs: "response.len updated"},
		{name: "response buffer too short", arg: argAddr, raw: nsmdev.Raw{RequestAddr: reqAddr, RequestLen: 40, ResponseAddr: edge, ResponseLen: 100}, resp: response[:50], want: syscall.EFAULT, passes: 3,
			differs: "response.len updated"},
		{name: "struct read-only", arg: roAddr, raw: okRaw, resp: response[:50], want: syscall.EFAULT, passes: 3,
			differs: "response not written"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := tt.cmd
			if cmd == 0 && tt.name != "wrong cmd, bad arg" {
				cmd = nsmdev.IoctlRaw
			}
			drv := newWorld(tt.raw, tt.resp, tt.rtErr)
			dErr := nsmdev.Ioctl(context.Background(), drv.mem, cmd, tt.arg, drv.mod)
			cw := newWorld(tt.raw, tt.resp, tt.rtErr)
			res, cErr, st, err := cusetest.Direct(context.Background(), nsmcuse.NewHandler(cw.mod), cmd, tt.arg, cw.mem, 10)
			if err != nil {
				t.Fatal(err)
			}
			if dErr != tt.want || cErr != tt.want || res != 0 {
				t.Fatalf("errno: driver %v, CUSE %v (result %d), want %v", dErr, cErr, res, tt.want)
			}
			if st.Passes != tt.passes {
				t.Errorf("%d passes, want %d", st.Passes, tt.passes)
			}
			if diff := cmp.Diff(drv.mod.Requests(), cw.mod.Requests()); diff != "" {
				t.Errorf("module requests, driver vs CUSE (-driver +cuse):\n%s", diff)
			}
			dm, cm := drv.mem.Snapshot(), cw.mem.Snapshot()
			switch tt.differs {
			case "":
				if diff := cmp.Diff(dm, cm); diff != "" {
					t.Errorf("memory afterwards, driver vs CUSE (-driver +cuse):\n%s", diff)
				}
			case "response.len updated":
				// The driver leaves the struct; CUSE wrote it first.
				want := tt.raw
				want.ResponseLen = uint64(len(tt.resp))
				checkStruct(t, cw.mem, tt.arg, want)
				checkStruct(t, drv.mem, tt.arg, tt.raw)
			case "response not written":
				if got := read(t, drv.mem, respAddr, 50); !bytes.Equal(got, tt.resp) {
					t.Errorf("driver did not write the response")
				}
				if got := read(t, cw.mem, respAddr, 50); !bytes.Equal(got, make([]byte, 50)) {
					t.Errorf("CUSE wrote the response: % x", got[:8])
				}
			}
		})
	}
}

func read(t *testing.T, mem *nsmdevtest.Memory, addr uint64, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if err := mem.ReadAt(b, addr); err != nil {
		t.Fatal(err)
	}
	return b
}

func checkStruct(t *testing.T, mem *nsmdevtest.Memory, addr uint64, want nsmdev.Raw) {
	t.Helper()
	var b [nsmdev.RawSize]byte
	copy(b[:], read(t, mem, addr, nsmdev.RawSize))
	if diff := cmp.Diff(want, nsmdev.ParseRaw(&b)); diff != "" {
		t.Errorf("struct at %#x (-want +got):\n%s", addr, diff)
	}
}

// changing is a memory whose struct changes after the first read of it,
// as when another thread rewrites it between two passes.
type changing struct {
	*nsmdevtest.Memory
	once  sync.Once
	after nsmdev.Raw
}

func (c *changing) ReadAt(p []byte, addr uint64) error {
	err := c.Memory.ReadAt(p, addr)
	if addr == argAddr {
		c.once.Do(func() {
			b := c.after.Bytes()
			if err := c.Memory.WriteAt(b[:], argAddr); err != nil {
				panic(err)
			}
		})
	}
	return err
}

// TestStructChangesBetweenPasses: the pass whose data no longer matches its
// struct is retried with the new struct's ranges, and the module sees the
// request of the struct the last pass carried.
func TestStructChangesBetweenPasses(t *testing.T) {
	before := nsmdev.Raw{RequestAddr: reqAddr, RequestLen: 10, ResponseAddr: respAddr, ResponseLen: 100}
	after := nsmdev.Raw{RequestAddr: reqAddr + 100, RequestLen: 20, ResponseAddr: respAddr, ResponseLen: 50}
	w := newWorld(before, []byte("answer"), nil)
	mem := &changing{Memory: w.mem, after: after}
	res, errno, st, err := cusetest.Direct(context.Background(), nsmcuse.NewHandler(w.mod), nsmdev.IoctlRaw, argAddr, mem, 10)
	if err != nil || errno != 0 || res != 0 {
		t.Fatalf("ioctl: %d %v %v", res, errno, err)
	}
	if st.Passes != 4 {
		t.Errorf("%d passes, want 4 (one more for the changed struct)", st.Passes)
	}
	if want := [][]byte{nsmdevtest.Pattern(nsmdev.RequestMaxSize+100, 1)[100:120]}; !cmp.Equal(want, w.mod.Requests()) {
		t.Errorf("module got %x, want %x", w.mod.Requests(), want)
	}
	after.ResponseLen = 6
	checkStruct(t, w.mem, argAddr, after)
}

// FuzzHandler compares the CUSE path with the driver's semantics on
// arbitrary memory, structs and module answers: same errno, same requests
// to the module, and the same memory afterwards except after an EFAULT
// that followed the module call (the documented order of the final
// copies).
func FuzzHandler(f *testing.F) {
	f.Add(uint32(nsmdev.IoctlRaw), uint64(argAddr), uint64(reqAddr), uint64(40), uint64(respAddr), uint64(100), uint8(0x3f), []byte("response"), uint8(0))
	f.Add(uint32(nsmdev.IoctlRaw), uint64(argAddr), uint64(reqAddr), uint64(4097), uint64(respAddr), uint64(100), uint8(0x3f), []byte("x"), uint8(0))
	f.Add(uint32(nsmdev.IoctlRaw), uint64(argAddr), uint64(0), uint64(0), uint64(0), uint64(0), uint8(0x3f), []byte{}, uint8(0))
	f.Add(uint32(nsmdev.IoctlRaw), uint64(argAddr), uint64(reqAddr), uint64(40), uint64(reqAddr), uint64(100), uint8(0x3f), []byte("x"), uint8(1))
	f.Add(uint32(7), uint64(argAddr), uint64(reqAddr), uint64(40), uint64(respAddr), uint64(100), uint8(0x3f), []byte("x"), uint8(2))
	f.Fuzz(func(t *testing.T, cmd uint32, arg, reqA, reqLen, respA, respLen uint64, perms uint8, resp []byte, fail uint8) {
		raw := nsmdev.Raw{RequestAddr: reqA, RequestLen: reqLen, ResponseAddr: respA, ResponseLen: respLen}
		build := func() (*nsmdevtest.Memory, *nsmdevtest.Module) {
			p := func(i int) nsmdevtest.Perm { return nsmdevtest.Perm(perms>>(2*i)) & nsmdevtest.RW }
			rb := raw.Bytes()
			a := make([]byte, 48)
			copy(a, rb[:])
			mem := nsmdevtest.NewMemory(
				nsmdevtest.Region{Addr: argAddr, Data: a, Perm: p(0)},
				nsmdevtest.Region{Addr: reqAddr, Data: nsmdevtest.Pattern(5000, 3), Perm: p(1)},
				nsmdevtest.Region{Addr: respAddr, Data: make([]byte, 13000), Perm: p(2)},
			)
			var err error
			switch fail % 3 {
			case 1:
				err = context.DeadlineExceeded
			case 2:
				err = errors.New("broken")
			}
			return mem, &nsmdevtest.Module{Resp: resp, Err: err}
		}
		dm, dmod := build()
		dErr := nsmdev.Ioctl(context.Background(), dm, cmd, arg, dmod)
		cm, cmod := build()
		_, cErr, _, err := cusetest.Direct(context.Background(), nsmcuse.NewHandler(cmod), cmd, arg, cm, 10)
		if err != nil {
			t.Fatal(err)
		}
		if dErr != cErr {
			t.Fatalf("errno: driver %v, CUSE %v (raw %+v)", dErr, cErr, raw)
		}
		if !cmp.Equal(dmod.Requests(), cmod.Requests()) {
			t.Fatalf("module requests differ: driver %d, CUSE %d", len(dmod.Requests()), len(cmod.Requests()))
		}
		if dErr == syscall.EFAULT && len(dmod.Requests()) > 0 {
			return
		}
		ds, cs := dm.Snapshot(), cm.Snapshot()
		for i := range ds {
			if !bytes.Equal(ds[i].Data, cs[i].Data) {
				t.Fatalf("memory at %#x differs (errno %v)", ds[i].Addr, dErr)
			}
		}
	})
}

// TestThroughChannel serves /dev/nsm over a (simulated) CUSE channel to
// many threads at once, each with its own buffers, on handles opened,
// shared (a forked child or a passed descriptor uses its parent's handle)
// and released.
func TestThroughChannel(t *testing.T) {
	ch, k, err := cusetest.Pair()
	if err != nil {
		t.Fatal(err)
	}
	dev := t.TempDir()
	echo := roundTripFunc(func(ctx context.Context, r []byte) ([]byte, error) { return append([]byte("echo:"), r...), nil })
	done := make(chan error, 1)
	var srv *cuse.Server
	go func() {
		var err error
		srv, err = cuse.Init(ch, cuse.Config{Name: nsmcuse.DeviceName, Mode: nsmcuse.DeviceMode, DevDir: dev, Handler: nsmcuse.NewHandler(echo)})
		done <- err
	}()
	if _, err := k.Handshake(38); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dev, "nsm"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background()) }()
	defer func() {
		k.Close()
		<-served
		ch.Close()
	}()

	fhA, err := k.Open(uint32(os.O_RDWR))
	if err != nil {
		t.Fatal(err)
	}
	fhB, err := k.Open(uint32(os.O_RDONLY))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 24 {
		wg.Go(func() {
			fh := fhA // threads and forked children share the open's handle
			if i%3 == 0 {
				fh = fhB
			}
			mem := nsmdevtest.NewMemory()
			a := mem.Map(argAddr, nsmdev.RawSize, nsmdevtest.RW)
			r := mem.Map(reqAddr, 8, nsmdevtest.Read)
			out := mem.Map(respAddr, 64, nsmdevtest.RW)
			copy(r, fmt.Sprintf("caller%02d", i))
			rb := nsmdev.Raw{RequestAddr: reqAddr, RequestLen: 8, ResponseAddr: respAddr, ResponseLen: 64}.Bytes()
			copy(a, rb[:])
			for range 20 {
				_, errno, _, err := k.Ioctl(fh, nsmdev.IoctlRaw, argAddr, mem, uint32(100+i), 5)
				if err != nil || errno != 0 {
					t.Errorf("caller %d: %v %v", i, errno, err)
					return
				}
				if want := fmt.Sprintf("echo:caller%02d", i); string(out[:13]) != want {
					t.Errorf("caller %d got %q", i, out[:13])
					return
				}
			}
		})
	}
	wg.Wait()
	for _, fh := range []uint64{fhA, fhB} {
		if err := k.Release(fh); err != nil {
			t.Fatal(err)
		}
	}
	if n := srv.OpenHandles(); n != 0 {
		t.Errorf("%d handles left open", n)
	}
}

type roundTripFunc func(ctx context.Context, req []byte) ([]byte, error)

func (f roundTripFunc) RoundTrip(ctx context.Context, req []byte) ([]byte, error) { return f(ctx, req) }

func BenchmarkHandler(b *testing.B) {
	mem := nsmdevtest.NewMemory()
	a := mem.Map(argAddr, nsmdev.RawSize, nsmdevtest.RW)
	copy(mem.Map(reqAddr, 1100, nsmdevtest.Read), nsmdevtest.Pattern(1100, 1))
	mem.Map(respAddr, nsmdev.ResponseMaxSize, nsmdevtest.RW)
	rb := nsmdev.Raw{RequestAddr: reqAddr, RequestLen: 1100, ResponseAddr: respAddr, ResponseLen: nsmdev.ResponseMaxSize}.Bytes()
	doc := nsmdevtest.Pattern(4500, 2)
	h := nsmcuse.NewHandler(roundTripFunc(func(ctx context.Context, r []byte) ([]byte, error) { return doc, nil }))
	b.ReportAllocs()
	for b.Loop() {
		copy(a, rb[:])
		if _, errno, _, err := cusetest.Direct(b.Context(), h, nsmdev.IoctlRaw, argAddr, mem, 5); err != nil || errno != 0 {
			b.Fatal(errno, err)
		}
	}
}
