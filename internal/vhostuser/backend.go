package vhostuser

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/cloister/cloister/internal/virtq"
)

// Device is the virtio device a Backend serves.
type Device interface {
	// Features returns the device-specific virtio feature bits offered to
	// the driver; the Backend adds VERSION_1, RING_INDIRECT_DESC,
	// RING_EVENT_IDX and VHOST_USER_F_PROTOCOL_FEATURES.
	Features() uint64
	// Config returns the device configuration space (GET_CONFIG).
	Config() []byte
	// Queues returns the number of virtqueues the back-end handles.
	Queues() int
	// Kick tells the device that queue i may have new available buffers
	// (a driver notification, or the ring just started). It must not block
	// and must not call the Backend synchronously.
	Kick(i int)
	// Reset tells the device to drop all connection state: the driver or
	// front-end reset the device, or the front-end went away. No queue is
	// running when it is called.
	Reset()
}

// Offered protocol features: REPLY_ACK, CONFIG (QEMU's vhost-user-vsock
// requires it for GET_CONFIG) and RESET_DEVICE.
const offeredProtocol = ProtocolReplyAck | ProtocolConfig | ProtocolResetDevice

// ringFeatures are the transport feature bits the Backend implements.
const ringFeatures = FeatureVersion1 | FeatureIndirectDesc | FeatureEventIdx | FeatureProtocolFeatures

// maxConfigSize bounds a GET_CONFIG request (VHOST_USER_MAX_CONFIG_SIZE).
const maxConfigSize = 256

type vring struct {
	num     uint16 // 0 = not set
	addr    vringAddr
	addrSet bool
	base    uint16

	kick    *os.File
	call    int // -1 = none
	errFD   int // -1 = none
	started bool
	enabled bool

	q *virtq.Queue
}

// Backend is the back-end side of a vhost-user connection for one Device.
// Create it with New; it serves one front-end connection at a time.
type Backend struct {
	dev Device
	log *slog.Logger

	mu       sync.Mutex // guards everything below
	serving  bool
	acked    uint64
	protocol uint64
	mem      *MemTable
	rings    []*vring
}

// New returns a Backend for dev. A nil logger discards logs.
func New(dev Device, log *slog.Logger) *Backend {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := &Backend{dev: dev, log: log}
	b.rings = make([]*vring, dev.Queues())
	for i := range b.rings {
		b.rings[i] = &vring{call: -1, errFD: -1}
	}
	return b
}

// With runs f with exclusive use of queue i while the ring is running and
// reports whether it ran. Front-end requests that change the ring or the
// memory table wait until f returns, so the chains f pops stay valid for
// the duration of f; f must not keep them afterwards. After f, the driver is
// notified through the call eventfd when the queue says so (EVENT_IDX or
// NO_INTERRUPT rules). A memory fault while f touches guest memory (for
// example a shared file the front-end truncated) breaks the queue instead of
// crashing the process.
func (b *Backend) With(i int, f func(q *virtq.Queue)) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if i < 0 || i >= len(b.rings) {
		return false
	}
	r := b.rings[i]
	if r.q == nil || r.q.Err() != nil {
		return false
	}
	if err := guarded(r.q, f); err != nil {
		b.log.Error("vhostuser: memory fault on queue; stopping it", "queue", i, "err", err)
		r.q = nil
		return true
	}
	if err := r.q.Err(); err != nil {
		b.log.Error("vhostuser: driver broke the queue", "queue", i, "err", err)
	}
	if r.q.NeedNotify() && r.call >= 0 {
		signal(r.call)
	}
	return true
}

// guarded runs f(q) turning a memory fault into an error.
func guarded(q *virtq.Queue, f func(q *virtq.Queue)) (err error) {
	old := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(old)
		if v := recover(); v != nil {
			if fe, ok := v.(interface{ Addr() uintptr }); ok {
				err = fmt.Errorf("%w: fault at %#x", ErrMemory, fe.Addr())
				return
			}
			panic(v)
		}
	}()
	f(q)
	return nil
}

