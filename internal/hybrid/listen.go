package hybrid

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/mdlayher/vsock"
)

// maxPathLen is the longest Unix socket path Linux accepts (sun_path is 108
// bytes including the terminating NUL).
const maxPathLen = 107

// HostPath returns the Firecracker-style path of the host listener for
// enclave-initiated connections to (CID 3, port): "<base>_<port>".
func HostPath(base string, port uint32) string {
	return base + "_" + strconv.FormatUint(uint64(port), 10)
}

// Listener accepts vsock connections carried by a Unix socket. Accepted
// connections are [*Conn] with LocalAddr = the listener's address and
// RemoteAddr = (peer CID, the listener's port): the Unix emulation carries no
// source port, so the service port stands in for it.
type Listener struct {
	// MarkerTimeout bounds, for a listener made by [ListenGuest], how long
	// Accept waits for one connection's marker; zero means
	// [DefaultMarkerTimeout]. Set it before the first Accept.
	MarkerTimeout time.Duration

	ul      *net.UnixListener
	guest   bool // ListenGuest: read a marker first
	addr    *vsock.Addr
	peerCID uint32
	path    string
}

var _ net.Listener = (*Listener)(nil)

// Listen creates the host-side listener "<base>_<port>" (see [HostPath]) for
// the connections an enclave opens to (CID 3, port). The socket file is made
// mode 0666 so an enclave running under any uid can connect; access control
// is the job of the enclave directory's permissions. A stale socket file is
// removed as described in [ListenUnix]. The listener's address is
// (ParentCID, port) and accepted connections report AnyCID as the peer CID;
// use a [Registry] or [ListenUnix] to report the enclave's CID. Close removes
// the socket file.
func Listen(base string, port uint32) (*Listener, error) {
	return listenHost(base, port, AnyCID)
}

func listenHost(base string, port, peerCID uint32) (*Listener, error) {
	l, err := ListenUnix(HostPath(base, port), &vsock.Addr{ContextID: ParentCID, Port: port}, peerCID)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(l.path, 0o666); err != nil {
		l.Close()
		return nil, &net.OpError{Op: "listen", Net: "vsock", Addr: l.addr, Err: err}
	}
	return l, nil
}

// ListenUnix listens on the Unix socket path for vsock connections to local;
// accepted connections report (peerCID, local.Port) as their remote address.
// If path exists: a socket nobody accepts on (connect gives ECONNREFUSED) is
// stale and removed; a socket somebody accepts on fails with an error
// wrapping syscall.EADDRINUSE (the probe connection is closed at once); any
// other file type is left alone and fails with an error wrapping
// fs.ErrExist. Paths longer than 107 bytes fail with syscall.ENAMETOOLONG.
// Errors are *net.OpError (Op "listen", Net "vsock").
func ListenUnix(path string, local *vsock.Addr, peerCID uint32) (*Listener, error) {
	addr := *local
	fail := func(err error) (*Listener, error) {
		return nil, &net.OpError{Op: "listen", Net: "vsock", Addr: &addr, Err: err}
	}
	if len(path) > maxPathLen {
		return fail(fmt.Errorf("socket path %q is %d bytes, longer than %d: %w", path, len(path), maxPathLen, syscall.ENAMETOOLONG))
	}
	if err := removeStale(path); err != nil {
		return fail(err)
	}
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return fail(err)
	}
	return &Listener{ul: ul, addr: &addr, peerCID: peerCID, path: path}, nil
}

// removeStale deletes path if it is a Unix socket nobody accepts on.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket, not removing it: %w", path, fs.ErrExist)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("%s is in use by a live listener: %w", path, syscall.EADDRINUSE)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("%s exists and cannot be probed (%w): %w", path, err, syscall.EADDRINUSE)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing stale socket: %w", err)
	}
	return nil
}

// Accept waits for the next connection; it returns a [*Conn].
func (l *Listener) Accept() (net.Conn, error) {
	c, err := l.AcceptVsock()
	if err != nil {
		return nil, err
	}
	return c, nil
}

