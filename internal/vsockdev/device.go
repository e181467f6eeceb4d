package vsockdev

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cloister/cloister/internal/hybrid"
	"github.com/cloister/cloister/internal/vhostuser"
	"github.com/cloister/cloister/internal/virtq"
)

// Queue indexes.
const (
	rxQueue = 0 // device → driver
	txQueue = 1 // driver → device
)

// Defaults for Config's zero values.
const (
	// DefaultBufAlloc is the receive buffer advertised per connection
	// (Linux's default socket buffer, 256 KiB).
	DefaultBufAlloc = 256 << 10
	// DefaultMaxConns is Firecracker's MAX_CONNECTIONS.
	DefaultMaxConns = 1023
	// DefaultRequestTimeout bounds a connection request in either
	// direction.
	DefaultRequestTimeout = 2 * time.Second
	// DefaultShutdownTimeout bounds a connection's clean close before the
	// device resets it.
	DefaultShutdownTimeout = 2 * time.Second
	// FirstHostPort is the first local port of host-initiated connections
	// (allocated round-robin in [1<<30, 1<<31), as Firecracker does).
	FirstHostPort = 1 << 30
)

const (
	// rxBufferLimit bounds host data read ahead for one connection.
	rxBufferLimit = 64 << 10
	// maxCtrl bounds control packets (RST to unknown destinations) queued
	// while the guest posts no rx buffers.
	maxCtrl = 1024
	// txBatch bounds the tx chains handled before rx gets a turn, and
	// rxBatch the rx chains filled before tx gets one (vhost's
	// VHOST_VSOCK_PKT_WEIGHT): a guest that keeps posting buffers, even
	// useless ones, cannot keep the device in one loop.
	txBatch = 256
	rxBatch = 256
)

// Errors.
var (
	// ErrInvalidConfig reports an unusable Config.
	ErrInvalidConfig = errors.New("vsockdev: invalid configuration")
	// ErrClosed reports use of a closed Device.
	ErrClosed = errors.New("vsockdev: device closed")
)

// Config configures a Device. GuestCID is required; the rest have defaults.
type Config struct {
	// GuestCID is the guest's context ID (config space guest_cid); ≥ 3 and
	// not 0xffffffff.
	GuestCID uint32
	// SocketPath is the vhost-user socket Serve listens on (QEMU connects
	// to it with -chardev socket,path=…).
	SocketPath string
	// HostListenerBase is the prefix of host listeners: a guest connection
	// to (3, P) dials "<HostListenerBase>_<P>" (conventionally D/host/vsock).
	HostListenerBase string
	// Logger receives the device's logs; nil discards them.
	Logger *slog.Logger
	// BufAlloc is the receive buffer advertised to the guest per
	// connection, and the bound on data buffered for the host; default
	// DefaultBufAlloc.
	BufAlloc uint32
	// MaxConns bounds simultaneous connections; default DefaultMaxConns.
	MaxConns int
	// RequestTimeout and ShutdownTimeout default to DefaultRequestTimeout
	// and DefaultShutdownTimeout.
	RequestTimeout, ShutdownTimeout time.Duration
}

// queueAccess is how the device reaches its virtqueues
// (vhostuser.Backend.With in production, a simulation in tests).
type queueAccess interface {
	With(i int, f func(q *virtq.Queue)) bool
}

type connState int

const (
	stateDialing     connState = iota // guest REQUEST received, dialing the host listener
	stateConnecting                   // host-initiated, waiting for the guest's RESPONSE
	stateEstablished                  // data flows
	stateClosing                      // SHUTDOWN(both) sent, waiting for the guest's RST
	stateClosed
)

type connKey struct {
	local uint32 // host-side port
	peer  uint32 // guest-side port
}

