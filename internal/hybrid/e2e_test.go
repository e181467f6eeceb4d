package hybrid_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cloister/cloister/internal/hybrid"
	"github.com/cloister/cloister/internal/transport"
	"github.com/google/go-cmp/cmp"
	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"
)

func ctxFor(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func addrOf(a net.Addr) vsock.Addr {
	if v, ok := a.(*vsock.Addr); ok {
		return *v
	}
	return vsock.Addr{ContextID: 0xDEAD, Port: 0xDEAD}
}

// TestHostToEnclave: host hybrid.Dial → Server → UnixConnector → enclave
// transport.Listen, data both ways, vsock addresses on both ends.
func TestHostToEnclave(t *testing.T) {
	w := newWorld(t, nil)
	l := w.guestListen(t, 5005)
	if diff := cmp.Diff(vsock.Addr{ContextID: enclaveCID, Port: 5005}, addrOf(l.Addr())); diff != "" {
		t.Errorf("listener Addr (-want +got):\n%s", diff)
	}
	accepted := acceptOne(l)
	hc, err := hybrid.Dial(ctxFor(t, 10*time.Second), w.sock, 5005, dialCfg())
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	gc := <-accepted
	defer gc.Close()

	if diff := cmp.Diff(vsock.Addr{ContextID: hybrid.ParentCID, Port: hybrid.FirstHostPort}, addrOf(hc.LocalAddr())); diff != "" {
		t.Errorf("host LocalAddr (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(vsock.Addr{ContextID: enclaveCID, Port: 5005}, addrOf(hc.RemoteAddr())); diff != "" {
		t.Errorf("host RemoteAddr (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(vsock.Addr{ContextID: enclaveCID, Port: 5005}, addrOf(gc.LocalAddr())); diff != "" {
		t.Errorf("enclave LocalAddr (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(vsock.Addr{ContextID: hybrid.ParentCID, Port: 5005}, addrOf(gc.RemoteAddr())); diff != "" {
		t.Errorf("enclave RemoteAddr (-want +got):\n%s", diff)
	}

	exchange(t, hc, gc)
}

// exchange checks that a and b are connected both ways.
func exchange(t *testing.T, a, b net.Conn) {
	t.Helper()
	for _, dir := range []struct {
		from, to net.Conn
		msg      string
	}{{a, b, "ping"}, {b, a, "pong"}} {
		if _, err := dir.from.Write([]byte(dir.msg)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(dir.msg))
		if _, err := io.ReadFull(dir.to, buf); err != nil {
			t.Fatal(err)
		}
		if string(buf) != dir.msg {
			t.Fatalf("got %q, want %q", buf, dir.msg)
		}
	}
}

// TestEnclaveToHost: enclave transport.Dial(3, 9000) → host listener from a
// Registry; the boot heartbeat exchange.
func TestEnclaveToHost(t *testing.T) {
	w := newWorld(t, nil)
	reg := &hybrid.Registry{Base: w.hostBase(), PeerCID: enclaveCID}
	defer reg.CloseAll()
	l, err := reg.Open(9000)
	if err != nil {
		t.Fatal(err)
	}
	accepted := acceptOne(l)
	ec, err := transport.Dial(ctxFor(t, 10*time.Second), hybrid.ParentCID, 9000, w.tcfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ec.Close()
	hc := <-accepted
	defer hc.Close()

	want := map[string]vsock.Addr{
		"enclave local":  {ContextID: enclaveCID, Port: 9000},
		"enclave remote": {ContextID: hybrid.ParentCID, Port: 9000},
		"host local":     {ContextID: hybrid.ParentCID, Port: 9000},
		"host remote":    {ContextID: enclaveCID, Port: 9000},
	}
	got := map[string]vsock.Addr{
		"enclave local":  addrOf(ec.LocalAddr()),
		"enclave remote": addrOf(ec.RemoteAddr()),
		"host local":     addrOf(hc.LocalAddr()),
		"host remote":    addrOf(hc.RemoteAddr()),
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("addresses (-want +got):\n%s", diff)
	}

	// Heartbeat: enclave writes 0xB7, host echoes it.
	if _, err := ec.Write([]byte{0xB7}); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := io.ReadFull(hc, b); err != nil || b[0] != 0xB7 {
		t.Fatalf("host read %x, %v", b, err)
	}
	if _, err := hc.Write(b); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(ec, b); err != nil || b[0] != 0xB7 {
		t.Fatalf("enclave read %x, %v", b, err)
	}
	exchange(t, ec, hc)
}

// TestConcurrentConnections holds 128 host → enclave and 128 enclave → host
// connections open at the same time, each carrying its own message.
func TestConcurrentConnections(t *testing.T) {
	const n = 128
	w := newWorld(t, nil)
	go echo(w.guestListen(t, 7000))
	hl, err := hybrid.Listen(w.hostBase(), 7001)
	if err != nil {
		t.Fatal(err)
	}
	defer hl.Close()
	go echo(hl)

	ctx := ctxFor(t, 60*time.Second)
	var opened sync.WaitGroup // every connection is open before any is used
	opened.Add(2 * n)
	allOpen := make(chan struct{})
	go func() { opened.Wait(); close(allOpen) }()
	errs := make(chan error, 2*n)
	var hostPorts sync.Map
	for i := range 2 * n {
		go func() {
			var c net.Conn
			var err error
			if i%2 == 0 {
				var hc *hybrid.Conn
				hc, err = hybrid.Dial(ctx, w.sock, 7000, dialCfg())
				if err == nil {
					if _, dup := hostPorts.LoadOrStore(addrOf(hc.LocalAddr()).Port, i); dup {
						err = fmt.Errorf("host port %d allocated twice", addrOf(hc.LocalAddr()).Port)
					}
				}
				c = hc
			} else {
				c, err = transport.Dial(ctx, hybrid.ParentCID, 7001, w.tcfg)
			}
			opened.Done()
			if err != nil {
				errs <- fmt.Errorf("conn %d: dial: %w", i, err)
				return
			}
			defer c.Close()
			<-allOpen
			msg := fmt.Appendf(nil, "message %d from connection %d", i*i, i)
			if _, err := c.Write(msg); err != nil {
				errs <- fmt.Errorf("conn %d: write: %w", i, err)
				return
			}
			if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
				errs <- fmt.Errorf("conn %d: CloseWrite: %w", i, err)
				return
			}
			got, err := io.ReadAll(c)
			if err != nil {
				errs <- fmt.Errorf("conn %d: read: %w", i, err)
				return
			}
			if !bytes.Equal(got, msg) {
				errs <- fmt.Errorf("conn %d: got %q, want %q", i, got, msg)
				return
			}
			errs <- nil
		}()
	}
	for range 2 * n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

// TestHalfClose: the client half-closes after its request and still reads
// the reply, in both directions.
func TestHalfClose(t *testing.T) {
	w := newWorld(t, nil)
	reverse := func(l net.Listener) {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		req, err := io.ReadAll(c) // until the client's CloseWrite
		if err != nil {
			return
		}
		for i, j := 0, len(req)-1; i < j; i, j = i+1, j-1 {
			req[i], req[j] = req[j], req[i]
		}
		c.Write(req)
	}
	go reverse(w.guestListen(t, 7100))
	hl, err := hybrid.Listen(w.hostBase(), 7101)
	if err != nil {
		t.Fatal(err)
	}
	defer hl.Close()
	go reverse(hl)

	dials := map[string]func() (net.Conn, error){
		"host to enclave": func() (net.Conn, error) {
			return hybrid.Dial(ctxFor(t, 10*time.Second), w.sock, 7100, dialCfg())
		},
		"enclave to host": func() (net.Conn, error) {
			return transport.Dial(ctxFor(t, 10*time.Second), hybrid.ParentCID, 7101, w.tcfg)
		},
	}
	for name, dial := range dials {
		t.Run(name, func(t *testing.T) {
			c, err := dial()
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write([]byte("hello, enclave")); err != nil {
				t.Fatal(err)
			}
			if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(c)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != "evalcne ,olleh" {
				t.Fatalf("reply %q", got)
			}
		})
	}
}

// TestLargeTransfer sends 64 MiB each way at the same time through the
// Server's relay and compares SHA-256 digests.
func TestLargeTransfer(t *testing.T) {
	const size = 64 << 20
	w := newWorld(t, nil)
	l := w.guestListen(t, 7200)
	accepted := acceptOne(l)
	hc, err := hybrid.Dial(ctxFor(t, 10*time.Second), w.sock, 7200, dialCfg())
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	gc := <-accepted
	defer gc.Close()

	type result struct {
		sent, received [sha256.Size]byte
		err            error
	}
	run := func(c net.Conn, seed uint64) <-chan result {
		ch := make(chan result, 1)
		go func() {
			var r result
			var wg sync.WaitGroup
			wg.Go(func() {
				h := sha256.New()
				src := io.LimitReader(rand.NewChaCha8([32]byte{byte(seed)}), size)
				if _, err := io.Copy(io.MultiWriter(c, h), src); err != nil {
					r.err = err
					return
				}
				copy(r.sent[:], h.Sum(nil))
				if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
					r.err = err
				}
			})
			h := sha256.New()
			n, err := io.Copy(h, c)
			wg.Wait()
			if err == nil && n != size {
				err = fmt.Errorf("received %d bytes, want %d", n, size)
			}
			if err != nil && r.err == nil {
				r.err = err
			}
			copy(r.received[:], h.Sum(nil))
			ch <- r
		}()
		return ch
	}
	hr, gr := run(hc, 1), run(gc, 2)
	h, g := <-hr, <-gr
	if h.err != nil || g.err != nil {
		t.Fatalf("host: %v, enclave: %v", h.err, g.err)
	}
	if h.sent != g.received {
		t.Errorf("host → enclave: digest mismatch")
	}
	if g.sent != h.received {
		t.Errorf("enclave → host: digest mismatch")
	}
}

// TestDialNeverAnswers: a CONNECT socket that accepts and reads but never
// replies; the context deadline ends Dial with ErrTimeout.
func TestDialNeverAnswers(t *testing.T) {
	dir := shortDir(t)
	l, err := net.Listen("unix", dir+"/silent.sock")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var held sync.WaitGroup
	defer held.Wait()
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			held.Go(func() { io.Copy(io.Discard, c); c.Close() })
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	c, err := hybrid.Dial(ctx, dir+"/silent.sock", 5, nil)
	if c != nil {
		t.Fatal("Dial returned a connection with an error")
	}
	wantClass(t, err, hybrid.ErrTimeout)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error %v does not wrap context.DeadlineExceeded", err)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("error %v is not a net.Error with Timeout() true", err)
	}
}

// TestDialHandshakeTimeoutRetried: each attempt is bounded by
// HandshakeTimeout and a silent attempt is retried; the last class is
// ErrTimeout.
func TestDialHandshakeTimeoutRetried(t *testing.T) {
	dir := shortDir(t)
	l, err := net.Listen("unix", dir+"/silent.sock")
	if err != nil {
		t.Fatal(err)
	}
	var accepts atomic.Int32
	var held sync.WaitGroup
	defer held.Wait()
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepts.Add(1)
			held.Go(func() { io.Copy(io.Discard, c); c.Close() })
		}
	}()
	_, err = hybrid.Dial(context.Background(), dir+"/silent.sock", 5,
		&hybrid.DialConfig{HandshakeTimeout: 20 * time.Millisecond, MaxAttempts: 3})
	wantClass(t, err, hybrid.ErrTimeout)
	if n := accepts.Load(); n != 3 {
		t.Errorf("server saw %d attempts, want 3", n)
	}
}

// TestDialReset: the peer resets the connection during the handshake.
func TestDialReset(t *testing.T) {
	dir := shortDir(t)
	l, err := net.Listen("unix", dir+"/reset.sock")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			// Wait until the request is queued, then close without reading
			// it: the unread data turns the close into a reset for the client.
			peek(c)
			c.Close()
		}
	}()
	_, err = hybrid.Dial(ctxFor(t, 10*time.Second), dir+"/reset.sock", 5, &hybrid.DialConfig{MaxAttempts: 2})
	wantClass(t, err, hybrid.ErrReset)
}

