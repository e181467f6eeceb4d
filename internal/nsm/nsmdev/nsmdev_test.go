package nsmdev_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/internal/nsm"
	"github.com/cloister/cloister/internal/nsm/nsmdev"
	"github.com/cloister/cloister/internal/nsm/nsmdev/nsmdevtest"
)

// Addresses of the test's caller memory.
const (
	argAddr  = 0x1000  // struct nsm_raw, read-write
	roAddr   = 0x3000  // struct nsm_raw, read-only
	woAddr   = 0x5000  // struct nsm_raw, write-only
	reqAddr  = 0x10000 // request buffer, read-only, 8 KiB
	respAddr = 0x20000 // response buffer, read-write, 16 KiB
	edge     = 0x30000 // a 16-byte read-write region with nothing after it
)

func TestConstants(t *testing.T) {
	// _IOWR(0x0A, 0, 32): dir 3 << 30 | size 32 << 16 | type 0x0A << 8 | nr 0.
	if got, want := uint32(nsmdev.IoctlRaw), uint32(3<<30|nsmdev.RawSize<<16|0x0A<<8); got != want {
		t.Errorf("IoctlRaw = %#x, want %#x", got, want)
	}
	if nsmdev.RequestMaxSize != nsm.MaxRequestSize || nsmdev.ResponseMaxSize != nsm.MaxResponseSize {
		t.Errorf("limits %d/%d differ from internal/nsm's %d/%d", nsmdev.RequestMaxSize, nsmdev.ResponseMaxSize, nsm.MaxRequestSize, nsm.MaxResponseSize)
	}
}

func TestRawRoundTrip(t *testing.T) {
	r := nsmdev.Raw{RequestAddr: 1, RequestLen: 2 << 40, ResponseAddr: 0xffff_ffff_ffff_fff0, ResponseLen: 4}
	b := r.Bytes()
	if b[0] != 1 || b[8+5] != 2 {
		t.Errorf("not little-endian: % x", b)
	}
	if got := nsmdev.ParseRaw(&b); got != r {
		t.Errorf("ParseRaw(Bytes()) = %+v, want %+v", got, r)
	}
}