type conn struct {
	key     connKey
	hostCID uint64 // CID the guest addresses the host side by (2 or 3)
	state   connState
	hc      *net.UnixConn
	cond    *sync.Cond
	queued  bool
	timer   *time.Timer
	result  chan error // host-initiated: outcome of the request

	sendRequest, sendResponse     bool
	sendCreditUpdate, creditAsked bool
	shutSent                      uint32
	guestShut                     uint32
	hostEOF, hostWriteClosed      bool
	peerBufAlloc, peerFwdCnt      uint32
	txCnt                         uint32 // bytes sent to the guest
	rxCnt, fwdCnt, lastFwdSent    uint32 // bytes from the guest: received, forwarded to the host, fwd_cnt last told
	tx                            chunkQueue
	rx                            chunkQueue
}

// peerFree is the guest's free receive space for this connection.
func (c *conn) peerFree() uint32 {
	inFlight := c.txCnt - c.peerFwdCnt
	if inFlight > c.peerBufAlloc {
		return 0
	}
	return c.peerBufAlloc - inFlight
}

func (c *conn) dataPending() bool {
	return c.state == stateEstablished && c.rx.len() > 0 && c.guestShut&ShutdownRcv == 0
}

func (c *conn) shutdownToSend() uint32 {
	var want uint32
	if c.hostEOF && c.rx.len() == 0 && c.guestShut&ShutdownRcv == 0 {
		want |= ShutdownSend
	}
	if c.state == stateClosing {
		want = shutdownBoth
	}
	return want &^ c.shutSent
}

// rxWork reports whether the connection has a packet for the guest.
func (c *conn) rxWork() bool {
	switch c.state {
	case stateConnecting:
		return c.sendRequest
	case stateEstablished, stateClosing:
	default:
		return false
	}
	if c.sendResponse || c.sendCreditUpdate || c.shutdownToSend() != 0 {
		return true
	}
	if c.dataPending() {
		return c.peerFree() > 0 || !c.creditAsked
	}
	return false
}

// Device is a virtio-vsock device for one guest. It implements
// hybrid.Connector.
type Device struct {
	cfg     Config
	log     *slog.Logger
	rings   queueAccess
	backend *vhostuser.Backend
	wakeCh  chan struct{}
	ctx     context.Context
	cancel  context.CancelFunc
	loopWG  sync.WaitGroup

	mu       sync.Mutex
	closed   bool
	conns    map[connKey]*conn
	ctrl     []Header
	ready    []*conn
	nextPort uint32
	refusing bool // REQUESTs are being refused for MaxConns (warned once)

	// Used by the event loop under mu.
	chain virtq.Chain
	hdr   [HeaderSize]byte
}

var _ hybrid.Connector = (*Device)(nil)

// New checks cfg, fills in defaults and returns a Device whose event loop
// is running; Serve attaches it to QEMU. Close releases it.
func New(cfg Config) (*Device, error) {
	if cfg.SocketPath == "" || cfg.HostListenerBase == "" {
		return nil, fmt.Errorf("%w: SocketPath and HostListenerBase are required", ErrInvalidConfig)
	}
	d, err := newDevice(cfg, nil)
	if err != nil {
		return nil, err
	}
	d.backend = vhostuser.New((*vhostDevice)(d), d.log)
	d.rings = d.backend
	d.start()
	return d, nil
}

func newDevice(cfg Config, rings queueAccess) (*Device, error) {
	if cfg.GuestCID < 3 || cfg.GuestCID == 0xffffffff {
		return nil, fmt.Errorf("%w: guest CID %d (must be ≥ 3 and not 0xffffffff)", ErrInvalidConfig, cfg.GuestCID)
	}
	if cfg.BufAlloc == 0 {
		cfg.BufAlloc = DefaultBufAlloc
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = DefaultShutdownTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Device{
		cfg: cfg, log: log, rings: rings,
		wakeCh: make(chan struct{}, 1),
		ctx:    ctx, cancel: cancel,
		conns:    make(map[connKey]*conn),
		nextPort: FirstHostPort,
	}, nil
}

func (d *Device) start() {
	d.loopWG.Add(1)
	go func() {
		defer d.loopWG.Done()
		for {
			select {
			case <-d.ctx.Done():
				return
			case <-d.wakeCh:
			}
			d.step()
		}
	}()
}

// wake schedules a pass of the event loop.
func (d *Device) wake() {
	select {
	case d.wakeCh <- struct{}{}:
	default:
	}
}

// step drains the tx queue, then fills rx buffers.
func (d *Device) step() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return
	}
	moreTx := d.processTx()
	moreRx := d.processRx()
	if moreTx || moreRx {
		d.wake()
	}
}

