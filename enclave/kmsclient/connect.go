package kmsclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/cloister/cloister/internal/transport"
)

// ConnectProxyDialer returns a DialContext for an HTTP client inside an enclave
// that reaches addr through the parent's egress proxy on vsock port
// proxyPort in CONNECT mode: it connects to (3, proxyPort), sends
// "CONNECT addr HTTP/1.1" and returns the tunnel once the proxy answers
// 200. The proxy refuses (403) destinations missing from the daemon's
// egress allowlist; that refusal is returned as an error naming the status.
func ConnectProxyDialer(proxyPort uint32) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, _, addr string) (net.Conn, error) {
		c, err := transport.Dial(ctx, ParentCID, proxyPort, nil)
		if err != nil {
			return nil, fmt.Errorf("kmsclient: dialing the egress proxy on parent port %d: %w", proxyPort, err)
		}
		if err := connectTunnel(ctx, c, addr); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
}

// connectTunnel asks the proxy on c for a tunnel to addr. It reads the
// answer byte by byte so that no byte of the tunnel is consumed.
func connectTunnel(ctx context.Context, c net.Conn, addr string) error {
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
		defer c.SetDeadline(time.Time{})
	}
	if _, err := fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", addr, addr); err != nil {
		return fmt.Errorf("kmsclient: egress proxy: %w", err)
	}
	var head []byte
	b := make([]byte, 1)
	for len(head) < 4096 {
		if _, err := io.ReadFull(c, b); err != nil {
			return fmt.Errorf("kmsclient: egress proxy: reading its answer: %w", err)
		}
		head = append(head, b[0])
		if len(head) >= 4 && string(head[len(head)-4:]) == "\r\n\r\n" {
			var proto string
			var status int
			if _, err := fmt.Sscanf(string(head), "%s %d", &proto, &status); err != nil {
				return fmt.Errorf("kmsclient: egress proxy: malformed answer %q", head)
			}
			if status != 200 {
				return fmt.Errorf("kmsclient: egress proxy refused the tunnel to %s: status %d (is it in the daemon's egress allowlist?)", addr, status)
			}
			return nil
		}
	}
	return errors.New("kmsclient: egress proxy: answer head too long")
}