// signal writes 1 to an eventfd.
func signal(fd int) {
	var one [8]byte
	binary.LittleEndian.PutUint64(one[:], 1)
	_, _ = unix.Write(fd, one[:])
}

// errBusy is returned by ServeConn while another connection is served.
var errBusy = errors.New("vhostuser: a front-end is already connected")

// ServeConn serves the front-end on conn until it disconnects, sends a
// malformed message, or ctx is cancelled. It closes conn, stops every ring,
// unmaps guest memory and resets the device before returning. It returns nil
// when the front-end closed the connection.
func (b *Backend) ServeConn(ctx context.Context, conn *net.UnixConn) error {
	b.mu.Lock()
	if b.serving {
		b.mu.Unlock()
		conn.Close()
		return errBusy
	}
	b.serving = true
	b.mu.Unlock()

	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	defer b.cleanup()
	defer conn.Close()

	buf := make([]byte, headerSize+MaxPayload)
	for {
		h, payload, fds, err := readMsg(conn, buf)
		if err != nil {
			if errors.Is(err, io.EOF) || ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		b.log.Debug("vhostuser: request", "request", requestName(h.Request), "flags", h.Flags, "size", h.Size, "fds", len(fds))
		if err := b.handle(conn, h, payload, fds); err != nil {
			b.log.Error("vhostuser: closing connection", "request", requestName(h.Request), "err", err)
			return err
		}
	}
}

// cleanup returns the back-end to its initial state after a connection.
func (b *Backend) cleanup() {
	b.mu.Lock()
	b.resetLocked()
	b.protocol = 0
	b.serving = false
	b.mu.Unlock()
	b.dev.Reset()
}

// resetLocked stops and forgets every ring, unmaps memory and clears the
// negotiated virtio features.
func (b *Backend) resetLocked() {
	for _, r := range b.rings {
		b.stopLocked(r)
		closeFD(&r.call)
		closeFD(&r.errFD)
		*r = vring{call: -1, errFD: -1}
	}
	if b.mem != nil {
		b.mem.Close()
		b.mem = nil
	}
	b.acked = 0
}

func closeFD(fd *int) {
	if *fd >= 0 {
		unix.Close(*fd)
		*fd = -1
	}
}

// stopLocked stops a ring (GET_VRING_BASE semantics): it remembers the last
// available index as the base and drops the kick fd.
func (b *Backend) stopLocked(r *vring) {
	if r.q != nil {
		r.base = r.q.LastAvail()
		r.q = nil
	}
	if r.kick != nil {
		r.kick.Close()
		r.kick = nil
	}
	r.started = false
}

// startLocked starts ring i when everything it needs is present and
// reports whether it started.
func (b *Backend) startLocked(i int) bool {
	r := b.rings[i]
	if r.q != nil || !r.started || !r.enabled || r.num == 0 || !r.addrSet || b.mem == nil {
		return false
	}
	q, err := b.newQueue(r)
	if err != nil {
		b.log.Error("vhostuser: cannot start ring", "queue", i, "err", err)
		return false
	}
	r.q = q
	return true
}

func (b *Backend) newQueue(r *vring) (*virtq.Queue, error) {
	var cfg virtq.Config
	var err error
	cfg.Size = r.num
	cfg.LastAvail = r.base
	cfg.EventIdx = b.acked&FeatureEventIdx != 0
	if cfg.DescAddr, err = b.mem.UVAToGPA(r.addr.Desc); err != nil {
		return nil, fmt.Errorf("descriptor table: %w", err)
	}
	if cfg.AvailAddr, err = b.mem.UVAToGPA(r.addr.Avail); err != nil {
		return nil, fmt.Errorf("available ring: %w", err)
	}
	if cfg.UsedAddr, err = b.mem.UVAToGPA(r.addr.Used); err != nil {
		return nil, fmt.Errorf("used ring: %w", err)
	}
	return virtq.New(b.mem, cfg)
}

// rebuildLocked re-creates the running queues after the memory table or a
// ring's addresses changed, keeping their position.
func (b *Backend) rebuildLocked(only int) {
	for i, r := range b.rings {
		if r.q == nil || (only >= 0 && i != only) {
			continue
		}
		r.base = r.q.LastAvail()
		r.q = nil
		b.startLocked(i)
	}
}

// handle processes one request. A returned error ends the connection.
func (b *Backend) handle(conn *net.UnixConn, h header, p []byte, fds []int) error {
	kickQueue := -1
	reply, err := b.dispatch(h, p, fds, &kickQueue)
	if err != nil && errors.Is(err, ErrProtocol) {
		return err
	}
	if err != nil {
		b.log.Warn("vhostuser: request failed", "request", requestName(h.Request), "err", err)
	}
	if kickQueue >= 0 {
		b.dev.Kick(kickQueue)
	}
	switch {
	case reply != nil:
		return writeReply(conn, h.Request, reply)
	case h.Flags&FlagNeedReply != 0 && b.replyAck():
		var ack [8]byte
		if err != nil {
			ack[0] = 1
		}
		return writeReply(conn, h.Request, ack[:])
	}
	return nil
}

func (b *Backend) replyAck() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.protocol&ProtocolReplyAck != 0
}