// Serve listens on cfg.SocketPath (replacing a stale socket file) and
// serves vhost-user front-ends one at a time until ctx is cancelled or the
// device is closed, then returns nil. It fails when the socket cannot be
// created or accepting fails.
func (d *Device) Serve(ctx context.Context) error {
	if d.backend == nil {
		return fmt.Errorf("%w: device has no vhost-user back-end", ErrInvalidConfig)
	}
	if fi, err := os.Lstat(d.cfg.SocketPath); err == nil && fi.Mode()&os.ModeSocket != 0 {
		_ = os.Remove(d.cfg.SocketPath)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: d.cfg.SocketPath, Net: "unix"})
	if err != nil {
		return fmt.Errorf("vsockdev: listen on vhost-user socket: %w", err)
	}
	l.SetUnlinkOnClose(true)
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(d.ctx, cancel)
	defer stop()
	stopL := context.AfterFunc(sctx, func() { l.Close() })
	defer stopL()
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			if sctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("vsockdev: accept vhost-user front-end: %w", err)
		}
		d.log.Info("vsockdev: vhost-user front-end connected")
		if err := d.backend.ServeConn(sctx, c); err != nil {
			d.log.Warn("vsockdev: vhost-user connection ended", "err", err)
		} else {
			d.log.Info("vsockdev: vhost-user front-end disconnected")
		}
	}
}

// Close stops the device: every connection is closed (host sockets see
// EOF), pending ConnectGuest calls fail and Serve returns.
func (d *Device) Close() error {
	d.cancel()
	d.mu.Lock()
	d.closed = true
	d.resetConnsLocked(ErrClosed)
	d.mu.Unlock()
	d.loopWG.Wait()
	return nil
}

// resetConnsLocked drops every connection without telling the guest.
func (d *Device) resetConnsLocked(cause error) {
	for _, c := range d.conns {
		d.closeLocked(c, false, cause)
	}
	d.ctrl = nil
	d.ready = nil
}

// vhostDevice adapts Device to vhostuser.Device.
type vhostDevice Device

func (v *vhostDevice) Features() uint64 { return 0 } // stream sockets only
func (v *vhostDevice) Queues() int      { return 2 }
func (v *vhostDevice) Kick(int)         { (*Device)(v).wake() }
func (v *vhostDevice) Config() []byte {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint64(b, uint64(v.cfg.GuestCID))
	return b
}
func (v *vhostDevice) Reset() {
	d := (*Device)(v)
	d.mu.Lock()
	d.resetConnsLocked(errDeviceReset)
	d.mu.Unlock()
}

var errDeviceReset = errors.New("vsockdev: device reset by the driver")

// ---------------------------------------------------------------- tx path

func (d *Device) processTx() (more bool) {
	broken := false
	d.rings.With(txQueue, func(q *virtq.Queue) {
		for n := 0; ; n++ {
			if n == txBatch {
				more = true
				return
			}
			ok, err := q.Pop(&d.chain)
			if err != nil {
				broken = true
				return
			}
			if !ok {
				if q.EnableNotify() {
					continue
				}
				return
			}
			d.handleTx(&d.chain)
			if err := q.Push(d.chain.Head, 0); err != nil {
				broken = true
				return
			}
		}
	})
	if broken {
		d.log.Error("vsockdev: the guest broke the tx queue; resetting every connection")
		d.resetConnsLocked(errDeviceReset)
	}
	return more
}

