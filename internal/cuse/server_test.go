package cuse_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/internal/cuse"
	"github.com/cloister/cloister/internal/cuse/cusetest"
)

// handlerFunc adapts a function to cuse.IoctlHandler.
type handlerFunc func(ctx context.Context, h cuse.Header, req *cuse.IoctlIn) cuse.IoctlReply

func (f handlerFunc) Ioctl(ctx context.Context, h cuse.Header, req *cuse.IoctlIn) cuse.IoctlReply {
	return f(ctx, h, req)
}

// start runs a server for handler against a simulated kernel that creates
// the node in a temporary /dev when it sees the CUSE_INIT answer.
func start(t *testing.T, h cuse.IoctlHandler) (*cuse.Server, *cusetest.Kernel, string) {
	t.Helper()
	ch, k, err := cusetest.Pair()
	if err != nil {
		t.Fatal(err)
	}
	dev := t.TempDir()
	node := filepath.Join(dev, "nsm")
	type result struct {
		s   *cuse.Server
		err error
	}
	done := make(chan result, 1)
	go func() {
		s, err := cuse.Init(ch, cuse.Config{Name: "nsm", Mode: 0o666, DevDir: dev, Handler: h})
		done <- result{s, err}
	}()
	if errno, err := k.Handshake(38); err != nil || errno != 0 {
		t.Fatalf("handshake: errno %d, %v", errno, err)
	}
	// The kernel makes the node (devtmpfs: mode 0600) once it has the answer.
	if err := os.WriteFile(node, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil {
		t.Fatalf("Init: %v", r.err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- r.s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		k.Close()
		if err := <-served; err == nil {
			t.Error("Serve returned nil after the channel closed")
		}
		ch.Close()
	})
	return r.s, k, node
}

func TestInit(t *testing.T) {
	_, k, node := start(t, nil)
	want := cusetest.InitOut{Major: 7, Minor: 31, Flags: 1, MaxRead: 4096, MaxWrite: 4096, Info: "DEVNAME=nsm\x00"}
	if diff := cmp.Diff(want, k.Init); diff != "" {
		t.Errorf("CUSE_INIT answer (-want +got):\n%s", diff)
	}
	fi, err := os.Stat(node)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o666 {
		t.Errorf("node mode %v, want 0666 like the nsm misc device", fi.Mode().Perm())
	}
}

func TestInitRefusals(t *testing.T) {
	tests := []struct {
		name  string
		cfg   cuse.Config
		minor uint32
		first uint32 // opcode of the first request
	}{
		{name: "old kernel", cfg: cuse.Config{Name: "nsm"}, minor: 15, first: cusetest.OpCuseInit},
		{name: "not CUSE_INIT", cfg: cuse.Config{Name: "nsm"}, minor: 38, first: cusetest.OpOpen},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ch, k, err := cusetest.Pair()
			if err != nil {
				t.Fatal(err)
			}
			defer ch.Close()
			defer k.Close()
			done := make(chan error, 1)
			go func() { _, err := cuse.Init(ch, tt.cfg); done <- err }()
			var errno int32
			if tt.first == cusetest.OpCuseInit {
				errno, err = k.Handshake(tt.minor)
			} else {
				_, errno, err = k.First(tt.first, make([]byte, 8))
			}
			if err != nil {
				t.Fatal(err)
			}
			if errno != -int32(syscall.EPROTO) {
				t.Errorf("answer error %d, want -EPROTO", errno)
			}
			if err := <-done; err == nil {
				t.Error("Init succeeded")
			}
		})
	}
	for _, name := range []string{"", "a/b", "a=b", string(make([]byte, 65))} {
		if _, err := cuse.Init(nil, cuse.Config{Name: name}); err == nil {
			t.Errorf("Init accepted device name %q", name)
		}
	}
}

func TestNodeMissing(t *testing.T) {
	ch, k, err := cusetest.Pair()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	defer k.Close()
	done := make(chan error, 1)
	go func() {
		_, err := cuse.Init(ch, cuse.Config{Name: "nsm", DevDir: t.TempDir(), NodeTimeout: 1})
		done <- err
	}()
	if _, err := k.Handshake(38); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Init = %v, want the missing node", err)
	}
}