// peek blocks until c has data to read, without consuming it.
func peek(c net.Conn) {
	rc, err := c.(*net.UnixConn).SyscallConn()
	if err != nil {
		return
	}
	buf := make([]byte, 1)
	rc.Read(func(fd uintptr) bool {
		_, _, err := unix.Recvfrom(int(fd), buf, unix.MSG_PEEK)
		return err != unix.EAGAIN
	})
}

// TestResetDuringStream: the host listener closes with unread data; the
// enclave's read reports ErrReset.
func TestResetDuringStream(t *testing.T) {
	w := newWorld(t, nil)
	hl, err := hybrid.Listen(w.hostBase(), 7300)
	if err != nil {
		t.Fatal(err)
	}
	defer hl.Close()
	accepted := acceptOne(hl)
	ec, err := transport.Dial(ctxFor(t, 10*time.Second), hybrid.ParentCID, 7300, w.tcfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ec.Close()
	hc := <-accepted
	if _, err := ec.Write([]byte("never read")); err != nil {
		t.Fatal(err)
	}
	hc.Close()
	_, err = ec.Read(make([]byte, 1))
	wantClass(t, err, hybrid.ErrReset)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("error %v does not wrap ECONNRESET", err)
	}
}

// TestNoListener covers the ways "nobody listening" shows.
func TestNoListener(t *testing.T) {
	w := newWorld(t, nil)
	t.Run("no guest listener, one attempt", func(t *testing.T) {
		_, err := hybrid.Dial(ctxFor(t, 10*time.Second), w.sock, 4242, &hybrid.DialConfig{MaxAttempts: 1})
		wantClass(t, err, hybrid.ErrNoListener)
	})
	t.Run("no guest listener, retried until the deadline", func(t *testing.T) {
		// Long enough for at least one attempt to complete even on a
		// loaded machine, so the last attempt's class is reported.
		_, err := hybrid.Dial(ctxFor(t, 2*time.Second), w.sock, 4242, nil)
		wantClass(t, err, hybrid.ErrNoListener)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("error %v does not wrap context.DeadlineExceeded", err)
		}
	})
	t.Run("no CONNECT socket", func(t *testing.T) {
		_, err := hybrid.Dial(ctxFor(t, 10*time.Second), w.dir+"/missing.sock", 1, &hybrid.DialConfig{MaxAttempts: 1})
		wantClass(t, err, hybrid.ErrNoListener)
	})
	t.Run("enclave dials a closed host port", func(t *testing.T) {
		_, err := transport.Dial(ctxFor(t, 10*time.Second), hybrid.ParentCID, 4242, w.tcfg)
		wantClass(t, err, hybrid.ErrNoListener)
	})
	t.Run("guest listener closed", func(t *testing.T) {
		l, err := transport.Listen(4243, w.tcfg)
		if err != nil {
			t.Fatal(err)
		}
		l.Close()
		_, err = hybrid.Dial(ctxFor(t, 10*time.Second), w.sock, 4243, &hybrid.DialConfig{MaxAttempts: 1})
		wantClass(t, err, hybrid.ErrNoListener)
	})
}