func TestIoctl(t *testing.T) {
	request := nsmdevtest.Pattern(nsmdev.RequestMaxSize+100, 1)
	response := nsmdevtest.Pattern(nsmdev.ResponseMaxSize, 9)
	okRaw := nsmdev.Raw{RequestAddr: reqAddr, RequestLen: 40, ResponseAddr: respAddr, ResponseLen: 16384}

	tests := []struct {
		name    string
		cmd     uint32
		arg     uint64
		raw     nsmdev.Raw
		resp    []byte // the module's answer
		rtErr   error
		want    syscall.Errno
		wantReq []byte      // what the module got; nil: not called
		wantOut []byte      // response buffer prefix afterwards
		wantRaw *nsmdev.Raw // struct at arg afterwards; nil: unchanged
	}{
		{
			name: "ok", cmd: nsmdev.IoctlRaw, arg: argAddr, raw: okRaw, resp: response[:3000],
			want: 0, wantReq: request[:40], wantOut: response[:3000],
			wantRaw: &nsmdev.Raw{RequestAddr: reqAddr, RequestLen: 40, ResponseAddr: respAddr, ResponseLen: 3000},
		},
		{
			// parse_resp_raw: response.len = min(user, device): truncated, and
			// response.len says how much was copied, not the full size.
			name: "response truncated to caller's buffer", cmd: nsmdev.IoctlRaw, arg: argAddr,
			raw:  nsmdev.Raw{RequestAddr: reqAddr, RequestLen: 40, ResponseAddr: respAddr, ResponseLen: 100},
			resp: response[:3000], want: 0, wantReq: request[:40], wantOut: append(bytes.Clone(response[:100]), make([]byte, 10)...),
			wantRaw: &nsmdev.Raw{RequestAddr: reqAddr, RequestLen: 40, ResponseAddr: respAddr, ResponseLen: 100},
		},
		{
			name: "full-size response", cmd: nsmdev.IoctlRaw, arg: argAddr, raw: okRaw, resp: response,
			want: 0, wantReq: request[:40], wantOut: response,
			wantRaw: &nsmdev.Raw{RequestAddr: reqAddr, RequestLen: 40, ResponseAddr: respAddr, ResponseLen: nsmdev.ResponseMaxSize},
		},
		{
			name: "largest request", cmd: nsmdev.IoctlRaw, arg: argAddr,
			raw:  nsmdev.Raw{RequestAddr: reqAddr, RequestLen: nsmdev.RequestMaxSize, ResponseAddr: respAddr, ResponseLen: 10},
			resp: response[:5], want: 0, wantReq: request[:nsmdev.RequestMaxSize], wantOut: response[:5],
			wantRaw: &nsmdev.Raw{RequestAddr: reqAddr, RequestLen: nsmdev.RequestMaxSize, ResponseAddr: respAddr, ResponseLen: 5},
		},
		{
			// copy_from_user of 0 bytes succeeds whatever the address.
			name: "empty request at a bad address reaches the module", cmd: nsmdev.IoctlRaw, arg: argAddr,
			raw:  nsmdev.Raw{RequestAddr: 0xdead0000, RequestLen: 0, ResponseAddr: respAddr, ResponseLen: 10},
			resp: response[:5], want: 0, wantReq: []byte{}, wantOut: response[:5],
			wantRaw: &nsmdev.Raw{RequestAddr: 0xdead0000, RequestLen: 0, ResponseAddr: respAddr, ResponseLen: 5},
		},
		{
			name: "zero-length response buffer at a bad address", cmd: nsmdev.IoctlRaw, arg: argAddr,
			raw:  nsmdev.Raw{RequestAddr: reqAddr, RequestLen: 40, ResponseAddr: 0, ResponseLen: 0},
			resp: response[:5], want: 0, wantReq: request[:40],
			wantRaw: &nsmdev.Raw{RequestAddr: reqAddr, RequestLen: 40, ResponseAddr: 0, ResponseLen: 0},
		},
		{
			name: "empty response from the module", cmd: nsmdev.IoctlRaw, arg: argAddr, raw: okRaw, resp: []byte{},
			want: 0, wantReq: request[:40],
			wantRaw: &nsmdev.Raw{RequestAddr: reqAddr, RequestLen: 40, ResponseAddr: respAddr, ResponseLen: 0},
		},
		// EINVAL: nsm_dev_ioctl's "cmd != NSM_IOCTL_RAW".
		{name: "cmd zero", cmd: 0, arg: argAddr, raw: okRaw, want: syscall.EINVAL},
		{name: "_IOWR with another size", cmd: 3<<30 | 16<<16 | 0x0A<<8, arg: argAddr, raw: okRaw, want: syscall.EINVAL},
		{name: "_IOR instead of _IOWR", cmd: 2<<30 | 32<<16 | 0x0A<<8, arg: argAddr, raw: okRaw, want: syscall.EINVAL},
		{name: "another nr", cmd: nsmdev.IoctlRaw + 1, arg: argAddr, raw: okRaw, want: syscall.EINVAL},
		{name: "wrong cmd with a bad arg is still EINVAL", cmd: 0xc0200a01, arg: 0, want: syscall.EINVAL},
		// EFAULT: copy_from_user(&raw, arg).
		{name: "NULL arg", cmd: nsmdev.IoctlRaw, arg: 0, want: syscall.EFAULT},
		{name: "unmapped arg", cmd: nsmdev.IoctlRaw, arg: 0xdead0000, want: syscall.EFAULT},
		{name: "arg partly mapped", cmd: nsmdev.IoctlRaw, arg: edge, want: syscall.EFAULT},
		{name: "arg wraps the address space", cmd: nsmdev.IoctlRaw, arg: 1<<64 - 16, want: syscall.EFAULT},
		{name: "arg write-only", cmd: nsmdev.IoctlRaw, arg: woAddr, want: syscall.EFAULT},
		// EMSGSIZE: fill_req_raw, before reading the request.
		{
			name: "request one byte too long", cmd: nsmdev.IoctlRaw, arg: argAddr,
			raw:  nsmdev.Raw{RequestAddr: reqAddr, RequestLen: nsmdev.RequestMaxSize + 1, ResponseAddr: respAddr, ResponseLen: 100},
			want: syscall.EMSGSIZE,
		},
		{
			name: "huge request length at a bad address", cmd: nsmdev.IoctlRaw, arg: argAddr,
			raw:  nsmdev.Raw{RequestAddr: 0, RequestLen: 1 << 63, ResponseAddr: respAddr, ResponseLen: 100},
			want: syscall.EMSGSIZE,
		},
		// EFAULT: fill_req_raw's copy_from_user(request).
		{
			name: "request unmapped", cmd: nsmdev.IoctlRaw, arg: argAddr,
			raw:  nsmdev.Raw{RequestAddr: 0xdead0000, RequestLen: 10, ResponseAddr: respAddr, ResponseLen: 100},
			want: syscall.EFAULT,
		},
		{
			name: "request runs past its mapping", cmd: nsmdev.IoctlRaw, arg: argAddr,
			raw:  nsmdev.Raw{RequestAddr: edge, RequestLen: 17, ResponseAddr: respAddr, ResponseLen: 100},
			want: syscall.EFAULT,
		},
		{
			name: "request wraps", cmd: nsmdev.IoctlRaw, arg: argAddr,
			raw:  nsmdev.Raw{RequestAddr: 1<<64 - 1, RequestLen: 2, ResponseAddr: respAddr, ResponseLen: 100},
			want: syscall.EFAULT,
		},
		// ETIMEDOUT / EIO: nsm_sendrecv_msg_locked.
		{
			name: "module timed out", cmd: nsmdev.IoctlRaw, arg: argAddr, raw: okRaw,
			rtErr: fmt.Errorf("read: %w", context.DeadlineExceeded), want: syscall.ETIMEDOUT, wantReq: request[:40],
		},
		{
			name: "module unreachable", cmd: nsmdev.IoctlRaw, arg: argAddr, raw: okRaw,
			rtErr: errors.New("connection refused"), want: syscall.EIO, wantReq: request[:40],
		},
		{
			name: "module cancelled", cmd: nsmdev.IoctlRaw, arg: argAddr, raw: okRaw,
			rtErr: context.Canceled, want: syscall.EIO, wantReq: request[:40],
		},
		{
			name: "response longer than the device buffer", cmd: nsmdev.IoctlRaw, arg: argAddr, raw: okRaw,
			resp: nsmdevtest.Pattern(nsmdev.ResponseMaxSize+1, 3), want: syscall.EIO, wantReq: request[:40],
		},
		// EFAULT: parse_resp_raw's copy_to_user(response), after the module
		// ran the request; raw is not written back.
		{
			name: "response buffer read-only", cmd: nsmdev.IoctlRaw, arg: argAddr,
			raw:  nsmdev.Raw{RequestAddr: reqAddr, RequestLen: 40, ResponseAddr: reqAddr, ResponseLen: 100},
			resp: response[:50], want: syscall.EFAULT, wantReq: request[:40],
		},
		{
			name: "response buffer too short for the response", cmd: nsmdev.IoctlRaw, arg: argAddr,
			raw:  nsmdev.Raw{RequestAddr: reqAddr, RequestLen: 40, ResponseAddr: edge, ResponseLen: 100},
			resp: response[:50], want: syscall.EFAULT, wantReq: request[:40],
		},
		{
			// A too-long response.len is harmless when the response fits.
			name: "response buffer claims more than is mapped, response fits", cmd: nsmdev.IoctlRaw, arg: argAddr,
			raw:  nsmdev.Raw{RequestAddr: reqAddr, RequestLen: 40, ResponseAddr: edge, ResponseLen: 1 << 62},
			resp: response[:16], want: 0, wantReq: request[:40],
			wantRaw: &nsmdev.Raw{RequestAddr: reqAddr, RequestLen: 40, ResponseAddr: edge, ResponseLen: 16},
		},
		{
			name: "response wraps", cmd: nsmdev.IoctlRaw, arg: argAddr,
			raw:  nsmdev.Raw{RequestAddr: reqAddr, RequestLen: 40, ResponseAddr: 1<<64 - 8, ResponseLen: 100},
			resp: response[:50], want: syscall.EFAULT, wantReq: request[:40],
		},
		// EFAULT: the final copy_to_user(arg, &raw), after the response was
		// written.
		{
			name: "arg read-only", cmd: nsmdev.IoctlRaw, arg: roAddr, raw: okRaw, resp: response[:50],
			want: syscall.EFAULT, wantReq: request[:40], wantOut: response[:50],
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mem := nsmdevtest.NewMemory(
				nsmdevtest.Region{Addr: reqAddr, Data: bytes.Clone(request), Perm: nsmdevtest.Read},
			)
			arg := mem.Map(argAddr, nsmdev.RawSize, nsmdevtest.RW)
			ro := mem.Map(roAddr, nsmdev.RawSize, nsmdevtest.Read)
			mem.Map(woAddr, nsmdev.RawSize, nsmdevtest.Write)
			out := mem.Map(respAddr, 16384, nsmdevtest.RW)
			edgeData := mem.Map(edge, 16, nsmdevtest.RW)
			rb := tt.raw.Bytes()
			copy(arg, rb[:])
			copy(ro, rb[:])
			copy(edgeData, rb[:])
			mod := &nsmdevtest.Module{Resp: tt.resp, Err: tt.rtErr}

			got := nsmdev.Ioctl(context.Background(), mem, tt.cmd, tt.arg, mod)
			if got != tt.want {
				t.Fatalf("Ioctl = %v (%d), want %v (%d)", got, got, tt.want, tt.want)
			}
			var wantReqs [][]byte
			if tt.wantReq != nil {
				wantReqs = [][]byte{tt.wantReq}
			}
			if diff := cmp.Diff(wantReqs, mod.Requests()); diff != "" {
				t.Errorf("requests the module got (-want +got):\n%s", diff)
			}
			wantOut := make([]byte, 16384)
			copy(wantOut, tt.wantOut)
			if !bytes.Equal(out, wantOut) {
				t.Errorf("response buffer = % x…, want % x…", out[:16], wantOut[:16])
			}
			wantRaw := tt.raw
			if tt.wantRaw != nil {
				wantRaw = *tt.wantRaw
			}
			if tt.arg == argAddr {
				var b [nsmdev.RawSize]byte
				copy(b[:], arg)
				if diff := cmp.Diff(wantRaw, nsmdev.ParseRaw(&b)); diff != "" {
					t.Errorf("struct nsm_raw afterwards (-want +got):\n%s", diff)
				}
			}
		})
	}
}

