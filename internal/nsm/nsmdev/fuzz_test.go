package nsmdev_test

import (
	"bytes"
	"context"
	"errors"
	"syscall"
	"testing"

	"github.com/cloister/cloister/internal/nsm/nsmdev"
	"github.com/cloister/cloister/internal/nsm/nsmdev/nsmdevtest"
)

// FuzzIoctl runs Ioctl over arbitrary caller memory (three regions of
// fuzzed size, protection and contents), arbitrary cmd, arg and struct
// fields, and an arbitrary module answer, and checks it against the
// driver's steps written out independently: the errno, what reached the
// module, and that nothing but the response prefix and the struct changed.
func FuzzIoctl(f *testing.F) {
	const a, b, c = 0x1000, 0x4000, 0x10000
	seed := func(cmd uint32, arg, reqAddr, reqLen, respAddr, respLen uint64, perms uint16, size uint16, resp []byte, fail uint8) {
		f.Add(cmd, arg, reqAddr, reqLen, respAddr, respLen, perms, size, []byte("request payload"), resp, fail)
	}
	rw := uint16(0x3f)
	seed(nsmdev.IoctlRaw, a, b, 15, c, 100, rw, 64, []byte("response"), 0)
	seed(nsmdev.IoctlRaw, a, b, 15, c, 4, rw, 64, []byte("response"), 0)
	seed(nsmdev.IoctlRaw, a, b, 0, 0, 0, rw, 64, nil, 0)
	seed(nsmdev.IoctlRaw, a, b, 4097, c, 100, rw, 64, nil, 0)
	seed(nsmdev.IoctlRaw, a, b, 15, c, 100, 0x3f&^0x2, 64, []byte("x"), 0)  // arg read-only
	seed(nsmdev.IoctlRaw, a, b, 15, c, 100, 0x3f&^0x20, 64, []byte("x"), 0) // response read-only
	seed(nsmdev.IoctlRaw, a, b, 15, c, 100, rw, 64, nil, 1)
	seed(nsmdev.IoctlRaw, a, b, 15, c, 100, rw, 64, nil, 2)
	seed(nsmdev.IoctlRaw, a, b, 15, c, 100, rw, 64, make([]byte, nsmdev.ResponseMaxSize+1), 0)
	seed(0, a, b, 15, c, 100, rw, 64, nil, 0)
	seed(nsmdev.IoctlRaw, 1<<64-8, b, 15, c, 100, rw, 64, nil, 0)
	seed(nsmdev.IoctlRaw, a, 1<<64-1, 15, c, 1<<63, rw, 64, nil, 0)

	f.Fuzz(func(t *testing.T, cmd uint32, arg, reqAddr, reqLen, respAddr, respLen uint64, perms, size uint16, content, resp []byte, fail uint8) {
		perm := func(i int) nsmdevtest.Perm { return nsmdevtest.Perm(perms>>(2*i)) & nsmdevtest.RW }
		// Region a holds the struct (its fields as fuzzed) at its start,
		// region b the fuzzed content, region c a response buffer.
		raw := nsmdev.Raw{RequestAddr: reqAddr, RequestLen: reqLen, ResponseAddr: respAddr, ResponseLen: respLen}
		rb := raw.Bytes()
		aData := make([]byte, 32+int(size%64))
		copy(aData, rb[:])
		bData := make([]byte, int(size)%(2*nsmdev.RequestMaxSize))
		copy(bData, content)
		mem := nsmdevtest.NewMemory(
			nsmdevtest.Region{Addr: a, Data: aData, Perm: perm(0)},
			nsmdevtest.Region{Addr: b, Data: bData, Perm: perm(1)},
			nsmdevtest.Region{Addr: c, Data: make([]byte, int(size)%(nsmdev.ResponseMaxSize+64)), Perm: perm(2)},
		)
		before := mem.Snapshot()
		var got [][]byte
		rt := roundTripFunc(func(ctx context.Context, req []byte) ([]byte, error) {
			got = append(got, bytes.Clone(req))
			switch fail % 3 {
			case 1:
				return nil, context.DeadlineExceeded
			case 2:
				return nil, errors.New("broken")
			}
			return resp, nil
		})

		errno := nsmdev.Ioctl(context.Background(), mem, cmd, arg, rt)

		// The driver's steps, independently.
		var want syscall.Errno
		var n uint64
		var wantReq []byte
		readable := func(addr, l uint64) bool {
			return l == 0 || (l <= 1<<20 && mem.Accessible(addr, int(l), nsmdevtest.Read))
		}
		writable := func(addr, l uint64) bool {
			return l == 0 || (l <= 1<<20 && mem.Accessible(addr, int(l), nsmdevtest.Write))
		}
		var cur nsmdev.Raw
		if readable(arg, 32) {
			var b [32]byte
			if err := mem.ReadAt(b[:], arg); err != nil {
				t.Fatal(err)
			}
			cur = nsmdev.ParseRaw(&b)
		}
		switch {
		case cmd != nsmdev.IoctlRaw:
			want = syscall.EINVAL
		case !readable(arg, 32):
			want = syscall.EFAULT
		case cur.RequestLen > nsmdev.RequestMaxSize:
			want = syscall.EMSGSIZE
		case !readable(cur.RequestAddr, cur.RequestLen):
			want = syscall.EFAULT
		default:
			wantReq = make([]byte, cur.RequestLen)
			if len(wantReq) > 0 {
				if err := mem.ReadAt(wantReq, cur.RequestAddr); err != nil {
					t.Fatal(err)
				}
			}
			n = min(cur.ResponseLen, uint64(len(resp)))
			switch {
			case fail%3 == 1:
				want = syscall.ETIMEDOUT
			case fail%3 == 2 || len(resp) > nsmdev.ResponseMaxSize:
				want = syscall.EIO
			case !writable(cur.ResponseAddr, n):
				want = syscall.EFAULT
			case !writable(arg, 32):
				want = syscall.EFAULT
			}
		}
		if errno != want {
			t.Fatalf("Ioctl = %v, want %v (cmd %#x arg %#x raw %+v)", errno, want, cmd, arg, cur)
		}
		if (wantReq == nil) != (len(got) == 0) || len(got) > 1 || (len(got) == 1 && !bytes.Equal(got[0], wantReq)) {
			t.Fatalf("module got %d requests %q, want %q", len(got), got, wantReq)
		}
		// Only the response prefix (when the module answered and it fit)
		// and the struct (on success) may have changed.
		after := mem.Snapshot()
		for i := range before {
			exp := bytes.Clone(before[i].Data)
			base := before[i].Addr
			if wantReq != nil && want != syscall.EIO && want != syscall.ETIMEDOUT && writable(cur.ResponseAddr, n) {
				copyAt(exp, base, resp[:n], cur.ResponseAddr)
			}
			if want == 0 {
				out := cur
				out.ResponseLen = n
				ob := out.Bytes()
				copyAt(exp, base, ob[:], arg)
			}
			if !bytes.Equal(exp, after[i].Data) {
				t.Fatalf("region %#x changed unexpectedly (errno %v)", base, errno)
			}
		}
	})
}

