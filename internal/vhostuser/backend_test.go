package vhostuser

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/cloister/cloister/internal/virtq"
	"github.com/cloister/cloister/internal/virtq/virtqtest"
)

// fakeDevice records what the back-end tells it.
type fakeDevice struct {
	kicks  chan int
	mu     sync.Mutex
	resets int
}

func newFakeDevice() *fakeDevice { return &fakeDevice{kicks: make(chan int, 64)} }

func (d *fakeDevice) Features() uint64 { return 1 << 0 }
func (d *fakeDevice) Config() []byte {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint64(b, 42)
	return b
}
func (d *fakeDevice) Queues() int { return 2 }
func (d *fakeDevice) Kick(i int) {
	select {
	case d.kicks <- i:
	default:
	}
}
func (d *fakeDevice) Reset() {
	d.mu.Lock()
	d.resets++
	d.mu.Unlock()
}
func (d *fakeDevice) resetCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.resets
}

// frontend plays QEMU on one end of a socketpair.
type frontend struct {
	t    *testing.T
	c    *net.UnixConn
	done chan error
}

func socketpair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conv := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.UnixConn)
	}
	return conv(fds[0]), conv(fds[1])
}

func startBackend(t *testing.T, dev Device) (*Backend, *frontend) {
	t.Helper()
	a, bconn := socketpair(t)
	b := New(dev, nil)
	f := &frontend{t: t, c: a, done: make(chan error, 1)}
	go func() { f.done <- b.ServeConn(context.Background(), bconn) }()
	t.Cleanup(func() {
		a.Close()
		select {
		case <-f.done:
		case <-time.After(10 * time.Second):
			t.Error("ServeConn did not return after the front-end closed")
		}
	})
	return b, f
}

func (f *frontend) send(req, flags uint32, payload []byte, fds ...int) {
	f.t.Helper()
	msg := make([]byte, headerSize+len(payload))
	header{Request: req, Flags: FlagVersion | flags, Size: uint32(len(payload))}.encode(msg)
	copy(msg[headerSize:], payload)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := f.c.WriteMsgUnix(msg, oob, nil); err != nil {
		f.t.Fatalf("send %s: %v", requestName(req), err)
	}
}

func (f *frontend) recv(req uint32) []byte {
	f.t.Helper()
	_ = f.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var hb [headerSize]byte
	if _, err := readFull(f.c, hb[:], nil); err != nil {
		f.t.Fatalf("reply to %s: %v", requestName(req), err)
	}
	h := parseHeader(hb[:])
	if h.Request != req || h.Flags != FlagVersion|FlagReply {
		f.t.Fatalf("reply header %+v to %s", h, requestName(req))
	}
	p := make([]byte, h.Size)
	if _, err := readFull(f.c, p, nil); err != nil {
		f.t.Fatal(err)
	}
	return p
}

func (f *frontend) call(req uint32, payload []byte, fds ...int) []byte {
	f.t.Helper()
	f.send(req, 0, payload, fds...)
	return f.recv(req)
}

// ack sends req with NEED_REPLY and returns the REPLY_ACK status.
func (f *frontend) ack(req uint32, payload []byte, fds ...int) uint64 {
	f.t.Helper()
	f.send(req, FlagNeedReply, payload, fds...)
	p := f.recv(req)
	if len(p) != 8 {
		f.t.Fatalf("ack payload %x", p)
	}
	return binary.LittleEndian.Uint64(p)
}

func u64(v uint64) []byte { return u64Bytes(v) }

func state(i, n uint32) []byte {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint32(b, i)
	binary.LittleEndian.PutUint32(b[4:], n)
	return b
}

func memTable(regs ...Region) []byte {
	b := make([]byte, 8+regionSize*len(regs))
	binary.LittleEndian.PutUint32(b, uint32(len(regs)))
	for i, r := range regs {
		r.encode(b[8+regionSize*i:])
	}
	return b
}

func memfd(t *testing.T, size int) (int, []byte) {
	t.Helper()
	fd, err := unix.MemfdCreate("guest", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		t.Fatal(err)
	}
	m, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(m); unix.Close(fd) })
	return fd, m
}