// handleTx processes one packet from the guest. It drops, without an
// answer, a chain with device-writable buffers, a packet shorter than a
// header and a packet whose source is not the guest's CID, as Linux's
// vhost-vsock does. A packet for another CID or socket type is answered
// with RST (an RST never is) and touches no connection.
func (d *Device) handleTx(ch *virtq.Chain) {
	if len(ch.Writable) != 0 {
		d.log.Debug("vsockdev: dropping tx packet with device-writable buffers", "writable", ch.WritableLen())
		return
	}
	if virtq.CopyOut(d.hdr[:], ch.Readable, 0) < HeaderSize {
		d.log.Debug("vsockdev: dropping tx packet shorter than a header", "len", ch.ReadableLen())
		return
	}
	h, _ := ParseHeader(d.hdr[:])
	if h.SrcCID != uint64(d.cfg.GuestCID) {
		d.log.Debug("vsockdev: dropping packet with spoofed source CID", "src_cid", h.SrcCID)
		return
	}
	if h.Type != TypeStream || (h.DstCID != HostCID && h.DstCID != ParentCID) {
		d.rstReply(h)
		return
	}
	key := connKey{local: h.DstPort, peer: h.SrcPort}
	c := d.conns[key]
	if h.Op == OpRST {
		if c != nil {
			d.closeLocked(c, false, hybrid.ErrNoListener)
		}
		return
	}
	if h.Len > MaxPacketPayload || int(h.Len) > ch.ReadableLen()-HeaderSize {
		d.log.Debug("vsockdev: packet length exceeds its buffers", "len", h.Len, "op", opName(h.Op))
		d.rstReply(h)
		if c != nil {
			d.closeLocked(c, false, errDeviceReset)
		}
		return
	}
	if h.Op == OpRequest {
		d.onRequest(h, c)
		return
	}
	if c == nil {
		d.rstReply(h)
		return
	}
	if c.peerBufAlloc != h.BufAlloc || c.peerFwdCnt != h.FwdCnt {
		c.peerBufAlloc, c.peerFwdCnt = h.BufAlloc, h.FwdCnt
		c.creditAsked = false
	}
	switch h.Op {
	case OpResponse:
		if c.state != stateConnecting || c.sendRequest {
			d.closeLocked(c, true, hybrid.ErrReset)
			return
		}
		c.state = stateEstablished
		c.timer.Stop()
		c.timer = nil
		d.startIO(c)
		c.result <- nil
	case OpRW:
		if c.state != stateEstablished || c.guestShut&ShutdownSend != 0 {
			d.closeLocked(c, true, hybrid.ErrReset)
			return
		}
		if c.tx.len()+int(h.Len) > int(d.cfg.BufAlloc) {
			d.log.Debug("vsockdev: guest exceeded its credit; resetting", "port", c.key.local)
			d.closeLocked(c, true, hybrid.ErrReset)
			return
		}
		left := int(h.Len)
		off := HeaderSize
		for _, s := range ch.Readable {
			if left == 0 {
				break
			}
			if off >= len(s) {
				off -= len(s)
				continue
			}
			p := s[off:]
			off = 0
			if len(p) > left {
				p = p[:left]
			}
			c.tx.write(p)
			left -= len(p)
		}
		c.rxCnt += h.Len
		c.cond.Broadcast()
	case OpShutdown:
		if c.state != stateEstablished && c.state != stateClosing {
			d.closeLocked(c, true, hybrid.ErrReset)
			return
		}
		d.onShutdown(c, h.Flags&shutdownBoth)
	case OpCreditUpdate:
	case OpCreditRequest:
		c.sendCreditUpdate = true
	default:
		d.closeLocked(c, true, hybrid.ErrReset)
		return
	}
	d.markReady(c)
}

func (d *Device) onRequest(h Header, c *conn) {
	if c != nil {
		// A second REQUEST for a live tuple: the guest's old socket is gone.
		d.closeLocked(c, true, hybrid.ErrReset)
		return
	}
	if len(d.conns) >= d.cfg.MaxConns {
		// One warning per burst: the guest chooses how many REQUESTs
		// it sends, and must not choose the size of the host's logs.
		if !d.refusing {
			d.log.Warn("vsockdev: too many connections; refusing guest connections", "max", d.cfg.MaxConns, "port", h.DstPort)
		} else {
			d.log.Debug("vsockdev: too many connections; refusing", "port", h.DstPort)
		}
		d.refusing = true
		d.rstReply(h)
		return
	}
	d.refusing = false
	c = d.newConn(connKey{local: h.DstPort, peer: h.SrcPort}, h.DstCID, stateDialing)
	c.peerBufAlloc, c.peerFwdCnt = h.BufAlloc, h.FwdCnt
	d.conns[c.key] = c
	go d.dial(c)
}