// notifyingConnector reports every ConnectGuest call.
type notifyingConnector struct {
	hybrid.Connector
	calls chan uint32
}

func (n notifyingConnector) ConnectGuest(ctx context.Context, port uint32) (net.Conn, error) {
	select {
	case n.calls <- port:
	default:
	}
	return n.Connector.ConnectGuest(ctx, port)
}

// TestDialRetriesUntilListenerAppears: the enclave starts listening only
// after Dial's first attempts failed; Dial keeps retrying and succeeds.
func TestDialRetriesUntilListenerAppears(t *testing.T) {
	calls := make(chan uint32, 1)
	w := newWorld(t, func(s *hybrid.Server) {
		s.Connector = notifyingConnector{Connector: s.Connector, calls: calls}
	})
	type res struct {
		c   *hybrid.Conn
		err error
	}
	done := make(chan res, 1)
	go func() {
		c, err := hybrid.Dial(ctxFor(t, 30*time.Second), w.sock, 7400, dialCfg())
		done <- res{c, err}
	}()
	for range 2 { // two failed attempts
		<-calls
	}
	select {
	case r := <-done:
		t.Fatalf("Dial returned before the listener existed: %v", r.err)
	default:
	}
	l := w.guestListen(t, 7400)
	go echo(l)
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer r.c.Close()
	if _, err := r.c.Write([]byte("late")); err != nil {
		t.Fatal(err)
	}
	r.c.CloseWrite()
	if got, err := io.ReadAll(r.c); err != nil || string(got) != "late" {
		t.Fatalf("echo %q, %v", got, err)
	}
}