// TestIoctlWritesBackWholeStruct checks that the struct is written back as
// read, request fields included, as the driver's copy_to_user(argp, &raw)
// does: a concurrent change of the request fields is overwritten.
func TestIoctlWritesBackWholeStruct(t *testing.T) {
	mem := nsmdevtest.NewMemory()
	arg := mem.Map(argAddr, nsmdev.RawSize, nsmdevtest.RW)
	req := mem.Map(reqAddr, 8, nsmdevtest.RW)
	copy(req, "request!")
	mem.Map(respAddr, 8, nsmdevtest.RW)
	raw := nsmdev.Raw{RequestAddr: reqAddr, RequestLen: 8, ResponseAddr: respAddr, ResponseLen: 8}
	rb := raw.Bytes()
	copy(arg, rb[:])
	rt := roundTripFunc(func(ctx context.Context, r []byte) ([]byte, error) {
		// The caller changes its struct while the module works.
		if err := mem.WriteAt(make([]byte, 16), argAddr); err != nil {
			t.Error(err)
		}
		return []byte("resp"), nil
	})
	if got := nsmdev.Ioctl(context.Background(), mem, nsmdev.IoctlRaw, argAddr, rt); got != 0 {
		t.Fatalf("Ioctl = %v", got)
	}
	var b [nsmdev.RawSize]byte
	copy(b[:], arg)
	want := raw
	want.ResponseLen = 4
	if diff := cmp.Diff(want, nsmdev.ParseRaw(&b)); diff != "" {
		t.Errorf("struct afterwards (-want +got):\n%s", diff)
	}
}