func (d *Device) newConn(key connKey, hostCID uint64, st connState) *conn {
	c := &conn{key: key, hostCID: hostCID, state: st}
	c.cond = sync.NewCond(&d.mu)
	return c
}

// dial connects a guest-initiated connection to its host listener.
func (d *Device) dial(c *conn) {
	path := d.cfg.HostListenerBase + "_" + strconv.FormatUint(uint64(c.key.local), 10)
	ctx, cancel := context.WithTimeout(d.ctx, d.cfg.RequestTimeout)
	var dl net.Dialer
	nc, err := dl.DialContext(ctx, "unix", path)
	cancel()
	d.mu.Lock()
	defer d.mu.Unlock()
	if c.state != stateDialing {
		if nc != nil {
			nc.Close()
		}
		return
	}
	if err != nil {
		d.log.Debug("vsockdev: no host listener; refusing guest connection", "path", path, "err", err)
		d.closeLocked(c, true, err)
		return
	}
	c.hc = nc.(*net.UnixConn)
	c.state = stateEstablished
	c.sendResponse = true
	d.startIO(c)
	d.markReady(c)
}

func (d *Device) onShutdown(c *conn, flags uint32) {
	added := flags &^ c.guestShut
	c.guestShut |= flags
	if added&ShutdownRcv != 0 {
		c.rx.reset()
		_ = c.hc.CloseRead()
	}
	c.cond.Broadcast()
	if c.guestShut == shutdownBoth && c.timer == nil {
		c.timer = time.AfterFunc(d.cfg.ShutdownTimeout, func() {
			d.mu.Lock()
			defer d.mu.Unlock()
			if c.state != stateClosed {
				d.closeLocked(c, true, hybrid.ErrReset)
			}
		})
	}
	d.maybeFinish(c)
}

// maybeFinish ends a connection whose both directions are done.
func (d *Device) maybeFinish(c *conn) {
	switch {
	case c.state != stateEstablished && c.state != stateClosing:
	case c.guestShut == shutdownBoth && c.hostWriteClosed:
		// The guest closed its socket and its data reached the host.
		d.closeLocked(c, true, nil)
	case c.state == stateEstablished && c.guestShut&ShutdownSend != 0 && c.hostWriteClosed &&
		c.hostEOF && c.rx.len() == 0 && (c.shutSent&ShutdownSend != 0 || c.guestShut&ShutdownRcv != 0):
		// Both directions ended: SHUTDOWN(both) and wait for the guest's RST.
		c.state = stateClosing
		if c.timer == nil {
			c.timer = time.AfterFunc(d.cfg.ShutdownTimeout, func() {
				d.mu.Lock()
				defer d.mu.Unlock()
				if c.state != stateClosed {
					d.closeLocked(c, true, nil)
				}
			})
		}
		d.markReady(c)
	}
}

// rstReply queues an RST answering packet h (never answering an RST).
func (d *Device) rstReply(h Header) {
	if h.Op == OpRST {
		return
	}
	d.enqueueCtrl(Header{
		SrcCID: h.DstCID, DstCID: h.SrcCID, SrcPort: h.DstPort, DstPort: h.SrcPort,
		Type: h.Type, Op: OpRST,
	})
}

func (d *Device) enqueueCtrl(h Header) {
	if len(d.ctrl) >= maxCtrl {
		d.log.Debug("vsockdev: control queue full; dropping", "op", opName(h.Op))
		return
	}
	d.ctrl = append(d.ctrl, h)
	d.wake()
}

