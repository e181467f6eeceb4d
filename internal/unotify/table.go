package unotify

import (
	"sync"
)

// sockState is where an emulated socket is in its life, as Linux's vsock
// tracks it.
type sockState int

const (
	stateUnbound    sockState = iota // fresh from socket()
	stateBound                       // bind() done
	stateListening                   // listen() done
	stateConnecting                  // connect() waits for the parent's backlog
	stateConnected                   // connect() done, or accepted
	stateDisconnect                  // shutdown() on a connected socket
)

// vsock is one emulated AF_VSOCK socket: a Unix stream socket that the
// supervisor made (socket, accepted connections) and the program holds.
// It is known by its socket cookie (SO_COOKIE), which the kernel never
// reuses, and its inode (for sock_diag).
type vsock struct {
	cookie uint64
	ino    uint64
	hostNS bool // lives in this process's network namespace (accepted from the parent)

	mu     sync.Mutex // guards everything below
	state  sockState
	local  SockaddrVM // VMADDR_CID_ANY/VMADDR_PORT_ANY until bound
	remote SockaddrVM // as given to connect (Linux reports it back as is)
	// bound is set when local.Port is reserved in the port table;
	// hasFile when the socket is bound as vsock_<port> in the listener
	// directory (bind does it, a connect's automatic bind does not).
	bound, hasFile bool
	// AF_VSOCK-level options (SO_VM_SOCKETS_*).
	bufSize, bufMin, bufMax uint64
	connectTimeoutMS        int64
	// done is the last bind or connect made on the socket, and lost
	// whether its caller was interrupted before hearing of its success
	// (see [vsock.replays]).
	done lastCall
	lost bool

	// acceptMu serialises the supervisor's accepts on a listener, so that
	// an accept that found a connection pending never blocks.
	acceptMu sync.Mutex
}

// Defaults of a new vsock socket (net/vmw_vsock/af_vsock.c).
const (
	defaultBufSize          = 256 << 10
	defaultBufMin           = 128
	defaultBufMax           = 256 << 10
	defaultConnectTimeoutMS = 2000
)

func newVsock(cookie, ino uint64, hostNS bool) *vsock {
	return &vsock{
		cookie: cookie, ino: ino, hostNS: hostNS,
		local:   NewSockaddrVM(CIDAny, PortAny),
		bufSize: defaultBufSize, bufMin: defaultBufMin, bufMax: defaultBufMax,
		connectTimeoutMS: defaultConnectTimeoutMS,
	}
}

// table holds the emulated sockets of one sandbox and the vsock ports
// they have bound.
type table struct {
	mu    sync.Mutex
	socks map[uint64]*vsock // by cookie
	ports map[uint32]uint64 // bound port → cookie
	next  uint32            // next ephemeral port candidate
}

func newTable(seed uint32) *table {
	return &table{socks: make(map[uint64]*vsock), ports: make(map[uint32]uint64), next: seed}
}

func (t *table) get(cookie uint64) *vsock {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.socks[cookie]
}

func (t *table) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.socks)
}

// add records s; it reports false if a socket with its cookie is known.
func (t *table) add(s *vsock) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.socks[s.cookie]; ok {
		return false
	}
	t.socks[s.cookie] = s
	return true
}

// remove forgets s and frees its port.
func (t *table) remove(s *vsock) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.socks[s.cookie] == s {
		delete(t.socks, s.cookie)
	}
	for p, c := range t.ports {
		if c == s.cookie {
			delete(t.ports, p)
		}
	}
}

// all returns the known sockets.
func (t *table) all() []*vsock {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]*vsock, 0, len(t.socks))
	for _, s := range t.socks {
		out = append(out, s)
	}
	return out
}

// portOwner returns the socket that holds port, if any.
func (t *table) portOwner(port uint32) *vsock {
	t.mu.Lock()
	defer t.mu.Unlock()
	if c, ok := t.ports[port]; ok {
		return t.socks[c]
	}
	return nil
}

// reserve gives port to s; it reports false when port is taken.
func (t *table) reserve(port uint32, s *vsock) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if c, ok := t.ports[port]; ok && t.socks[c] != nil {
		return false
	}
	t.ports[port] = s.cookie
	return true
}

// release frees port if s holds it.
func (t *table) release(port uint32, s *vsock) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ports[port] == s.cookie {
		delete(t.ports, port)
	}
}

// lastReservedPort is LAST_RESERVED_PORT: ephemeral ports are above it.
const lastReservedPort = 1023

// ephemeral reserves a free port above 1023 for s, as Linux's vsock
// autobind does (a counter from a random start, 24 tries), and returns
// it; false when none was free.
func (t *table) ephemeral(s *vsock) (uint32, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for range 24 {
		if t.next <= lastReservedPort || t.next == PortAny {
			t.next = lastReservedPort + 1
		}
		p := t.next
		t.next++
		if c, ok := t.ports[p]; !ok || t.socks[c] == nil {
			t.ports[p] = s.cookie
			return p, true
		}
	}
	return 0, false
}

// lastCall is a bind or connect: the calling thread, the call and its
// address argument.
type lastCall struct {
	tid  uint32
	nr   int32
	addr string
}

// replays reports whether call nr by thread tid with address raw is the
// bind or connect just made on v being made again because a signal
// interrupted the caller before it heard of its success (Go's signal
// handlers restart calls: SA_RESTART); it is then answered with that
// success instead of being made twice, which would find the socket bound
// (EINVAL) or connected (EISCONN). It is a replay when the supervisor saw
// the answer lost, or, with repeat (bind), when the same thread makes the
// same call as its next one on v: the kernel can also restart a call
// after taking its answer (a signal that woke the caller just before the
// answer did), and no answer is lost then as far as the supervisor can
// see. So a program that binds a socket to the same address twice in a
// row (EINVAL on Linux) is told 0 the second time. v.mu is held.
func (v *vsock) replays(tid uint32, nr int32, raw []byte, repeat bool) bool {
	c := lastCall{tid: tid, nr: nr, addr: string(raw)}
	replay := v.done.nr != 0 && v.done == c && (v.lost || repeat)
	v.done, v.lost = lastCall{}, false
	return replay
}

// otherCall notes a call on v other than a bind or connect: a bind made
// again after it is no longer a repeat (an answer known lost still is).
// v.mu is held.
func (v *vsock) otherCall() {
	if !v.lost {
		v.done = lastCall{}
	}
}

// succeeded is the answer to the bind or connect that v has just made by
// thread tid: 0, and the call remembered for [vsock.replays].
func (v *vsock) succeeded(tid uint32, nr int32, raw []byte) answer {
	v.done, v.lost = lastCall{tid: tid, nr: nr, addr: string(raw)}, false
	a := ret(0)
	a.lost = func() {
		v.mu.Lock()
		if v.done.nr == nr && v.done.tid == tid {
			v.lost = true
		}
		v.mu.Unlock()
	}
	return a
}
