//go:build linux

package nsm_test

import (
	"bytes"
	"context"
	"crypto/sha512"
	"crypto/x509"
	"errors"
	"io/fs"
	"os"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/hf/nsm/ioc"
	"golang.org/x/sys/unix"

	"github.com/cloister/cloister/attest"
	"github.com/cloister/cloister/internal/nsm"
	"github.com/cloister/cloister/parent/nsmemu"
)

// fakeNSM is a fake /dev/nsm ioctl that behaves like the Linux driver
// (drivers/misc/nsm.c): EMSGSIZE for a request over 4 KiB, the response
// truncated to the caller's buffer with response.len rewritten, and the
// module behind it an emulator.
type fakeNSM struct {
	mu      sync.Mutex
	module  func(req []byte) []byte
	eintr   int           // return EINTR this many times first
	errno   unix.Errno    // when non-zero, fail every call with it
	lieLen  bool          // report a response longer than the buffer
	block   chan struct{} // when non-nil, the ioctl waits for it to close…
	entered chan struct{} // …after closing this one
	calls   int
	lastReq []byte
}

func (f *fakeNSM) ioctl(fd, cmd uintptr, arg unsafe.Pointer) unix.Errno {
	if cmd != nsm.IoctlRaw {
		return unix.ENOTTY
	}
	if f.block != nil {
		close(f.entered)
		<-f.block
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.eintr > 0 {
		f.eintr--
		return unix.EINTR
	}
	if f.errno != 0 {
		return f.errno
	}
	msg := (*nsm.RawMsg)(arg)
	if msg.Request.Len > nsm.MaxRequestSize {
		return unix.EMSGSIZE
	}
	req := bytes.Clone(unsafe.Slice((*byte)(msg.Request.Addr), msg.Request.Len))
	f.lastReq = req
	resp := f.module(req)
	out := unsafe.Slice((*byte)(msg.Response.Addr), msg.Response.Len)
	n := copy(out, resp)
	msg.Response.Len = uint64(n)
	if f.lieLen {
		msg.Response.Len = uint64(len(out)) + 1
	}
	return 0
}

func devNull(t *testing.T) *os.File {
	t.Helper()
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestIoctlNumber(t *testing.T) {
	if nsm.IoctlRaw != 0xC0200A00 {
		t.Fatalf("NSM_IOCTL_RAW = %#x, want 0xC0200A00", nsm.IoctlRaw)
	}
	if got := ioc.Command(ioc.READ|ioc.WRITE, 0x0A, 0, 32); uint64(got) != nsm.IoctlRaw {
		t.Fatalf("hf/nsm computes %#x", got)
	}
	if !nsm.RawLayoutOK() {
		t.Fatal("struct nsm_raw layout is not 32 bytes with response at offset 16")
	}
}

// The full client path (Client → Device → ioctl struct → driver semantics)
// against the emulator.
func TestDeviceWithEmulator(t *testing.T) {
	ctx := context.Background()
	e, iss := newTestEmulator(t, nsmemu.Config{})
	fake := &fakeNSM{module: func(req []byte) []byte { return e.Handle(ctx, req) }}
	dev := nsm.NewFakeDevice(devNull(t), fake.ioctl, 0)
	defer dev.Close()
	c := nsm.NewClient(dev)

	d, err := c.DescribeNSM(ctx)
	if err != nil || d.MaxPCRs != 32 || len(d.LockedPCRs) != 16 {
		t.Fatalf("DescribeNSM = %+v, %v", d, err)
	}
	v, err := c.ExtendPCR(ctx, 20, []byte("x"))
	want := sha512.Sum384(append(make([]byte, 48), 'x'))
	if err != nil || !bytes.Equal(v, want[:]) {
		t.Fatalf("ExtendPCR = %x, %v; want %x", v, err, want)
	}
	if err := c.LockPCR(ctx, 3); !errors.Is(err, nsm.ErrReadOnlyIndex) {
		t.Fatalf("LockPCR(3) = %v", err)
	}
	doc, err := c.Attestation(ctx, []byte("u"), []byte("n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	ver, err := attest.Verify(doc, time.Now(), attest.VerifierConfig{Roots: []*x509.Certificate{iss.Root()}, NoAWSRoot: true})
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if got := ver.Document(); string(got.Nonce) != "n" || string(got.UserData) != "u" {
		t.Fatalf("document nonce %q user_data %q", got.Nonce, got.UserData)
	}
	r, err := c.GetRandom(ctx)
	if err != nil || len(r) != 256 {
		t.Fatalf("GetRandom = %d bytes, %v", len(r), err)
	}
}

func TestDeviceErrors(t *testing.T) {
	ctx := context.Background()
	okModule := func([]byte) []byte {
		b, _ := nsm.EncodeResponse(nsm.LockPCRResponse{})
		return b
	}
	t.Run("EINTR retried", func(t *testing.T) {
		fake := &fakeNSM{module: okModule, eintr: 3}
		dev := nsm.NewFakeDevice(devNull(t), fake.ioctl, 0)
		defer dev.Close()
		if err := nsm.NewClient(dev).LockPCR(ctx, 16); err != nil {
			t.Fatalf("LockPCR after EINTR: %v", err)
		}
		if fake.calls != 4 {
			t.Fatalf("%d ioctl calls, want 4", fake.calls)
		}
	})
	t.Run("EMSGSIZE", func(t *testing.T) {
		fake := &fakeNSM{module: okModule, errno: unix.EMSGSIZE}
		dev := nsm.NewFakeDevice(devNull(t), fake.ioctl, 0)
		defer dev.Close()
		err := nsm.NewClient(dev).LockPCR(ctx, 16)
		var me *nsm.Error
		if !errors.As(err, &me) || me.Code != nsm.InputTooLarge || !errors.Is(err, nsm.ErrInputTooLarge) {
			t.Fatalf("EMSGSIZE → %v, want *Error InputTooLarge", err)
		}
	})
	t.Run("other errno", func(t *testing.T) {
		fake := &fakeNSM{module: okModule, errno: unix.EIO}
		dev := nsm.NewFakeDevice(devNull(t), fake.ioctl, 0)
		defer dev.Close()
		err := nsm.NewClient(dev).LockPCR(ctx, 16)
		if !errors.Is(err, nsm.ErrInternalError) || !errors.Is(err, unix.EIO) {
			t.Fatalf("EIO → %v, want ErrInternalError wrapping EIO", err)
		}
	})
	t.Run("request over 4 KiB never reaches the ioctl", func(t *testing.T) {
		fake := &fakeNSM{module: okModule}
		dev := nsm.NewFakeDevice(devNull(t), fake.ioctl, 0)
		defer dev.Close()
		_, err := dev.RoundTrip(ctx, make([]byte, nsm.MaxRequestSize+1))
		var le *nsm.LimitError
		if !errors.As(err, &le) || !errors.Is(err, nsm.ErrInputTooLarge) || fake.calls != 0 {
			t.Fatalf("RoundTrip(4097 bytes) = %v after %d calls", err, fake.calls)
		}
		if _, err := dev.RoundTrip(ctx, nil); !errors.Is(err, nsm.ErrInvalidArgument) {
			t.Fatalf("RoundTrip(empty) = %v", err)
		}
	})
	t.Run("buffer too small", func(t *testing.T) {
		e, _ := newTestEmulator(t, nsmemu.Config{})
		fake := &fakeNSM{module: func(req []byte) []byte { return e.Handle(ctx, req) }}
		dev := nsm.NewFakeDevice(devNull(t), fake.ioctl, 64)
		defer dev.Close()
		_, err := nsm.NewClient(dev).GetRandom(ctx) // 256-byte random does not fit in 64
		if !errors.Is(err, nsm.ErrBufferTooSmall) {
			t.Fatalf("GetRandom into 64 bytes = %v, want ErrBufferTooSmall", err)
		}
		if err := nsm.NewClient(dev).LockPCR(ctx, 16); err != nil { // 8-byte answer fits
			t.Fatalf("LockPCR with a 64-byte buffer: %v", err)
		}
	})
	t.Run("driver reports too long a response", func(t *testing.T) {
		fake := &fakeNSM{module: okModule, lieLen: true}
		dev := nsm.NewFakeDevice(devNull(t), fake.ioctl, 0)
		defer dev.Close()
		if _, err := dev.RoundTrip(ctx, []byte{0x60}); !errors.Is(err, nsm.ErrInternalError) {
			t.Fatalf("bogus length → %v", err)
		}
	})
	t.Run("context ends during ioctl", func(t *testing.T) {
		fake := &fakeNSM{module: okModule, block: make(chan struct{}), entered: make(chan struct{})}
		dev := nsm.NewFakeDevice(devNull(t), fake.ioctl, 0)
		cctx, cancel := context.WithCancel(ctx)
		errc := make(chan error, 1)
		go func() { _, err := dev.RoundTrip(cctx, []byte{0x60}); errc <- err }()
		<-fake.entered // the ioctl is in progress
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Fatalf("RoundTrip = %v, want context.Canceled", err)
		}
		close(fake.block)
		dev.Close()
	})
	t.Run("closed", func(t *testing.T) {
		dev := nsm.NewFakeDevice(devNull(t), (&fakeNSM{module: okModule}).ioctl, 0)
		dev.Close()
		if _, err := dev.RoundTrip(ctx, []byte{0x60}); !errors.Is(err, nsm.ErrClosed) {
			t.Fatalf("RoundTrip after Close = %v", err)
		}
	})
}

func TestOpenDeviceMissing(t *testing.T) {
	_, err := nsm.OpenDevice(t.TempDir() + "/nsm")
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("OpenDevice(missing) = %v, want fs.ErrNotExist", err)
	}
}