// rawConnect speaks the protocol by hand.
func rawConnect(t *testing.T, sock string) *net.UnixConn {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return c.(*net.UnixConn)
}

// TestServerPipelinedData: data sent in the same write as the request (as
// `echo -e "CONNECT 1234\nHello" | socat` does) reaches the enclave, and the
// reply is "OK <hostport>\n" followed by the stream.
func TestServerPipelinedData(t *testing.T) {
	w := newWorld(t, nil)
	go echo(w.guestListen(t, 1234))
	c := rawConnect(t, w.sock)
	if _, err := c.Write([]byte("CONNECT 1234\nHello")); err != nil {
		t.Fatal(err)
	}
	line, err := hybrid.ReadLine(c)
	if err != nil {
		t.Fatal(err)
	}
	n, err := hybrid.ParseOK(line)
	if err != nil || n < hybrid.FirstHostPort || n >= 1<<31 {
		t.Fatalf("reply %q: port %d, %v", line, n, err)
	}
	c.CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "Hello" {
		t.Fatalf("echo %q, %v", got, err)
	}
}

// TestServerPartialRequest: a request split over several writes is
// assembled (cloud-hypervisor tolerance; Firecracker would drop it).
func TestServerPartialRequest(t *testing.T) {
	w := newWorld(t, nil)
	go echo(w.guestListen(t, 77))
	c := rawConnect(t, w.sock)
	for _, part := range []string{"con", "NECT", " ", "7", "7\r", "\n"} {
		if _, err := c.Write([]byte(part)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond) // let the server see the pieces separately
	}
	line, err := hybrid.ReadLine(c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hybrid.ParseOK(line); err != nil {
		t.Fatalf("reply %q: %v", line, err)
	}
}

// TestServerRejects: bad requests and unreachable ports close the connection
// without a single byte.
func TestServerRejects(t *testing.T) {
	w := newWorld(t, func(s *hybrid.Server) { s.HandshakeTimeout = 200 * time.Millisecond })
	go echo(w.guestListen(t, 80))
	for name, req := range map[string]string{
		"garbage":       "GET / HTTP/1.1\r\n",
		"bad port":      "CONNECT 99999999999\n",
		"too long":      "CONNECT 80" + string(bytes.Repeat([]byte(" "), 40)) + "\n",
		"nobody there":  "CONNECT 81\n",
		"silent client": "",
		"no newline":    "CONNECT 80",
		"extra token":   "CONNECT 80 81\n",
	} {
		t.Run(name, func(t *testing.T) {
			c := rawConnect(t, w.sock)
			if req != "" {
				if _, err := c.Write([]byte(req)); err != nil {
					t.Fatal(err)
				}
			}
			got, err := io.ReadAll(c)
			if len(got) != 0 {
				t.Fatalf("server sent %q", got)
			}
			// EOF, or a reset when part of the request was left unread.
			if err != nil && !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("read: %v", err)
			}
		})
	}
}