// closeLocked ends c: optionally an RST to the guest, the host socket
// closed, a waiting ConnectGuest told cause (nil = success not possible:
// mapped to a reset).
func (d *Device) closeLocked(c *conn, rst bool, cause error) {
	if c.state == stateClosed {
		return
	}
	if rst {
		d.enqueueCtrl(Header{
			SrcCID: c.hostCID, DstCID: uint64(d.cfg.GuestCID), SrcPort: c.key.local, DstPort: c.key.peer,
			Type: TypeStream, Op: OpRST,
		})
	}
	c.state = stateClosed
	if d.conns[c.key] == c {
		delete(d.conns, c.key)
	}
	if c.hc != nil {
		c.hc.Close()
	}
	c.tx.reset()
	c.rx.reset()
	if c.timer != nil {
		c.timer.Stop()
	}
	if c.result != nil {
		if cause == nil {
			cause = hybrid.ErrReset
		}
		select {
		case c.result <- cause:
		default:
		}
	}
	c.cond.Broadcast()
}

// markReady queues c for the rx loop when it has a packet for the guest.
// Closed connections leave the queue when the rx loop reaches them; when
// it does not run (the guest never set the rx queue up, or broke it) they
// are dropped here once they outnumber the open ones, so the queue holds
// at most 2*MaxConns+16 entries whatever the guest does with tx.
func (d *Device) markReady(c *conn) {
	if c.queued || !c.rxWork() {
		return
	}
	if len(d.ready) >= 2*len(d.conns)+16 {
		live := d.ready[:0]
		for _, r := range d.ready {
			if r.state == stateClosed {
				r.queued = false
				continue
			}
			live = append(live, r)
		}
		clear(d.ready[len(live):])
		d.ready = live
	}
	c.queued = true
	d.ready = append(d.ready, c)
	d.wake()
}

// ------------------------------------------------------------- host I/O

func (d *Device) startIO(c *conn) {
	go d.reader(c)
	go d.writer(c)
}

// reader moves host data into c.rx, at most rxBufferLimit ahead.
func (d *Device) reader(c *conn) {
	for {
		d.mu.Lock()
		for c.state != stateClosed && c.rx.len() >= rxBufferLimit && c.guestShut&ShutdownRcv == 0 {
			c.cond.Wait()
		}
		if c.state == stateClosed {
			d.mu.Unlock()
			return
		}
		d.mu.Unlock()
		buf := getChunk()[:chunkSize]
		n, err := c.hc.Read(buf)
		d.mu.Lock()
		if c.state == stateClosed {
			d.mu.Unlock()
			return
		}
		switch {
		case c.guestShut&ShutdownRcv != 0:
			putChunk(buf)
		case n >= chunkSize/2:
			c.rx.push(buf[:n])
		default:
			// Pack small reads so memory stays proportional to the data.
			c.rx.write(buf[:n])
			putChunk(buf)
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				c.hostEOF = true
			} else {
				d.log.Debug("vsockdev: host read failed; resetting", "port", c.key.local, "err", err)
				d.closeLocked(c, true, hybrid.ErrReset)
				d.mu.Unlock()
				return
			}
		}
		d.markReady(c)
		d.maybeFinish(c)
		d.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// writer moves c.tx to the host and half-closes the host socket once the
// guest shut down its sending side and everything was written.
func (d *Device) writer(c *conn) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for {
		for c.state != stateClosed && c.tx.len() == 0 && (c.guestShut&ShutdownSend == 0 || c.hostWriteClosed) {
			c.cond.Wait()
		}
		if c.state == stateClosed {
			return
		}
		if c.tx.len() == 0 {
			c.hostWriteClosed = true
			d.mu.Unlock()
			_ = c.hc.CloseWrite()
			d.mu.Lock()
			d.maybeFinish(c)
			d.markReady(c)
			return
		}
		p := c.tx.front()
		d.mu.Unlock()
		n, err := c.hc.Write(p)
		d.mu.Lock()
		if c.state == stateClosed {
			return
		}
		c.tx.consume(n)
		c.fwdCnt += uint32(n)
		if err != nil {
			d.log.Debug("vsockdev: host write failed; resetting", "port", c.key.local, "err", err)
			d.closeLocked(c, true, hybrid.ErrReset)
			return
		}
		// Tell the guest about the space once its view drops below half.
		if c.fwdCnt != c.lastFwdSent && d.cfg.BufAlloc-(c.rxCnt-c.lastFwdSent) < d.cfg.BufAlloc/2 {
			c.sendCreditUpdate = true
			d.markReady(c)
		}
	}
}