// dispatch executes a request and returns its reply payload (nil when the
// request has no reply of its own). It takes ownership of fds.
func (b *Backend) dispatch(h header, p []byte, fds []int, kickQueue *int) (reply []byte, err error) {
	used := 0 // fds consumed
	defer func() {
		for _, fd := range fds[used:] {
			unix.Close(fd)
		}
	}()
	noFDs := func() error {
		if len(fds) != 0 {
			return fmt.Errorf("%w: %s carries %d unexpected fds", ErrProtocol, requestName(h.Request), len(fds))
		}
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()

	switch h.Request {
	case ReqGetFeatures:
		return u64Bytes(b.dev.Features() | ringFeatures), noFDs()

	case ReqSetFeatures:
		v, err := u64Payload(p, h.Request)
		if err != nil {
			return nil, err
		}
		if extra := v &^ (b.dev.Features() | ringFeatures); extra != 0 {
			return nil, fmt.Errorf("%w: SET_FEATURES acks unoffered bits %#x", ErrProtocol, extra)
		}
		b.acked = v
		return nil, noFDs()

	case ReqSetOwner:
		return nil, noFDs()

	case ReqResetOwner, ReqResetDevice:
		b.resetLocked()
		b.mu.Unlock()
		b.dev.Reset()
		b.mu.Lock()
		return nil, noFDs()

	case ReqGetProtocolFeatures:
		return u64Bytes(offeredProtocol), noFDs()

	case ReqSetProtocolFeatures:
		v, err := u64Payload(p, h.Request)
		if err != nil {
			return nil, err
		}
		if extra := v &^ offeredProtocol; extra != 0 {
			return nil, fmt.Errorf("%w: SET_PROTOCOL_FEATURES acks unoffered bits %#x", ErrProtocol, extra)
		}
		b.protocol = v
		return nil, noFDs()

	case ReqGetQueueNum:
		return u64Bytes(uint64(len(b.rings))), noFDs()

	case ReqSetMemTable:
		regs, err := parseMemTable(p, len(fds))
		if err != nil {
			return nil, err
		}
		t, err := MapRegions(regs, fds)
		if err != nil {
			return nil, err
		}
		old := b.mem
		b.mem = t
		b.rebuildLocked(-1)
		if old != nil {
			old.Close()
		}
		return nil, nil

	case ReqSetVringNum:
		i, num, err := b.ringState(p, h.Request)
		if err != nil {
			return nil, err
		}
		if num == 0 || num > virtq.MaxSize || num&(num-1) != 0 {
			return nil, fmt.Errorf("%w: SET_VRING_NUM %d is not a power of two in 1..%d", ErrProtocol, num, virtq.MaxSize)
		}
		b.rings[i].num = uint16(num)
		return nil, noFDs()

	case ReqSetVringAddr:
		a, err := parseVringAddr(p)
		if err != nil {
			return nil, err
		}
		if int(a.Index) >= len(b.rings) {
			return nil, fmt.Errorf("%w: SET_VRING_ADDR for queue %d of %d", ErrProtocol, a.Index, len(b.rings))
		}
		r := b.rings[a.Index]
		r.addr, r.addrSet = a, true
		b.rebuildLocked(int(a.Index))
		return nil, noFDs()

	case ReqSetVringBase:
		i, num, err := b.ringState(p, h.Request)
		if err != nil {
			return nil, err
		}
		if num > 0xffff {
			return nil, fmt.Errorf("%w: SET_VRING_BASE %d out of range", ErrProtocol, num)
		}
		b.rings[i].base = uint16(num)
		return nil, noFDs()

	case ReqGetVringBase:
		i, _, err := b.ringState(p, h.Request)
		if err != nil {
			return nil, err
		}
		r := b.rings[i]
		b.stopLocked(r)
		out := make([]byte, 8)
		binary.LittleEndian.PutUint32(out, uint32(i))
		binary.LittleEndian.PutUint32(out[4:], uint32(r.base))
		return out, noFDs()

	case ReqSetVringKick, ReqSetVringCall, ReqSetVringErr:
		v, err := u64Payload(p, h.Request)
		if err != nil {
			return nil, err
		}
		i := int(v & vringIndexMask)
		if i >= len(b.rings) {
			return nil, fmt.Errorf("%w: %s for queue %d of %d", ErrProtocol, requestName(h.Request), i, len(b.rings))
		}
		fd := -1
		switch {
		case v&vringNoFD != 0 && len(fds) != 0, v&vringNoFD == 0 && len(fds) != 1:
			return nil, fmt.Errorf("%w: %s with %d fds and flags %#x", ErrProtocol, requestName(h.Request), len(fds), v)
		case len(fds) == 1:
			fd, used = fds[0], 1
		}
		r := b.rings[i]
		switch h.Request {
		case ReqSetVringCall:
			closeFD(&r.call)
			r.call = fd
		case ReqSetVringErr:
			closeFD(&r.errFD)
			r.errFD = fd
		case ReqSetVringKick:
			if r.kick != nil {
				r.kick.Close()
				r.kick = nil
			}
			if fd >= 0 {
				if err := unix.SetNonblock(fd, true); err != nil {
					unix.Close(fd)
					return nil, fmt.Errorf("kick fd: %w", err)
				}
				r.kick = os.NewFile(uintptr(fd), fmt.Sprintf("vhost-user-kick-%d", i))
				go b.watchKick(r.kick, i)
			} else {
				b.log.Warn("vhostuser: ring without kick fd (polling mode) is only processed on other events", "queue", i)
			}
			r.started = true
			if r.enableOnKick(b.acked) {
				r.enabled = true
			}
			if b.startLocked(i) {
				*kickQueue = i
			}
		}
		return nil, nil

	case ReqSetVringEnable:
		i, num, err := b.ringState(p, h.Request)
		if err != nil {
			return nil, err
		}
		r := b.rings[i]
		r.enabled = num != 0
		if !r.enabled && r.q != nil {
			r.base = r.q.LastAvail()
			r.q = nil
		}
		if b.startLocked(i) {
			*kickQueue = i
		}
		return nil, noFDs()

	case ReqGetConfig:
		if len(p) < 12 {
			return nil, fmt.Errorf("%w: GET_CONFIG payload of %d bytes", ErrProtocol, len(p))
		}
		off := binary.LittleEndian.Uint32(p)
		size := binary.LittleEndian.Uint32(p[4:])
		if size > maxConfigSize {
			return nil, fmt.Errorf("%w: GET_CONFIG of %d bytes", ErrProtocol, size)
		}
		out := make([]byte, 12+size)
		copy(out, p[:12])
		cfg := b.dev.Config()
		if uint64(off) < uint64(len(cfg)) {
			copy(out[12:], cfg[off:])
		}
		return out, noFDs()

	case ReqSetConfig:
		return nil, errors.New("vhostuser: the device configuration is read-only")
	}
	if mustReply(h.Request) {
		return nil, fmt.Errorf("%w: unsupported request %s needs a reply", ErrProtocol, requestName(h.Request))
	}
	return nil, fmt.Errorf("vhostuser: unsupported request %s", requestName(h.Request))
}

// enableOnKick reports whether a ring is enabled as soon as it starts:
// without VHOST_USER_F_PROTOCOL_FEATURES rings start enabled; with it they
// wait for SET_VRING_ENABLE.
func (r *vring) enableOnKick(acked uint64) bool { return acked&FeatureProtocolFeatures == 0 }

func (b *Backend) ringState(p []byte, req uint32) (int, uint32, error) {
	i, num, err := statePayload(p, req)
	if err != nil {
		return 0, 0, err
	}
	if int(i) >= len(b.rings) || i > vringIndexMask {
		return 0, 0, fmt.Errorf("%w: %s for queue %d of %d", ErrProtocol, requestName(req), i, len(b.rings))
	}
	return int(i), num, nil
}

// watchKick forwards driver notifications on a kick eventfd to the device
// until the file is closed.
func (b *Backend) watchKick(f *os.File, i int) {
	var buf [8]byte
	for {
		if _, err := f.Read(buf[:]); err != nil {
			return
		}
		b.dev.Kick(i)
	}
}

func u64Bytes(v uint64) []byte {
	out := make([]byte, 8)
	binary.LittleEndian.PutUint64(out, v)
	return out
}

func writeReply(conn *net.UnixConn, req uint32, payload []byte) error {
	msg := make([]byte, headerSize+len(payload))
	header{Request: req, Flags: FlagVersion | FlagReply, Size: uint32(len(payload))}.encode(msg)
	copy(msg[headerSize:], payload)
	_, err := conn.Write(msg)
	return err
}

// readMsg reads one message (header, payload and any file descriptors)
// into buf.
func readMsg(conn *net.UnixConn, buf []byte) (header, []byte, []int, error) {
	fds, err := readFull(conn, buf[:headerSize], nil)
	if err != nil {
		closeAll(fds)
		return header{}, nil, nil, err
	}
	h := parseHeader(buf)
	if err := checkHeader(h); err != nil {
		closeAll(fds)
		return header{}, nil, nil, err
	}
	p := buf[headerSize : headerSize+int(h.Size)]
	if fds, err = readFull(conn, p, fds); err != nil {
		closeAll(fds)
		if errors.Is(err, io.EOF) {
			err = fmt.Errorf("%w: connection closed inside a message", ErrProtocol)
		}
		return header{}, nil, nil, err
	}
	return h, p, fds, nil
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// readFull fills p from conn, collecting SCM_RIGHTS file descriptors.
func readFull(conn *net.UnixConn, p []byte, fds []int) ([]int, error) {
	oob := make([]byte, unix.CmsgSpace(4*maxFDs))
	for n := 0; n < len(p); {
		k, oobn, flags, _, err := conn.ReadMsgUnix(p[n:], oob)
		if oobn > 0 {
			msgs, perr := unix.ParseSocketControlMessage(oob[:oobn])
			for _, m := range msgs {
				if got, err := unix.ParseUnixRights(&m); err == nil {
					fds = append(fds, got...)
				}
			}
			if perr != nil {
				return fds, fmt.Errorf("%w: control message: %w", ErrProtocol, perr)
			}
		}
		if flags&unix.MSG_CTRUNC != 0 || len(fds) > maxFDs {
			return fds, fmt.Errorf("%w: more than %d fds in one message", ErrProtocol, maxFDs)
		}
		n += k
		if err != nil {
			return fds, err
		}
		if k == 0 {
			return fds, io.EOF
		}
	}
	return fds, nil
}