// TestServerMaxConns: relayed connections beyond MaxConns are closed at
// once; a slot freed by closing a connection is reused.
func TestServerMaxConns(t *testing.T) {
	w := newWorld(t, func(s *hybrid.Server) { s.MaxConns = 2; s.Connector = relayOnly(s.Connector) })
	go echo(w.guestListen(t, 90))
	var conns []*hybrid.Conn
	for range 2 {
		c, err := hybrid.Dial(ctxFor(t, 10*time.Second), w.sock, 90, dialCfg())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	_, err := hybrid.Dial(ctxFor(t, 10*time.Second), w.sock, 90, &hybrid.DialConfig{MaxAttempts: 1})
	if !errors.Is(err, hybrid.ErrReset) && !errors.Is(err, hybrid.ErrNoListener) {
		t.Fatalf("third connection: %v, want ErrReset or ErrNoListener", err)
	}
	conns[0].Close()
	c, err := hybrid.Dial(ctxFor(t, 10*time.Second), w.sock, 90, dialCfg()) // retried until the slot is free
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	conns[1].Close()
}

// TestServerHostPorts: host ports are allocated round-robin from 1<<30.
func TestServerHostPorts(t *testing.T) {
	w := newWorld(t, nil)
	go echo(w.guestListen(t, 91))
	var got []uint32
	for range 3 {
		c, err := hybrid.Dial(ctxFor(t, 10*time.Second), w.sock, 91, dialCfg())
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, addrOf(c.LocalAddr()).Port)
		c.Close()
	}
	want := []uint32{1 << 30, 1<<30 + 1, 1<<30 + 2}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("host ports (-want +got):\n%s", diff)
	}
}