func eventfd(t *testing.T) int {
	t.Helper()
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// waitEventfd waits until the eventfd is signalled and consumes it.
func waitEventfd(t *testing.T, fd int) {
	t.Helper()
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	if n, err := unix.Poll(pfd, 10000); n != 1 || err != nil {
		t.Fatalf("eventfd not signalled: %d %v", n, err)
	}
	var b [8]byte
	if _, err := unix.Read(fd, b[:]); err != nil {
		t.Fatal(err)
	}
}

func waitKick(t *testing.T, d *fakeDevice, want int) {
	t.Helper()
	select {
	case i := <-d.kicks:
		if i != want {
			t.Fatalf("kick for queue %d, want %d", i, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no kick for queue %d", want)
	}
}

const uvaBase = 0x7f00_0000_0000

// TestHandshakeAndRing runs QEMU's vhost-user-vsock sequence over a real
// socketpair with a memfd guest memory in two regions (as QEMU microvm
// lays it out) and real eventfds, then moves one chain through queue 1.
func TestHandshakeAndRing(t *testing.T) {
	dev := newFakeDevice()
	b, f := startBackend(t, dev)

	feat := binary.LittleEndian.Uint64(f.call(ReqGetFeatures, nil))
	wantFeat := uint64(1 | FeatureVersion1 | FeatureIndirectDesc | FeatureEventIdx | FeatureProtocolFeatures)
	if feat != wantFeat {
		t.Fatalf("features %#x, want %#x", feat, wantFeat)
	}
	pf := binary.LittleEndian.Uint64(f.call(ReqGetProtocolFeatures, nil))
	if pf&ProtocolConfig == 0 || pf&ProtocolReplyAck == 0 || pf&ProtocolMQ != 0 {
		t.Fatalf("protocol features %#x", pf)
	}
	f.send(ReqSetProtocolFeatures, 0, u64(ProtocolReplyAck|ProtocolConfig))
	if st := f.ack(ReqSetOwner, nil); st != 0 {
		t.Fatalf("SET_OWNER ack %d", st)
	}
	cfgReq := make([]byte, 12+8)
	binary.LittleEndian.PutUint32(cfgReq[4:], 8)
	cfg := f.call(ReqGetConfig, cfgReq)
	if diff := cmp.Diff(append(cfgReq[:12:12], 42, 0, 0, 0, 0, 0, 0, 0), cfg); diff != "" {
		t.Fatalf("GET_CONFIG (-want +got):\n%s", diff)
	}
	if n := binary.LittleEndian.Uint64(f.call(ReqGetQueueNum, nil)); n != 2 {
		t.Errorf("GET_QUEUE_NUM = %d", n)
	}
	if st := f.ack(ReqSetFeatures, u64(FeatureVersion1|FeatureProtocolFeatures|FeatureEventIdx)); st != 0 {
		t.Fatalf("SET_FEATURES ack %d", st)
	}

	// Guest memory: 2 MiB memfd, region A = gpa [0, 0xf0000) at offset 0,
	// region B = gpa [0x100000, 0x200000) at offset 0x100000 (QEMU microvm).
	const size = 2 << 20
	fd, m := memfd(t, size)
	regA := Region{GuestPhys: 0, Size: 0xf0000, UserAddr: uvaBase, MmapOffset: 0}
	regB := Region{GuestPhys: 0x100000, Size: 0x100000, UserAddr: uvaBase + 0x100000, MmapOffset: 0x100000}
	if st := f.ack(ReqSetMemTable, memTable(regA, regB), fd, fd); st != 0 {
		t.Fatalf("SET_MEM_TABLE ack %d", st)
	}

	// The simulated guest driver places queue 1 in region B.
	o := virtqtest.Options{Size: 16, Base: 0x100000, ChainArea: 4096, EventIdx: true, StartIdx: 65534}
	drv := virtqtest.NewDriver(virtqtest.Options{Mem: m[0x100000:], Size: o.Size, Base: o.Base, ChainArea: o.ChainArea, EventIdx: true, StartIdx: 65534})
	qc := drv.Config()
	call, kick := eventfd(t), eventfd(t)
	f.send(ReqSetVringNum, 0, state(1, 16))
	f.send(ReqSetVringBase, 0, state(1, 65534))
	addr := make([]byte, vringAddrSize)
	binary.LittleEndian.PutUint32(addr, 1)
	binary.LittleEndian.PutUint64(addr[8:], qc.DescAddr-0x100000+uvaBase+0x100000)
	binary.LittleEndian.PutUint64(addr[16:], qc.UsedAddr+uvaBase)
	binary.LittleEndian.PutUint64(addr[24:], qc.AvailAddr+uvaBase)
	f.send(ReqSetVringAddr, 0, addr)
	f.send(ReqSetVringCall, 0, u64(1), call)
	f.send(ReqSetVringKick, 0, u64(1), kick)
	if b.With(1, func(*virtq.Queue) {}) {
		t.Fatal("ring ran before SET_VRING_ENABLE although PROTOCOL_FEATURES was negotiated")
	}
	if st := f.ack(ReqSetVringEnable, state(1, 1)); st != 0 {
		t.Fatalf("SET_VRING_ENABLE ack %d", st)
	}
	waitKick(t, dev, 1)

	for round := range 3 {
		if _, err := drv.Add([]virtqtest.Buffer{{Data: []byte("ping")}, {Write: true, Len: 8}}, round == 1); err != nil {
			t.Fatal(err)
		}
		signal(kick) // the guest's notification
		waitKick(t, dev, 1)
		ran := b.With(1, func(q *virtq.Queue) {
			var c virtq.Chain
			ok, err := q.Pop(&c)
			if !ok || err != nil {
				t.Errorf("Pop = %v, %v", ok, err)
				return
			}
			buf := make([]byte, 4)
			virtq.CopyOut(buf, c.Readable, 0)
			virtq.CopyIn(c.Writable, 0, append([]byte("pong "), buf[1:]...))
			_ = q.Push(c.Head, 8)
			q.EnableNotify()
		})
		if !ran {
			t.Fatal("With did not run on a started ring")
		}
		waitEventfd(t, call)
		u, ok, err := drv.Poll()
		if err != nil || !ok || string(u.Data) != "pong ing" {
			t.Fatalf("round %d: used %+v %v %v", round, u, ok, err)
		}
	}

	// Stop: GET_VRING_BASE returns the next index (65534 + 3 wrapped).
	if diff := cmp.Diff(state(1, 1), f.call(ReqGetVringBase, state(1, 0))); diff != "" {
		t.Errorf("GET_VRING_BASE (-want +got):\n%s", diff)
	}
	if b.With(1, func(*virtq.Queue) {}) {
		t.Error("ring still runs after GET_VRING_BASE")
	}

	// A region the file does not cover is refused with a negative ack, and
	// the connection stays usable.
	bad := Region{GuestPhys: 0, Size: 4 << 20, UserAddr: uvaBase, MmapOffset: 0}
	if st := f.ack(ReqSetMemTable, memTable(bad), fd); st == 0 {
		t.Error("SET_MEM_TABLE beyond the end of the memfd accepted")
	}
	if st := f.ack(ReqSetConfig, cfgReq); st == 0 {
		t.Error("SET_CONFIG accepted on a read-only config")
	}
	f.call(ReqGetFeatures, nil)
	f.c.Close()
	if err := <-f.done; err != nil {
		t.Errorf("ServeConn = %v after the front-end closed", err)
	}
	f.done <- nil
	if dev.resetCount() == 0 {
		t.Error("device not reset after disconnect")
	}
}

// TestRingRestartAndMemTableSwap checks that a running ring survives a new
// memory table (it is rebuilt on the new mapping) and restarts after
// GET_VRING_BASE + SET_VRING_KICK from the returned base.
func TestRingRestartAndMemTableSwap(t *testing.T) {
	dev := newFakeDevice()
	b, f := startBackend(t, dev)
	f.send(ReqSetFeatures, 0, u64(FeatureVersion1)) // no PROTOCOL_FEATURES: rings start enabled
	fd, m := memfd(t, 1<<20)
	reg := Region{GuestPhys: 0x40000000, Size: 1 << 20, UserAddr: uvaBase, MmapOffset: 0}
	f.send(ReqSetMemTable, 0, memTable(reg), fd)
	drv := virtqtest.NewDriver(virtqtest.Options{Mem: m, Size: 8, Base: 0x40000000, ChainArea: 1024})
	qc := drv.Config()
	addr := make([]byte, vringAddrSize)
	binary.LittleEndian.PutUint64(addr[8:], qc.DescAddr-0x40000000+uvaBase)
	binary.LittleEndian.PutUint64(addr[16:], qc.UsedAddr-0x40000000+uvaBase)
	binary.LittleEndian.PutUint64(addr[24:], qc.AvailAddr-0x40000000+uvaBase)
	start := func() {
		f.send(ReqSetVringNum, 0, state(0, 8))
		f.send(ReqSetVringAddr, 0, addr)
		f.send(ReqSetVringKick, 0, u64(0), eventfd(t))
		waitKick(t, dev, 0)
	}
	start()
	pass := func() {
		t.Helper()
		if _, err := drv.Add([]virtqtest.Buffer{{Data: []byte("x")}}, false); err != nil {
			t.Fatal(err)
		}
		ran := b.With(0, func(q *virtq.Queue) {
			var c virtq.Chain
			if ok, err := q.Pop(&c); !ok || err != nil {
				t.Errorf("Pop = %v %v", ok, err)
				return
			}
			_ = q.Push(c.Head, 0)
		})
		if _, ok, _ := drv.Poll(); !ran || !ok {
			t.Fatalf("chain not processed (ran=%v)", ran)
		}
	}
	pass()
	// Same memory through a second mapping of the memfd.
	f.send(ReqSetMemTable, 0, memTable(reg), fd)
	pass()
	if diff := cmp.Diff(state(0, 2), f.call(ReqGetVringBase, state(0, 0))); diff != "" {
		t.Errorf("GET_VRING_BASE (-want +got):\n%s", diff)
	}
	f.send(ReqSetVringBase, 0, state(0, 2))
	start()
	pass()
}

// TestProtocolErrorsCloseConnection checks the requests that must end the
// connection.
func TestProtocolErrorsCloseConnection(t *testing.T) {
	fd, _ := memfd(t, 1<<16)
	reg := Region{GuestPhys: 0, Size: 1 << 16, UserAddr: uvaBase}
	tests := []struct {
		name  string
		req   uint32
		flags uint32
		p     []byte
		fds   []int
	}{
		{"unknown request needing a reply", ReqGetStatus, 0, nil, nil},
		{"SET_LOG_BASE without LOG_SHMFD", ReqSetLogBase, 0, make([]byte, 16), nil},
		{"bad version", ReqGetFeatures, 2, nil, nil},
		{"short SET_FEATURES", ReqSetFeatures, 0, []byte{1}, nil},
		{"unoffered features", ReqSetFeatures, 0, u64(1 << 40), nil},
		{"unoffered protocol features", ReqSetProtocolFeatures, 0, u64(ProtocolMQ), nil},
		{"mem table without fds", ReqSetMemTable, 0, memTable(reg), nil},
		{"mem table region count mismatch", ReqSetMemTable, 0, memTable(reg, reg), []int{fd}},
		{"ring index out of range", ReqSetVringNum, 0, state(2, 8), nil},
		{"ring size not a power of two", ReqSetVringNum, 0, state(0, 12), nil},
		{"kick without fd", ReqSetVringKick, 0, u64(0), nil},
		{"kick with two fds", ReqSetVringKick, 0, u64(0), []int{fd, fd}},
		{"vring base out of range", ReqSetVringBase, 0, state(0, 1<<16), nil},
		{"config too large", ReqGetConfig, 0, append(state(0, 4096), 0, 0, 0, 0), nil},
		{"unexpected fds", ReqGetFeatures, 0, nil, []int{fd}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, f := startBackend(t, newFakeDevice())
			f.send(tc.req, tc.flags, tc.p, tc.fds...)
			select {
			case err := <-f.done:
				if !errors.Is(err, ErrProtocol) {
					t.Errorf("ServeConn = %v, want ErrProtocol", err)
				}
				f.done <- err
			case <-time.After(10 * time.Second):
				t.Fatal("connection not closed")
			}
		})
	}
}

func TestOversizedPayloadClosesConnection(t *testing.T) {
	_, f := startBackend(t, newFakeDevice())
	var h [headerSize]byte
	header{Request: ReqGetFeatures, Flags: FlagVersion, Size: MaxPayload + 1}.encode(h[:])
	if _, err := f.c.Write(h[:]); err != nil {
		t.Fatal(err)
	}
	if err := <-f.done; !errors.Is(err, ErrProtocol) {
		t.Errorf("ServeConn = %v", err)
	}
	f.done <- nil
}

func TestSecondConnectionRefused(t *testing.T) {
	b, f := startBackend(t, newFakeDevice())
	f.call(ReqGetFeatures, nil) // the first connection is being served
	x, y := socketpair(t)
	defer x.Close()
	if err := b.ServeConn(context.Background(), y); !errors.Is(err, errBusy) {
		t.Errorf("second ServeConn = %v", err)
	}
}

func TestServeConnHonoursContext(t *testing.T) {
	a, c := socketpair(t)
	defer a.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- New(newFakeDevice(), nil).ServeConn(ctx, c) }()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("ServeConn = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ServeConn ignored cancellation")
	}
}

