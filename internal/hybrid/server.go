package hybrid

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// Connector opens the enclave side of host-initiated connections for a
// [Server].
type Connector interface {
	// ConnectGuest opens the enclave side of a host-initiated connection to
	// the enclave's port. An error of class ErrNoListener means nobody
	// listens there. ctx bounds the attempt.
	ConnectGuest(ctx context.Context, port uint32) (net.Conn, error)
}

// UnixConnector is the sandbox world's [Connector]: the enclave's listeners
// are Unix sockets "vsock_<port>" in its listener directory (Root, or Dir).
//
// Everything in that directory is the enclave's, and the connector runs as
// root on the host: it never follows a link there. It opens "vsock_<port>"
// with O_PATH|O_NOFOLLOW relative to the directory, requires a socket on
// the directory's own file system (a symbolic link, FIFO, directory or
// regular file is class [ErrNoListener]), and connects to that inode
// through /proc/self/fd (Linux only). An enclave that names a host socket
// with a link therefore gets no connection, and no client socket, through
// it.
type UnixConnector struct {
	// Dir is the path of the listener directory. It is resolved as given
	// (links included) on every connection, so it must be the daemon's own
	// path (a directory like D/guest): only what is below it belongs to
	// the enclave.
	Dir string
	// Root, when non-nil, is an open descriptor of the listener directory
	// (O_PATH is enough) and is used instead of Dir. The sandbox backend
	// passes its enclave's private tmpfs this way: it has no host path.
	Root *os.File
}

// ConnectGuest connects to the enclave's "vsock_<port>" and writes
// [MarkerRelay], so the enclave's listener (see [ListenGuest]) reads the
// connection itself as the stream. A missing socket, a name that is not a
// socket, or a refused connection is class [ErrNoListener]; ctx's deadline
// gives [ErrTimeout]. The result is a *net.UnixConn, which the [Server]
// splices without copying through user space. The [Server] prefers
// [UnixConnector.Handoff], which needs no relay.
func (u UnixConnector) ConnectGuest(ctx context.Context, port uint32) (net.Conn, error) {
	c, err := u.dial(ctx, port)
	if err != nil {
		return nil, err
	}
	if err := SendRelay(c); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Server defaults.
const (
	// DefaultMaxConns is Firecracker's MAX_CONNECTIONS.
	DefaultMaxConns = 1023
	// DefaultHandshakeTimeout bounds reading a request and connecting the
	// guest when Server.HandshakeTimeout is zero.
	DefaultHandshakeTimeout = 5 * time.Second
	// FirstHostPort is the first host-side port the server allocates
	// (Firecracker allocates round-robin in [1<<30, 1<<31)).
	FirstHostPort uint32 = 1 << 30
)

// Server serves a hybrid-vsock CONNECT socket, the host → enclave direction.
// For each accepted connection it reads the request "CONNECT <port>\n" one
// byte at a time (so bytes the client sends right after the '\n' stay in the
// stream), waiting for a request split over several writes until
// HandshakeTimeout; asks the Connector for the enclave side; answers
// "OK <hostport>\n" with a host port allocated round-robin from
// [FirstHostPort] (like Firecracker); then relays both directions until both
// are finished. If the Connector implements [Handoff] (as [UnixConnector]
// does) and the client is a *net.UnixConn, the Server asks it to hand the
// client's socket to the enclave instead, and relays nothing: after a
// successful handoff the Server's part in the connection is over (it
// survives the end of Serve). End of stream in one direction is forwarded as a half-close
// (CloseWrite) and the other direction keeps flowing; an error in either
// direction closes both. A malformed request, a failed Connector or an
// expired handshake closes the client connection without sending a byte,
// which clients read as "nobody listening". Connections beyond MaxConns are
// accepted and closed at once. Between two Unix sockets the relay uses
// splice(2) through a pipe, so payload bytes never enter user space.
//
// The fields must not change while Serve runs; a Server may serve several
// listeners at once.
type Server struct {
	// Connector reaches the enclave side; required.
	Connector Connector
	// Logger receives per-connection diagnostics at debug level and
	// accept failures at warn level; nil discards them.
	Logger *slog.Logger
	// MaxConns bounds the concurrent connections (handshakes and relayed
	// connections; a handed-off connection stops counting once handed
	// off); zero means DefaultMaxConns.
	MaxConns int
	// HandshakeTimeout bounds reading the request plus connecting the
	// guest; zero means DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration

	mu       sync.Mutex
	nextPort uint32
	inUse    map[uint32]struct{}
}

// Serve accepts connections on l and serves them until ctx ends or Accept
// fails with a permanent error. When ctx ends it closes l and every active
// connection, waits for their goroutines, and returns nil. Otherwise it
// returns the Accept error (after the same cleanup). Transient Accept errors
// (out of file descriptors or memory, aborted connections) are retried with
// a short backoff.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	if s.Connector == nil {
		return errors.New("hybrid: Server.Connector is nil")
	}
	log := s.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	maxConns := s.MaxConns
	if maxConns <= 0 {
		maxConns = DefaultMaxConns
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()

	sem := make(chan struct{}, maxConns)
	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if isTransientAccept(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				log.Warn("hybrid: accept failed, retrying", "err", err, "in", backoff)
				select {
				case <-time.After(backoff):
					continue
				case <-ctx.Done():
					return nil
				}
			}
			return fmt.Errorf("hybrid: serve: accept: %w", err)
		}
		backoff = 0
		select {
		case sem <- struct{}{}:
		default:
			log.Debug("hybrid: too many connections, closing new one", "max", maxConns)
			c.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			s.handle(ctx, c, log)
		}()
	}
}