type roundTripFunc func(ctx context.Context, req []byte) ([]byte, error)

func (f roundTripFunc) RoundTrip(ctx context.Context, req []byte) ([]byte, error) { return f(ctx, req) }

// TestIoctlConcurrent runs many callers at once, each with its own buffers,
// against one module: each gets the answer to its own request.
func TestIoctlConcurrent(t *testing.T) {
	mem := nsmdevtest.NewMemory()
	rt := roundTripFunc(func(ctx context.Context, r []byte) ([]byte, error) {
		return append([]byte("echo:"), r...), nil
	})
	const callers = 16
	type bufs struct{ arg, req, resp uint64 }
	all := make([]bufs, callers)
	for i := range all {
		base := uint64(0x100000 * (i + 1))
		all[i] = bufs{base, base + 0x1000, base + 0x2000}
		a := mem.Map(all[i].arg, nsmdev.RawSize, nsmdevtest.RW)
		r := mem.Map(all[i].req, 8, nsmdevtest.Read)
		mem.Map(all[i].resp, 64, nsmdevtest.RW)
		copy(r, fmt.Sprintf("caller%02d", i))
		rb := nsmdev.Raw{RequestAddr: all[i].req, RequestLen: 8, ResponseAddr: all[i].resp, ResponseLen: 64}.Bytes()
		copy(a, rb[:])
	}
	var wg sync.WaitGroup
	for i, b := range all {
		wg.Go(func() {
			for range 50 {
				if e := nsmdev.Ioctl(context.Background(), mem, nsmdev.IoctlRaw, b.arg, rt); e != 0 {
					t.Errorf("caller %d: %v", i, e)
					return
				}
				got := make([]byte, 13)
				if err := mem.ReadAt(got, b.resp); err != nil {
					t.Error(err)
					return
				}
				if want := fmt.Sprintf("echo:caller%02d", i); string(got) != want {
					t.Errorf("caller %d got %q, want %q", i, got, want)
					return
				}
			}
		})
	}
	wg.Wait()
}