func TestMapRegionsChecks(t *testing.T) {
	fd, _ := memfd(t, 1<<20)
	tests := []struct {
		name string
		regs []Region
	}{
		{"empty region", []Region{{Size: 0}}},
		{"gpa overflow", []Region{{GuestPhys: ^uint64(0) - 10, Size: 4096}}},
		{"uva overflow", []Region{{UserAddr: ^uint64(0) - 10, Size: 4096}}},
		{"beyond file", []Region{{Size: 2 << 20}}},
		{"offset beyond file", []Region{{Size: 4096, MmapOffset: 1 << 20}}},
		{"gpa overlap", []Region{{Size: 8192}, {GuestPhys: 4096, Size: 4096, UserAddr: 1 << 30}}},
		{"uva overlap", []Region{{Size: 4096}, {GuestPhys: 1 << 30, Size: 4096, UserAddr: 100}}},
		{"huge", []Region{{Size: 1 << 50}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fds := make([]int, len(tc.regs))
			for i := range fds {
				fds[i] = fd
			}
			if mt, err := MapRegions(tc.regs, fds); mt != nil || !errors.Is(err, ErrMemory) {
				t.Errorf("MapRegions = %v, %v; want ErrMemory", mt, err)
			}
		})
	}
}

func TestMemTableTranslation(t *testing.T) {
	fd, m := memfd(t, 3*4096)
	copy(m[4096+100:], "region-b")
	mt, err := MapRegions([]Region{
		{GuestPhys: 0x1000, Size: 4096, UserAddr: 0x9000, MmapOffset: 0},
		{GuestPhys: 0x2000, Size: 4096 - 16, UserAddr: 0xa000, MmapOffset: 4096 + 16}, // unaligned offset
	}, []int{fd, fd})
	if err != nil {
		t.Fatal(err)
	}
	defer mt.Close()
	s, err := mt.Span(0x2000+84, 8)
	if err != nil || string(s) != "region-b" {
		t.Errorf("Span = %q, %v", s, err)
	}
	s, err = mt.Span(0x1ff0, 64) // the two regions are adjacent in GPA space
	if err != nil || len(s) != 16 {
		t.Errorf("Span at a region end = %d bytes, %v", len(s), err)
	}
	if _, err := mt.Span(0x3000-16, 1); !errors.Is(err, virtq.ErrOutOfBounds) {
		t.Errorf("Span past the last region: %v", err)
	}
	if _, err := mt.Span(0x500, 1); !errors.Is(err, virtq.ErrOutOfBounds) {
		t.Errorf("Span below the first region: %v", err)
	}
	if g, err := mt.UVAToGPA(0xa010); g != 0x2010 || err != nil {
		t.Errorf("UVAToGPA = %#x, %v", g, err)
	}
	if _, err := mt.UVAToGPA(0xb000); !errors.Is(err, ErrMemory) {
		t.Errorf("UVAToGPA outside: %v", err)
	}
}