// ---------------------------------------------------------------- rx path

// processRx writes pending packets into the guest's rx buffers, at most
// rxBatch chains (taken or looked for), and reports whether it stopped
// because of that bound.
func (d *Device) processRx() (more bool) {
	if len(d.ctrl) == 0 && len(d.ready) == 0 {
		return false
	}
	broken := false
	d.rings.With(rxQueue, func(q *virtq.Queue) {
		for n := 0; ; n++ {
			if n == rxBatch {
				more = true
				return
			}
			c, ok := d.nextRx()
			if !ok {
				return
			}
			got, err := q.Pop(&d.chain)
			if err != nil {
				broken = true
				return
			}
			if !got {
				if q.EnableNotify() {
					continue
				}
				return
			}
			n := d.fillRx(&d.chain, c)
			if err := q.Push(d.chain.Head, uint32(n)); err != nil {
				broken = true
				return
			}
		}
	})
	if broken {
		d.log.Error("vsockdev: the guest broke the rx queue; resetting every connection")
		d.resetConnsLocked(errDeviceReset)
	}
	return more
}

// nextRx returns the connection whose packet goes next (nil for the
// control queue) and whether there is anything to send.
func (d *Device) nextRx() (*conn, bool) {
	if len(d.ctrl) > 0 {
		return nil, true
	}
	for len(d.ready) > 0 {
		c := d.ready[0]
		if c.rxWork() {
			return c, true
		}
		c.queued = false
		d.ready = d.ready[1:]
	}
	d.ready = nil
	return nil, false
}

// fillRx writes one packet into ch and returns the bytes written. A chain
// with device-readable buffers or with less room than a header is returned
// empty and the packet waits for the next one.
func (d *Device) fillRx(ch *virtq.Chain, c *conn) int {
	room := ch.WritableLen()
	if len(ch.Readable) != 0 {
		d.log.Debug("vsockdev: rx buffer with device-readable parts; returning it empty", "readable", ch.ReadableLen())
		return 0
	}
	if room < HeaderSize {
		d.log.Debug("vsockdev: rx buffer smaller than a header; returning it empty", "len", room)
		return 0
	}
	if c == nil {
		h := d.ctrl[0]
		d.ctrl = d.ctrl[1:]
		h.Put(d.hdr[:])
		virtq.CopyIn(ch.Writable, 0, d.hdr[:])
		return HeaderSize
	}
	d.ready = d.ready[1:]
	c.queued = false
	h := Header{
		SrcCID: c.hostCID, DstCID: uint64(d.cfg.GuestCID), SrcPort: c.key.local, DstPort: c.key.peer,
		Type: TypeStream, BufAlloc: d.cfg.BufAlloc, FwdCnt: c.fwdCnt,
	}
	n := 0
	switch {
	case c.state == stateConnecting:
		h.Op = OpRequest
		c.sendRequest = false
	case c.sendResponse:
		h.Op = OpResponse
		c.sendResponse = false
	case c.dataPending() && c.peerFree() > 0:
		n = min(c.rx.len(), int(min(c.peerFree(), MaxPacketPayload)), room-HeaderSize)
		h.Op, h.Len = OpRW, uint32(n)
		off := HeaderSize
		c.rx.pieces(n, func(p []byte) {
			virtq.CopyIn(ch.Writable, off, p)
			off += len(p)
		})
		c.rx.consume(n)
		c.txCnt += uint32(n)
		c.cond.Broadcast()
	case c.shutdownToSend() != 0:
		c.shutSent |= c.shutdownToSend()
		h.Op, h.Flags = OpShutdown, c.shutSent
	case c.dataPending() && !c.creditAsked:
		h.Op = OpCreditRequest
		c.creditAsked = true
	default:
		h.Op = OpCreditUpdate
	}
	c.sendCreditUpdate = false
	c.lastFwdSent = c.fwdCnt
	h.Put(d.hdr[:])
	virtq.CopyIn(ch.Writable, 0, d.hdr[:])
	d.maybeFinish(c)
	d.markReady(c)
	return HeaderSize + n
}

