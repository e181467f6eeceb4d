package vsockdev

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cloister/cloister/internal/vhostuser"
	"github.com/cloister/cloister/internal/virtq/virtqtest"
)

// TestHostileGuestOverVhostUser runs a malicious guest against the real
// device through its vhost-user socket, with guest memory made of two
// memfd regions and a hole between them (as QEMU describes RAM split
// around a PCI hole). A tx descriptor pointing into the hole breaks the
// queue: the device resets the open connection (the host sees EOF) and the
// daemon goes on. When the front-end restarts the ring (GET_VRING_BASE,
// then a new kick fd, as QEMU does on a device reset), the queue works
// again from where it stopped.
func TestHostileGuestOverVhostUser(t *testing.T) {
	dir := t.TempDir()
	d, err := New(Config{GuestCID: 7, SocketPath: filepath.Join(dir, "vhu.sock"), HostListenerBase: filepath.Join(dir, "vsock")})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = d.Serve(ctx) }()
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
	defer c.Close()
	f := &vhuFrontend{t: t, c: c}
	f.send(vhostuser.ReqSetOwner, 0, nil)
	f.send(vhostuser.ReqSetFeatures, 0, le64(vhostuser.FeatureVersion1))

	// Region A holds both queues; region B, after a hole, one page.
	const gpaA, gpaB, hole = 0x10_0000, 0x4000_0000, 0x2000_0000
	rxo := virtqtest.Options{Size: 32, ChainArea: 4096, Base: gpaA}
	txo := virtqtest.Options{Size: 32, ChainArea: 4096}
	rxSize := virtqtest.MemSize(rxo)
	txo.Base = gpaA + uint64(rxSize)
	sizeA := (rxSize + virtqtest.MemSize(txo) + 4095) &^ 4095
	mfd, err := unix.MemfdCreate("guest", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(mfd)
	if err := unix.Ftruncate(mfd, int64(sizeA+4096)); err != nil {
		t.Fatal(err)
	}
	m, err := unix.Mmap(mfd, 0, sizeA, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	rxo.Mem, txo.Mem = m[:rxSize], m[rxSize:]
	rx, tx := virtqtest.NewDriver(rxo), virtqtest.NewDriver(txo)

	const uvaA, uvaB = 0x7000_0000_0000, 0x7100_0000_0000
	table := binary.LittleEndian.AppendUint64(nil, 2)
	for _, r := range []vhostuser.Region{
		{GuestPhys: gpaA, Size: uint64(sizeA), UserAddr: uvaA},
		{GuestPhys: gpaB, Size: 4096, UserAddr: uvaB, MmapOffset: uint64(sizeA)},
	} {
		for _, v := range []uint64{r.GuestPhys, r.Size, r.UserAddr, r.MmapOffset} {
			table = binary.LittleEndian.AppendUint64(table, v)
		}
	}
	f.send(vhostuser.ReqSetMemTable, 0, table, mfd, mfd)
	var kick, call [2]int
	startRing := func(i int) {
		t.Helper()
		if kick[i], err = unix.Eventfd(0, unix.EFD_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(kick[i]) })
		f.send(vhostuser.ReqSetVringKick, 0, le64(uint64(i)), kick[i])
	}
	for i, drv := range []*virtqtest.Driver{rx, tx} {
		qc := drv.Config()
		if call[i], err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
			t.Fatal(err)
		}
		defer unix.Close(call[i])
		f.send(vhostuser.ReqSetVringNum, 0, pair(uint32(i), uint32(qc.Size)))
		f.send(vhostuser.ReqSetVringBase, 0, pair(uint32(i), 0))
		addr := pair(uint32(i), 0)
		for _, gpa := range []uint64{qc.DescAddr, qc.UsedAddr, qc.AvailAddr, 0} {
			if gpa != 0 {
				gpa = gpa - gpaA + uvaA
			}
			addr = binary.LittleEndian.AppendUint64(addr, gpa)
		}
		f.send(vhostuser.ReqSetVringAddr, 0, addr)
		f.send(vhostuser.ReqSetVringCall, 0, le64(uint64(i)), call[i])
		startRing(i)
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
	recv := func() Header {
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
				if _, err := rx.Add([]virtqtest.Buffer{{Write: true, Len: 4096}}, false); err != nil {
					t.Fatal(err)
				}
				doKick(0)
				return h
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
	hdr := Header{SrcCID: 7, DstCID: ParentCID, SrcPort: 3333, DstPort: 9000, Type: TypeStream, Op: OpRequest, BufAlloc: 65536}
	if _, err := tx.Add([]virtqtest.Buffer{{Data: hdr.Bytes()}}, false); err != nil {
		t.Fatal(err)
	}
	doKick(1)
	if h := recv(); h.Op != OpResponse || h.DstPort != 3333 {
		t.Fatalf("got %+v", h)
	}
	_ = l.SetDeadline(time.Now().Add(10 * time.Second))
	hc, err := l.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()

	// The attack: descriptor 31 (never handed out by Add so far) points
	// into the hole between the regions.
	const evil = 31
	tx.WriteDesc(evil, hole, HeaderSize, 0, 0)
	tx.Publish(evil)
	doKick(1)
	_ = hc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if got, err := io.ReadAll(hc); err != nil || len(got) != 0 {
		t.Fatalf("host end after the guest broke the tx queue: %q, %v; want EOF", got, err)
	}

	// The front-end restarts the ring; the guest has fixed its
	// descriptor (now a REQUEST to a CID that does not exist).
	f.send(vhostuser.ReqGetVringBase, 0, pair(1, 0))
	if base := binary.LittleEndian.Uint32(f.recv()[4:]); base != uint32(tx.AvailIdx()-1) {
		t.Errorf("GET_VRING_BASE = %d, want %d (the broken chain not consumed)", base, tx.AvailIdx()-1)
	}
	buf, _ := tx.Scratch(evil)
	nowhere := Header{SrcCID: 7, DstCID: 99, SrcPort: 44, DstPort: 1, Type: TypeStream, Op: OpRequest}
	tx.Put(buf, nowhere.Bytes())
	tx.WriteDesc(evil, buf, HeaderSize, 0, 0)
	startRing(1)
	doKick(1)
	if h := recv(); h.Op != OpRST || h.DstPort != 44 {
		t.Fatalf("after the ring restarted: got %+v, want RST to port 44", h)
	}
}
