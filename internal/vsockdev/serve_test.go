package vsockdev

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cloister/cloister/internal/hybrid"
	"github.com/cloister/cloister/internal/vhostuser"
	"github.com/cloister/cloister/internal/virtq/virtqtest"
)

// vhuFrontend is a minimal vhost-user front-end (what QEMU does).
type vhuFrontend struct {
	t *testing.T
	c *net.UnixConn
}

func (f *vhuFrontend) send(req, flags uint32, payload []byte, fds ...int) {
	f.t.Helper()
	msg := make([]byte, 12+len(payload))
	binary.LittleEndian.PutUint32(msg, req)
	binary.LittleEndian.PutUint32(msg[4:], vhostuser.FlagVersion|flags)
	binary.LittleEndian.PutUint32(msg[8:], uint32(len(payload)))
	copy(msg[12:], payload)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := f.c.WriteMsgUnix(msg, oob, nil); err != nil {
		f.t.Fatal(err)
	}
}

func (f *vhuFrontend) recv() []byte {
	f.t.Helper()
	_ = f.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	h := make([]byte, 12)
	if _, err := f.c.Read(h); err != nil {
		f.t.Fatal(err)
	}
	p := make([]byte, binary.LittleEndian.Uint32(h[8:]))
	if len(p) > 0 {
		if _, err := f.c.Read(p); err != nil {
			f.t.Fatal(err)
		}
	}
	return p
}

func le64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

func pair(a, b uint32) []byte {
	return binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, a), b)
}

