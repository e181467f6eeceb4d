package egress

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/cloister/cloister/internal/hybrid"
)

// Proxy forwards connections accepted from the enclave to allowlisted TCP
// destinations. The zero value is not usable: set Allowlist, and Target for
// fixed mode.
type Proxy struct {
	// Allowlist gates every destination.
	Allowlist *Allowlist
	// Narrow, when set, gates every destination too: an enclave's own
	// allowlist, which can only narrow Allowlist. Each connection's
	// destination is resolved once and only the addresses both permit
	// are dialled (ResolveAll). A fixed proxy's Validate checks Allowlist
	// alone: a target Narrow refuses is refused per connection.
	Narrow *Allowlist
	// Target, when set, makes this a fixed proxy to host:port (vsock-proxy
	// mode). When empty the proxy expects an HTTP CONNECT request first.
	Target string
	// Dial opens the outside connection to an address the allowlist
	// permitted: addr is always IP:port, never a name. nil uses a
	// net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// DialTimeout bounds each connection's outside dial, over all the
	// permitted addresses it tries (default 10 s).
	DialTimeout time.Duration
	// Logger receives one line per connection decision; nil discards.
	Logger *slog.Logger
}

// maxConnectHeader bounds the CONNECT request head read from the enclave.
const maxConnectHeader = 8 << 10

// minDialShare is the least time one of several permitted addresses gets to
// connect before the next is tried (as net.Dialer splits its deadline).
const minDialShare = 2 * time.Second

// Validate checks a fixed proxy's target against Allowlist, as vsock-proxy
// does at startup: the target must resolve and at least one of its
// addresses be permitted. Narrow is not consulted: an enclave that narrows
// its egress still starts next to the operator's fixed proxies, whose
// connections its own list then refuses. This does not make later
// connections safe by itself: every connection is checked again, against
// its own lookup.
func (p *Proxy) Validate(ctx context.Context) error {
	if p.Target == "" {
		return nil
	}
	host, port, err := splitHostPort(p.Target)
	if err != nil {
		return fmt.Errorf("%w: proxy target %q: %v", ErrConfig, p.Target, err)
	}
	_, err = p.Allowlist.Resolve(ctx, host, port)
	return err
}

// Serve accepts connections on l until ctx ends or l fails, handling each in
// its own goroutine. Each connection's destination is resolved once and
// checked, and only the addresses the allowlist permits are dialled (see
// Allowlist.Resolve); call Validate first for vsock-proxy's startup check of
// a fixed target. When ctx ends Serve closes l and every open tunnel, and
// returns once the handlers are done.
func (p *Proxy) Serve(ctx context.Context, l net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { <-ctx.Done(); l.Close() }()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("egress: accept: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.handle(ctx, c)
		}()
	}
}

func (p *Proxy) logger() *slog.Logger {
	if p.Logger != nil {
		return p.Logger
	}
	return slog.New(slog.DiscardHandler)
}

func (p *Proxy) handle(ctx context.Context, c net.Conn) {
	defer c.Close()
	// Ending the proxy ends its tunnels too.
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	if p.Target != "" {
		out, addr, err := p.dialChecked(ctx, p.Target)
		if err != nil {
			p.logger().Warn("egress refused", "target", p.Target, "err", err)
			return
		}
		defer out.Close()
		defer context.AfterFunc(ctx, func() { out.Close() })()
		p.logger().Info("egress connected", "target", p.Target, "addr", addr)
		hybrid.Splice(c, out)
		return
	}

	// CONNECT mode: read the request head without consuming tunnel bytes
	// beyond it (the enclave may pipeline its TLS ClientHello).
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReaderSize(io.LimitReader(c, maxConnectHeader), 4096)
	req, err := http.ReadRequest(br)
	if err != nil {
		writeStatus(c, http.StatusBadRequest, "malformed proxy request")
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	if req.Method != http.MethodConnect {
		writeStatus(c, http.StatusMethodNotAllowed, "only CONNECT is supported")
		return
	}
	target := req.RequestURI
	out, addr, err := p.dialChecked(ctx, target)
	if err != nil {
		p.logger().Warn("egress refused", "target", target, "err", err)
		if errors.Is(err, ErrNotAllowed) {
			writeStatus(c, http.StatusForbidden, err.Error())
		} else {
			writeStatus(c, http.StatusBadGateway, err.Error())
		}
		return
	}
	defer out.Close()
	defer context.AfterFunc(ctx, func() { out.Close() })()
	if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	p.logger().Info("egress connected", "target", target, "addr", addr)
	// Bytes the enclave sent after the request head are already buffered.
	if n := br.Buffered(); n > 0 {
		buf, _ := br.Peek(n)
		if _, err := out.Write(buf); err != nil {
			return
		}
	}
	hybrid.Splice(c, out)
}

// dialChecked resolves target once, and connects to the first of its
// permitted addresses that answers, trying them in the resolver's order. It
// never dials a name, so what it reaches is what was checked.
func (p *Proxy) dialChecked(ctx context.Context, target string) (net.Conn, netip.AddrPort, error) {
	host, port, err := splitHostPort(target)
	if err != nil {
		return nil, netip.AddrPort{}, fmt.Errorf("%w: destination %q: %v", ErrNotAllowed, target, err)
	}
	lists := []*Allowlist{p.Allowlist}
	if p.Narrow != nil {
		lists = append(lists, p.Narrow)
	}
	addrs, err := ResolveAll(ctx, host, port, lists...)
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	timeout := p.DialTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	dial := p.Dial
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	var errs []error
	for i, a := range addrs {
		ap := netip.AddrPortFrom(a, uint16(port))
		// Share what is left of the deadline among the addresses left.
		actx, acancel := dctx, context.CancelFunc(func() {})
		if left := len(addrs) - i; left > 1 {
			if dl, ok := dctx.Deadline(); ok {
				actx, acancel = context.WithTimeout(dctx, max(time.Until(dl)/time.Duration(left), minDialShare))
			}
		}
		out, err := dial(actx, "tcp", ap.String())
		acancel()
		if err == nil {
			return out, ap, nil
		}
		errs = append(errs, err)
		if dctx.Err() != nil {
			break
		}
	}
	return nil, netip.AddrPort{}, fmt.Errorf("egress: dial %s: %w", target, errors.Join(errs...))
}

func splitHostPort(s string) (string, int, error) {
	host, ps, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(ps)
	if err != nil || port < 1 || port > 65535 {
		return "", 0, fmt.Errorf("bad port %q", ps)
	}
	if host == "" {
		return "", 0, errors.New("empty host")
	}
	return host, port, nil
}

func writeStatus(c net.Conn, code int, msg string) {
	_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		code, http.StatusText(code), len(msg)+1, msg+"\n")
}
