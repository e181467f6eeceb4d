package nitro

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/cloister/cloister/enclave/eif"
	"github.com/cloister/cloister/internal/testenv"
	"github.com/cloister/cloister/parent/backend"
	"github.com/cloister/cloister/parent/nitro/hugepage/hugepagetest"
	"github.com/cloister/cloister/parent/nitro/nedev/nedevtest"
)

// fakeVsock stands in for AF_VSOCK with Unix sockets in a directory:
// host-<cid>-<port> are the parent's listeners, guest-<cid>-<port> are
// listeners inside "enclaves" (and the hypervisor console at CID 0).
// Simulated enclaves connecting to the parent send their CID as a 4-byte
// prefix, which the fake listener turns into the connection's RemoteAddr.
type fakeVsock struct{ dir string }

func (f *fakeVsock) path(kind string, cid, port uint32) string {
	return filepath.Join(f.dir, fmt.Sprintf("%s-%d-%d", kind, cid, port))
}

func (f *fakeVsock) Listen(cid, port uint32) (net.Listener, error) {
	l, err := net.Listen("unix", f.path("host", cid, port))
	if err != nil {
		return nil, err
	}
	return &prefixListener{l}, nil
}

func (f *fakeVsock) Dial(ctx context.Context, cid, port uint32) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "unix", f.path("guest", cid, port))
}

// enclaveDial connects from enclave CID from to the parent's port.
func (f *fakeVsock) enclaveDial(from, port uint32) (net.Conn, error) {
	c, err := net.Dial("unix", f.path("host", 3, port))
	if err != nil {
		return nil, err
	}
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], from)
	if _, err := c.Write(b[:]); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// serveGuest listens at (cid, port) and runs h for every connection.
func (f *fakeVsock) serveGuest(t *testing.T, cid, port uint32, h func(net.Conn)) {
	t.Helper()
	l, err := net.Listen("unix", f.path("guest", cid, port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); h(c) }()
		}
	}()
}

type prefixListener struct{ net.Listener }

func (l *prefixListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	var b [4]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		c.Close()
		return nil, err
	}
	return &cidConn{Conn: c, cid: binary.BigEndian.Uint32(b[:])}, nil
}

type cidConn struct {
	net.Conn
	cid uint32
}

func (c *cidConn) RemoteAddr() net.Addr { return cidAddr(c.cid) }

type cidAddr uint32

func (a cidAddr) Network() string { return "vsock" }
func (a cidAddr) String() string  { return fmt.Sprintf("vm(%d):?", uint32(a)) }
func (a cidAddr) CID() uint32     { return uint32(a) }

var _ CIDAddr = cidAddr(0)

// testEIF writes a valid EIF whose ramdisk has extra bytes and returns its path.
func testEIF(t testing.TB, dir string, kernel []byte, extra int) string {
	t.Helper()
	rd := make([]byte, 4096+extra)
	for i := range rd {
		rd[i] = byte(i*31 + 7)
	}
	img := &eif.Image{Sections: []eif.Section{
		{Type: eif.SectionKernel, Data: kernel},
		{Type: eif.SectionCmdline, Data: []byte("reboot=k panic=30 pci=off nomodules console=ttyS0")},
		{Type: eif.SectionMetadata, Data: []byte(`{"ImageName":"t","ImageVersion":"1","BuildMetadata":{"BuildTime":"t","BuildTool":"b","BuildToolVersion":"v","OperatingSystem":"o","KernelVersion":"k"},"DockerInfo":null,"CustomMetadata":null}`)},
		{Type: eif.SectionRamdisk, Data: []byte("bootstrap ramdisk")},
		{Type: eif.SectionRamdisk, Data: rd},
	}}
	b, err := eif.Marshal(img)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "app.eif")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// failingFile fails every ReadAt after the first n calls.
type failingFile struct {
	*os.File
	mu    sync.Mutex
	n     int
	calls int
}

func (f *failingFile) ReadAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	f.calls++
	fail := f.calls > f.n
	f.mu.Unlock()
	if fail {
		return 0, io.ErrUnexpectedEOF
	}
	return f.File.ReadAt(p, off)
}

func (f *failingFile) Stat() (fs.FileInfo, error) { return f.File.Stat() }

// rig is one test host: simulated driver, fake hugepages, fake vsock.
type rig struct {
	sim     *nedevtest.Sim
	mem     *hugepagetest.Fake
	vs      *fakeVsock
	b       *Backend
	spec    backend.Spec
	console *testenv.SyncBuffer
	free0   map[uint64]int
	// testingT is the running (sub)test, for setup functions.
	testingT *testing.T
}

func newRig(t *testing.T, simCfg nedevtest.SimConfig, free map[uint64]int) *rig {
	t.Helper()
	dir := t.TempDir()
	if free == nil {
		free = map[uint64]int{2 << 20: 64}
	}
	mem := hugepagetest.NewFake(free)
	simCfg.Memory = mem
	sim := nedevtest.NewSim(simCfg)
	vs := &fakeVsock{dir: dir}
	r := &rig{sim: sim, mem: mem, vs: vs, console: &testenv.SyncBuffer{}, free0: mem.FreePages()}
	r.b = New(Config{OpenDevice: sim.Open, Mapper: mem, Vsock: vs, PageSizes: []uint64{1 << 30, 2 << 20}})
	r.spec = backend.Spec{
		ID: "i-0123456789abcdef0-enc0123456789abcdef", Name: "app", CID: 20, CPUs: []int{1, 5}, MemoryMiB: 64,
		EIFPath: testEIF(t, dir, []byte("bzImage-bytes"), 0), Dir: backend.Dir(dir), Console: r.console,
	}
	r.openImage(t)
	return r
}

// openImage opens r.spec.EIFPath as the image the launch reads, as the
// daemon hands a backend its sealed copy.
func (r *rig) openImage(t testing.TB) {
	t.Helper()
	f, err := os.Open(r.spec.EIFPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	r.spec.Image = f
}

// checkNoLeaks verifies that nothing the launch created is left.
func (r *rig) checkNoLeaks(t *testing.T) {
	t.Helper()
	if n := r.sim.OpenFDs(); n != 0 {
		t.Errorf("%d driver fds left open", n)
	}
	if u := r.sim.UsedCPUs(); len(u) != 0 {
		t.Errorf("CPUs %v not returned to the pool", u)
	}
	if n := r.mem.Mapped(); n != 0 {
		t.Errorf("%d hugepage mappings left", n)
	}
	for k, v := range r.mem.FreePages() {
		if r.free0[k] != v {
			t.Errorf("free %d MiB pages = %d, want %d", k>>20, v, r.free0[k])
		}
	}
}