// copyAt copies p, meant for address addr, into the part of region data
// (at base) it overlaps.
func copyAt(data []byte, base uint64, p []byte, addr uint64) {
	for i := range p {
		x := addr + uint64(i)
		if x >= base && x-base < uint64(len(data)) {
			data[x-base] = p[i]
		}
	}
}

func BenchmarkIoctl(b *testing.B) {
	mem := nsmdevtest.NewMemory()
	arg := mem.Map(argAddr, nsmdev.RawSize, nsmdevtest.RW)
	req := mem.Map(reqAddr, 1100, nsmdevtest.Read)
	copy(req, nsmdevtest.Pattern(1100, 1))
	mem.Map(respAddr, nsmdev.ResponseMaxSize, nsmdevtest.RW)
	raw := nsmdev.Raw{RequestAddr: reqAddr, RequestLen: 1100, ResponseAddr: respAddr, ResponseLen: nsmdev.ResponseMaxSize}
	rb := raw.Bytes()
	copy(arg, rb[:])
	doc := nsmdevtest.Pattern(4500, 2) // an attestation document's size
	rt := roundTripFunc(func(ctx context.Context, r []byte) ([]byte, error) { return doc, nil })
	b.ReportAllocs()
	for b.Loop() {
		if e := nsmdev.Ioctl(b.Context(), mem, nsmdev.IoctlRaw, argAddr, rt); e != 0 {
			b.Fatal(e)
		}
		copy(arg, rb[:])
	}
}