// AcceptVsock is Accept with the concrete result type.
func (l *Listener) AcceptVsock() (*Conn, error) {
	for {
		uc, err := l.ul.AcceptUnix()
		if err != nil {
			return nil, opError("accept", err, l.addr, nil)
		}
		if !l.guest {
			return NewConn(uc, l.addr, &vsock.Addr{ContextID: l.peerCID, Port: l.addr.Port}), nil
		}
		sc, err := l.receiveMarker(uc)
		if err != nil {
			uc.Close()
			continue
		}
		return NewConn(sc, l.addr, &vsock.Addr{ContextID: l.peerCID, Port: l.addr.Port}), nil
	}
}

// Addr returns the listener's vsock address (*vsock.Addr).
func (l *Listener) Addr() net.Addr { return l.addr }

// Path returns the listener's Unix socket path.
func (l *Listener) Path() string { return l.path }

// SetDeadline sets a deadline for Accept.
func (l *Listener) SetDeadline(t time.Time) error { return l.ul.SetDeadline(t) }

// Close stops listening and removes the socket file. Connections already
// accepted stay open.
func (l *Listener) Close() error {
	if err := l.ul.Close(); err != nil {
		return opError("close", err, l.addr, nil)
	}
	return nil
}

// Registry is the set of host listeners of one enclave (heartbeat, NSM,
// egress proxy, user ports), keyed by port. Its zero value is usable once
// Base is set; it is safe for concurrent use. Base and PeerCID must not
// change after the first Open.
type Registry struct {
	// Base is the Firecracker-style uds_path, e.g. "<D>/host/vsock";
	// listeners are "<Base>_<port>".
	Base string
	// PeerCID is the enclave's CID, reported as the remote CID of accepted
	// connections. Zero means AnyCID.
	PeerCID uint32

	mu sync.Mutex
	ls map[uint32]*Listener
}

// Open creates the listener for port (see [Listen]) and records it. Opening
// a port that is already open fails with an error wrapping
// syscall.EADDRINUSE.
func (r *Registry) Open(port uint32) (*Listener, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.ls[port]; ok {
		return nil, &net.OpError{Op: "listen", Net: "vsock", Addr: &vsock.Addr{ContextID: ParentCID, Port: port},
			Err: fmt.Errorf("port already open in this registry: %w", syscall.EADDRINUSE)}
	}
	peer := r.PeerCID
	if peer == 0 {
		peer = AnyCID
	}
	l, err := listenHost(r.Base, port, peer)
	if err != nil {
		return nil, err
	}
	if r.ls == nil {
		r.ls = make(map[uint32]*Listener)
	}
	r.ls[port] = l
	return l, nil
}

// Listener returns the open listener for port, or nil.
func (r *Registry) Listener(port uint32) *Listener {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ls[port]
}

// Ports returns the open ports in increasing order.
func (r *Registry) Ports() []uint32 {
	r.mu.Lock()
	defer r.mu.Unlock()
	ports := make([]uint32, 0, len(r.ls))
	for p := range r.ls {
		ports = append(ports, p)
	}
	slices.Sort(ports)
	return ports
}

// Close closes the listener for port and forgets it. Closing a port that is
// not open returns an error wrapping fs.ErrNotExist.
func (r *Registry) Close(port uint32) error {
	r.mu.Lock()
	l, ok := r.ls[port]
	delete(r.ls, port)
	r.mu.Unlock()
	if !ok {
		return fmt.Errorf("hybrid: close port %d: not open: %w", port, fs.ErrNotExist)
	}
	return l.Close()
}

// CloseAll closes every listener and empties the registry; it returns all
// close errors joined.
func (r *Registry) CloseAll() error {
	r.mu.Lock()
	ls := r.ls
	r.ls = nil
	r.mu.Unlock()
	var errs []error
	for _, l := range ls {
		if err := l.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