// TestServeShutdown: cancelling Serve's context closes the listener and the
// active connections, and Serve returns nil.
func TestServeShutdown(t *testing.T) {
	dir := shortDir(t)
	go echo(func() net.Listener {
		l, err := hybrid.ListenUnix(dir+"/vsock_5", &vsock.Addr{ContextID: enclaveCID, Port: 5}, hybrid.ParentCID)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		return l
	}())
	l, err := net.Listen("unix", dir+"/vsock.sock")
	if err != nil {
		t.Fatal(err)
	}
	srv := &hybrid.Server{Connector: hybrid.UnixConnector{Dir: dir}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	c, err := hybrid.Dial(ctxFor(t, 10*time.Second), dir+"/vsock.sock", 5, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve returned %v, want nil", err)
	}
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("active connection after shutdown: %v, want EOF", err)
	}
	if _, err := net.Dial("unix", dir+"/vsock.sock"); err == nil {
		t.Error("listener still accepts after shutdown")
	}
}

func TestServeNoConnector(t *testing.T) {
	var s hybrid.Server
	if err := s.Serve(context.Background(), nil); err == nil {
		t.Fatal("Serve without Connector succeeded")
	}
}

// TestDialProtocolError: a malformed reply is not retried.
func TestDialProtocolError(t *testing.T) {
	dir := shortDir(t)
	l, err := net.Listen("unix", dir+"/bad.sock")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var accepts atomic.Int32
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepts.Add(1)
			hybrid.ReadLine(c)
			c.Write([]byte("NOPE 1\n"))
			c.Close()
		}
	}()
	_, err = hybrid.Dial(ctxFor(t, 10*time.Second), dir+"/bad.sock", 5, nil)
	wantClass(t, err, hybrid.ErrProtocol)
	if n := accepts.Load(); n != 1 {
		t.Errorf("%d attempts, want 1 (protocol errors are not retried)", n)
	}
}

// TestDialCancel: cancelling the context (not a deadline) stops Dial.
func TestDialCancel(t *testing.T) {
	calls := make(chan uint32, 1)
	w := newWorld(t, func(s *hybrid.Server) {
		s.Connector = notifyingConnector{Connector: s.Connector, calls: calls}
	})
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-calls; cancel() }() // once Dial has tried
	_, err := hybrid.Dial(ctx, w.sock, 4242, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v does not wrap context.Canceled", err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "dial" || oe.Net != "vsock" {
		t.Errorf("error %v is not a dial *net.OpError on vsock", err)
	}
	if errors.Is(err, hybrid.ErrTimeout) {
		t.Errorf("cancellation reported as a timeout: %v", err)
	}
}

// TestDialNoByteSwallowed: the enclave writes right after accepting, so its
// bytes may arrive together with "OK <n>\n"; none may be lost.
func TestDialNoByteSwallowed(t *testing.T) {
	w := newWorld(t, nil)
	l := w.guestListen(t, 7500)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		c.Write([]byte("greeting from the enclave"))
		c.Close()
	}()
	c, err := hybrid.Dial(ctxFor(t, 10*time.Second), w.sock, 7500, dialCfg())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "greeting from the enclave" {
		t.Fatalf("read %q, %v", got, err)
	}
}