func TestRequests(t *testing.T) {
	var mu sync.Mutex
	var seen []cuse.IoctlIn
	h := handlerFunc(func(ctx context.Context, hd cuse.Header, req *cuse.IoctlIn) cuse.IoctlReply {
		mu.Lock()
		seen = append(seen, *req)
		mu.Unlock()
		switch req.Cmd {
		case 1:
			return cuse.IoctlReply{Errno: syscall.EINVAL}
		case 2:
			return cuse.IoctlReply{Retry: true, In: []cuse.IOVec{{Base: 0x1000, Len: 4}}, Out: []cuse.IOVec{{Base: 0x2000, Len: 8}}}
		case 3:
			return cuse.IoctlReply{Result: 7, Data: []byte("abc")}
		case 4:
			return cuse.IoctlReply{Data: make([]byte, 9)} // more than OutSize
		case 5:
			return cuse.IoctlReply{Retry: true, In: make([]cuse.IOVec, 200), Out: make([]cuse.IOVec, 57)}
		}
		return cuse.IoctlReply{}
	})
	s, k, _ := start(t, h)
	le := binary.LittleEndian
	ioctl := func(fh uint64, cmd uint32, in []byte, outSize uint32) []byte {
		b := le.AppendUint64(nil, fh)
		b = le.AppendUint32(b, 2)
		b = le.AppendUint32(b, cmd)
		b = le.AppendUint64(b, 0xdead)
		b = le.AppendUint32(b, uint32(len(in)))
		b = le.AppendUint32(b, outSize)
		return append(b, in...)
	}
	fh1, err := k.Open(uint32(os.O_RDWR))
	if err != nil {
		t.Fatal(err)
	}
	fh2, err := k.Open(uint32(os.O_RDONLY))
	if err != nil {
		t.Fatal(err)
	}
	if fh1 == fh2 {
		t.Errorf("two opens share handle %d", fh1)
	}
	if n := s.OpenHandles(); n != 2 {
		t.Errorf("OpenHandles = %d, want 2", n)
	}

	iovs := func(v ...uint64) []byte {
		var b []byte
		for _, x := range v {
			b = le.AppendUint64(b, x)
		}
		return b
	}
	tests := []struct {
		name  string
		op    uint32
		body  []byte
		errno int32
		ans   []byte
	}{
		{"ioctl errno", cusetest.OpIoctl, ioctl(fh1, 1, nil, 0), -int32(syscall.EINVAL), nil},
		{"ioctl retry", cusetest.OpIoctl, ioctl(fh1, 2, nil, 0), 0,
			append([]byte{0, 0, 0, 0, 4, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0}, iovs(0x1000, 4, 0x2000, 8)...)},
		{"ioctl data", cusetest.OpIoctl, ioctl(fh2, 3, []byte("xyzw"), 8), 0,
			append([]byte{7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, "abc"...)},
		{"ioctl data beyond out iovecs", cusetest.OpIoctl, ioctl(fh1, 4, nil, 8), -int32(syscall.EIO), nil},
		{"ioctl with too many iovecs", cusetest.OpIoctl, ioctl(fh1, 5, nil, 0), -int32(syscall.EIO), nil},
		{"read", cusetest.OpRead, make([]byte, 40), -int32(syscall.EINVAL), nil},
		{"write", cusetest.OpWrite, make([]byte, 44), -int32(syscall.EINVAL), nil},
		{"poll", cusetest.OpPoll, make([]byte, 24), -int32(syscall.ENOSYS), nil},
		{"flush", cusetest.OpFlush, make([]byte, 24), -int32(syscall.ENOSYS), nil},
		{"interrupt", cusetest.OpInterrupt, make([]byte, 8), -int32(syscall.ENOSYS), nil},
		{"unknown opcode", 99, nil, -int32(syscall.ENOSYS), nil},
		{"ioctl shorter than its fixed part", cusetest.OpIoctl, make([]byte, 31), -int32(syscall.EIO), nil},
		{"ioctl in_size beyond the data", cusetest.OpIoctl, ioctl(fh1, 3, nil, 0)[:32], 0, nil},
	}
	// The last case's in_size is fixed up below to lie.
	bad := tests[len(tests)-1].body
	le.PutUint32(bad[24:], 5)
	tests[len(tests)-1].errno = -int32(syscall.EIO)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ans, errno, err := k.Call(tt.op, tt.body, 42)
			if err != nil {
				t.Fatal(err)
			}
			if errno != tt.errno {
				t.Errorf("error %d, want %d", errno, tt.errno)
			}
			if tt.errno == 0 && !bytes.Equal(ans, tt.ans) {
				t.Errorf("answer\n% x\nwant\n% x", ans, tt.ans)
			}
		})
	}
	mu.Lock()
	var got []uint32
	for _, r := range seen {
		got = append(got, r.Cmd)
		if r.Cmd == 3 && (string(r.In) != "xyzw" || r.OutSize != 8 || r.FH != fh2 || r.Arg != 0xdead) {
			t.Errorf("handler got %+v", r)
		}
	}
	mu.Unlock()
	if len(got) != 5 {
		t.Errorf("handler saw ioctls %v, want 5", got)
	}

	// FUSE_FORGET is never answered: the next request's answer comes first.
	if _, err := k.Send(2, make([]byte, 8)); err != nil {
		t.Fatal(err)
	}
	if err := k.Release(fh1); err != nil {
		t.Fatal(err)
	}
	if err := k.Release(fh2); err != nil {
		t.Fatal(err)
	}
	if n := s.OpenHandles(); n != 0 {
		t.Errorf("OpenHandles after release = %d", n)
	}
	if st := k.Stray(); len(st) != 0 {
		t.Errorf("answers to nobody: %q", st)
	}
}

// TestConcurrentIoctls runs ioctls from many threads at once; a slow
// handler must not hold up the others.
func TestConcurrentIoctls(t *testing.T) {
	release := make(chan struct{})
	h := handlerFunc(func(ctx context.Context, hd cuse.Header, req *cuse.IoctlIn) cuse.IoctlReply {
		if req.Cmd == 0 {
			<-release
		}
		return cuse.IoctlReply{Result: int32(hd.PID)}
	})
	_, k, _ := start(t, h)
	fh, err := k.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	slow := make(chan int32, 1)
	go func() {
		r, _, _, _ := k.Ioctl(fh, 0, 0, nil, 1, 1)
		slow <- r
	}()
	var wg sync.WaitGroup
	for pid := uint32(2); pid < 50; pid++ {
		wg.Go(func() {
			r, errno, _, err := k.Ioctl(fh, 1, 0, nil, pid, 1)
			if err != nil || errno != 0 || r != int32(pid) {
				t.Errorf("thread %d: result %d errno %v err %v", pid, r, errno, err)
			}
		})
	}
	wg.Wait()
	close(release)
	if r := <-slow; r != 1 {
		t.Errorf("slow ioctl result %d", r)
	}
}