// TestServeOverVhostUser drives the real device through its vhost-user
// socket: a front-end negotiates as QEMU does, shares a memfd as guest
// memory and eventfds for notifications, and a simulated driver in that
// memory opens a connection to a host listener.
func TestServeOverVhostUser(t *testing.T) {
	dir := t.TempDir()
	d, err := New(Config{GuestCID: 7, SocketPath: filepath.Join(dir, "vhu.sock"), HostListenerBase: filepath.Join(dir, "vsock")})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- d.Serve(ctx) }()
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "vsock_9000"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	var c *net.UnixConn
	for i := 0; ; i++ {
		if c, err = net.DialUnix("unix", nil, &net.UnixAddr{Name: filepath.Join(dir, "vhu.sock"), Net: "unix"}); err == nil {
			break
		}
		if i > 500 {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	f := &vhuFrontend{t: t, c: c}

	f.send(vhostuser.ReqGetFeatures, 0, nil)
	if feat := binary.LittleEndian.Uint64(f.recv()); feat&vhostuser.FeatureVersion1 == 0 || feat&0xff != 0 {
		t.Fatalf("features %#x", feat)
	}
	f.send(vhostuser.ReqGetProtocolFeatures, 0, nil)
	f.recv()
	f.send(vhostuser.ReqSetProtocolFeatures, 0, le64(vhostuser.ProtocolConfig|vhostuser.ProtocolReplyAck))
	f.send(vhostuser.ReqSetOwner, 0, nil)
	f.send(vhostuser.ReqGetConfig, 0, append(pair(0, 8), make([]byte, 12)...))
	if cfg := f.recv(); len(cfg) != 20 || binary.LittleEndian.Uint64(cfg[12:]) != 7 {
		t.Fatalf("GET_CONFIG %x", cfg)
	}
	f.send(vhostuser.ReqSetFeatures, 0, le64(vhostuser.FeatureVersion1|vhostuser.FeatureProtocolFeatures|vhostuser.FeatureEventIdx))

	rxo := virtqtest.Options{Size: 32, ChainArea: 4096, Base: 0x100000, EventIdx: true}
	txo := virtqtest.Options{Size: 32, ChainArea: 4096, EventIdx: true}
	rxSize := virtqtest.MemSize(rxo)
	txo.Base = rxo.Base + uint64(rxSize)
	size := rxSize + virtqtest.MemSize(txo)
	size = (size + 4095) &^ 4095
	mfd, err := unix.MemfdCreate("guest", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(mfd)
	if err := unix.Ftruncate(mfd, int64(size)); err != nil {
		t.Fatal(err)
	}
	m, err := unix.Mmap(mfd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	rxo.Mem, txo.Mem = m[:rxSize], m[rxSize:]
	rx, tx := virtqtest.NewDriver(rxo), virtqtest.NewDriver(txo)

	const uva = 0x7000_0000_0000
	region := make([]byte, 8+32)
	binary.LittleEndian.PutUint32(region, 1)
	binary.LittleEndian.PutUint64(region[8:], rxo.Base)
	binary.LittleEndian.PutUint64(region[16:], uint64(size))
	binary.LittleEndian.PutUint64(region[24:], uva)
	f.send(vhostuser.ReqSetMemTable, vhostuser.FlagNeedReply, region, mfd)
	if ack := f.recv(); binary.LittleEndian.Uint64(ack) != 0 {
		t.Fatalf("SET_MEM_TABLE nack")
	}
	toUVA := func(gpa uint64) uint64 { return gpa - rxo.Base + uva }
	var kick, call [2]int
	for i, drv := range []*virtqtest.Driver{rx, tx} {
		qc := drv.Config()
		if kick[i], err = unix.Eventfd(0, unix.EFD_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		if call[i], err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
			t.Fatal(err)
		}
		defer unix.Close(kick[i])
		defer unix.Close(call[i])
		f.send(vhostuser.ReqSetVringNum, 0, pair(uint32(i), uint32(qc.Size)))
		f.send(vhostuser.ReqSetVringBase, 0, pair(uint32(i), 0))
		addr := pair(uint32(i), 0)
		addr = binary.LittleEndian.AppendUint64(addr, toUVA(qc.DescAddr))
		addr = binary.LittleEndian.AppendUint64(addr, toUVA(qc.UsedAddr))
		addr = binary.LittleEndian.AppendUint64(addr, toUVA(qc.AvailAddr))
		addr = binary.LittleEndian.AppendUint64(addr, 0)
		f.send(vhostuser.ReqSetVringAddr, 0, addr)
		f.send(vhostuser.ReqSetVringCall, 0, le64(uint64(i)), call[i])
		f.send(vhostuser.ReqSetVringKick, 0, le64(uint64(i)), kick[i])
		f.send(vhostuser.ReqSetVringEnable, 0, pair(uint32(i), 1))
	}
	doKick := func(i int) {
		if _, err := unix.Write(kick[i], le64(1)); err != nil {
			t.Fatal(err)
		}
	}
	for range 16 {
		if _, err := rx.Add([]virtqtest.Buffer{{Write: true, Len: 4096}}, false); err != nil {
			t.Fatal(err)
		}
	}
	doKick(0)
	recv := func() (Header, []byte) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			u, ok, err := rx.Poll()
			if err != nil {
				t.Fatal(err)
			}
			if ok {
				h, err := ParseHeader(u.Data)
				if err != nil {
					t.Fatal(err)
				}
				return h, u.Data[HeaderSize:]
			}
			if time.Now().After(deadline) {
				t.Fatal("no rx packet")
			}
			pfd := []unix.PollFd{{Fd: int32(call[0]), Events: unix.POLLIN}}
			_, _ = unix.Poll(pfd, 20)
			var b [8]byte
			_, _ = unix.Read(call[0], b[:])
		}
	}
	send := func(h Header, payload []byte) {
		h.Len = uint32(len(payload))
		if _, err := tx.Add([]virtqtest.Buffer{{Data: append(h.Bytes(), payload...)}}, false); err != nil {
			t.Fatal(err)
		}
		doKick(1)
	}

	base := Header{SrcCID: 7, DstCID: ParentCID, SrcPort: 3333, DstPort: 9000, Type: TypeStream, BufAlloc: 65536}
	req := base
	req.Op = OpRequest
	send(req, nil)
	if h, _ := recv(); h.Op != OpResponse || h.DstCID != 7 || h.DstPort != 3333 {
		t.Fatalf("got %+v", h)
	}
	_ = l.SetDeadline(time.Now().Add(10 * time.Second))
	hc, err := l.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	rw := base
	rw.Op = OpRW
	send(rw, []byte("over vhost-user"))
	buf := make([]byte, 15)
	_ = hc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := hc.Read(buf); err != nil || string(buf) != "over vhost-user" {
		t.Fatalf("host read %q, %v", buf, err)
	}
	if _, err := hc.Write([]byte("and back")); err != nil {
		t.Fatal(err)
	}
	if h, p := recv(); h.Op != OpRW || string(p) != "and back" {
		t.Fatalf("got %+v %q", h, p)
	}

	// The front-end goes away: the device resets its connections.
	c.Close()
	if _, err := hc.Read(buf); err == nil {
		t.Error("host connection survived the front-end's disconnect")
	}
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after cancellation")
	}
	// Still open but without a driver: a host connection request times out.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel2()
	if _, err := d.ConnectGuest(ctx2, 1); !errors.Is(err, hybrid.ErrTimeout) {
		t.Errorf("ConnectGuest without a driver = %v", err)
	}
}