// ------------------------------------------------------ host-initiated

// ConnectGuest opens a stream to the guest's port: it sends a REQUEST from
// (CID 3, a port allocated from FirstHostPort) and waits for the guest's
// RESPONSE. It returns the host end of the connection (a *net.UnixConn).
// The error is a *hybrid.Error of class hybrid.ErrNoListener when the guest
// answers RST (nobody listening), hybrid.ErrTimeout when the guest does not
// answer within RequestTimeout or ctx ends, and hybrid.ErrReset when the
// device is reset or closed meanwhile.
func (d *Device) ConnectGuest(ctx context.Context, port uint32) (net.Conn, error) {
	devEnd, userEnd, err := socketPair()
	if err != nil {
		return nil, fmt.Errorf("vsockdev: connect to guest port %d: %w", port, err)
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		devEnd.Close()
		userEnd.Close()
		return nil, &hybrid.Error{Class: hybrid.ErrReset, Port: port, Err: ErrClosed}
	}
	if len(d.conns) >= d.cfg.MaxConns {
		d.mu.Unlock()
		devEnd.Close()
		userEnd.Close()
		return nil, &hybrid.Error{Class: hybrid.ErrReset, Port: port, Err: errors.New("vsockdev: too many connections")}
	}
	c := d.newConn(connKey{local: d.allocPortLocked(port), peer: port}, ParentCID, stateConnecting)
	c.hc = devEnd
	c.sendRequest = true
	c.peerBufAlloc = 0
	c.result = make(chan error, 1)
	c.timer = time.AfterFunc(d.cfg.RequestTimeout, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if c.state == stateConnecting {
			d.closeLocked(c, true, hybrid.ErrTimeout)
		}
	})
	d.conns[c.key] = c
	d.markReady(c)
	d.mu.Unlock()

	select {
	case err := <-c.result:
		if err == nil {
			return userEnd, nil
		}
		userEnd.Close()
		class := err
		if !errors.Is(err, hybrid.ErrNoListener) && !errors.Is(err, hybrid.ErrTimeout) {
			class = hybrid.ErrReset
		}
		return nil, &hybrid.Error{Class: class, Port: port, Err: err}
	case <-ctx.Done():
		d.mu.Lock()
		d.closeLocked(c, c.state != stateClosed, hybrid.ErrTimeout)
		d.mu.Unlock()
		userEnd.Close()
		return nil, &hybrid.Error{Class: hybrid.ErrTimeout, Port: port, Err: ctx.Err()}
	}
}

// allocPortLocked picks the next free local port in [1<<30, 1<<31).
func (d *Device) allocPortLocked(peer uint32) uint32 {
	for {
		p := d.nextPort
		d.nextPort++
		if d.nextPort >= 1<<31 {
			d.nextPort = FirstHostPort
		}
		if _, busy := d.conns[connKey{local: p, peer: peer}]; !busy {
			return p
		}
	}
}

// socketPair returns two connected Unix stream sockets.
func socketPair() (*net.UnixConn, *net.UnixConn, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	a, err := fileConn(fds[0])
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, err
	}
	b, err := fileConn(fds[1])
	if err != nil {
		a.Close()
		return nil, nil, err
	}
	return a, b, nil
}

func fileConn(fd int) (*net.UnixConn, error) {
	f := os.NewFile(uintptr(fd), "vsock-socketpair")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("socketpair: %w", err)
	}
	return c.(*net.UnixConn), nil
}