func isTransientAccept(err error) bool {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED, syscall.EINTR} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// handle serves one client connection c.
func (s *Server) handle(ctx context.Context, c net.Conn, log *slog.Logger) {
	var (
		mu     sync.Mutex
		guest  net.Conn
		closed bool
	)
	closeAll := func() {
		mu.Lock()
		defer mu.Unlock()
		closed = true
		c.Close()
		if guest != nil {
			guest.Close()
		}
	}
	defer closeAll()
	stop := context.AfterFunc(ctx, closeAll)
	defer stop()

	hto := s.HandshakeTimeout
	if hto <= 0 {
		hto = DefaultHandshakeTimeout
	}
	deadline := time.Now().Add(hto)
	if err := c.SetDeadline(deadline); err != nil {
		return
	}
	line, err := ReadLine(c)
	if err != nil {
		log.Debug("hybrid: bad request", "err", err)
		return
	}
	port, err := ParseConnect(line)
	if err != nil {
		log.Debug("hybrid: bad request", "line", string(line), "err", err)
		return
	}
	cctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	if h, ok := s.Connector.(Handoff); ok {
		if uc, ok := c.(*net.UnixConn); ok {
			hostPort := s.allocPort()
			err := h.Handoff(cctx, port, uc, AppendOK(make([]byte, 0, MaxLineLen), hostPort))
			s.freePort(hostPort)
			if err == nil {
				log.Debug("hybrid: handed off", "port", port, "hostport", hostPort)
				return
			}
			if !errors.Is(err, ErrHandoffUnsupported) {
				log.Debug("hybrid: handoff failed", "port", port, "err", err)
				return
			}
		}
	}
	g, err := s.Connector.ConnectGuest(cctx, port)
	cancel()
	if err != nil {
		log.Debug("hybrid: cannot reach enclave port", "port", port, "err", err)
		return
	}
	mu.Lock()
	if closed {
		mu.Unlock()
		g.Close()
		return
	}
	guest = g
	mu.Unlock()

	hostPort := s.allocPort()
	defer s.freePort(hostPort)
	if _, err := c.Write(AppendOK(make([]byte, 0, MaxLineLen), hostPort)); err != nil {
		log.Debug("hybrid: writing OK failed", "port", port, "err", err)
		return
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		return
	}
	log.Debug("hybrid: connected", "port", port, "hostport", hostPort)

	done := make(chan struct{})
	go func() {
		defer close(done)
		s.pipe(g, c, closeAll)
	}()
	s.pipe(c, g, closeAll)
	<-done
}

// pipe copies src to dst; at end of stream it half-closes dst, on error it
// closes everything.
func (s *Server) pipe(dst, src net.Conn, closeAll func()) {
	_, err := relay(dst, src)
	if err != nil {
		closeAll()
		return
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		if cw.CloseWrite() == nil {
			return
		}
	}
	closeAll()
}

// allocPort returns the next free host port, round-robin in
// [FirstHostPort, 1<<31).
func (s *Server) allocPort() uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inUse == nil {
		s.inUse = make(map[uint32]struct{})
	}
	for {
		p := s.nextPort
		if p < FirstHostPort || p >= 1<<31 {
			p = FirstHostPort
		}
		s.nextPort = p + 1
		if _, busy := s.inUse[p]; !busy {
			s.inUse[p] = struct{}{}
			return p
		}
	}
}

func (s *Server) freePort(p uint32) {
	s.mu.Lock()
	delete(s.inUse, p)
	s.mu.Unlock()
}
