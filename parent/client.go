package parent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"time"

	"github.com/mdlayher/vsock"

	"github.com/cloister/cloister/internal/hybrid"
)

// DefaultSocket is where the daemon listens unless configured otherwise.
const DefaultSocket = "/run/cloister/cloisterd.sock"

// SocketFromEnv returns $CLOISTER_SOCKET, or DefaultSocket.
func SocketFromEnv() string {
	if s := os.Getenv("CLOISTER_SOCKET"); s != "" {
		return s
	}
	return DefaultSocket
}

// ErrDaemonUnreachable means no daemon answered on the socket.
var ErrDaemonUnreachable = errors.New("parent: cannot reach the Cloister daemon")

// Client talks to the Cloister daemon over its Unix socket. It is safe for
// concurrent use.
type Client struct {
	socket string
	hc     *http.Client
}

// NewClient returns a client for the daemon listening on socket
// ("" means SocketFromEnv()).
func NewClient(socket string) *Client {
	if socket == "" {
		socket = SocketFromEnv()
	}
	return &Client{socket: socket, hc: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}}
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://cloister"+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return c.unreachable(err)
	}
	defer resp.Body.Close()
	return decodeResponse(resp, out)
}

func (c *Client) unreachable(err error) error {
	return fmt.Errorf("%w at %s: %v (is `cloister daemon` running, and may you use its socket? set --socket or CLOISTER_SOCKET to use another)", ErrDaemonUnreachable, c.socket, err)
}

func decodeResponse(resp *http.Response, out any) error {
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("parent: read daemon response: %w", err)
	}
	if resp.StatusCode >= 300 {
		var body APIError
		if json.Unmarshal(b, &body) != nil || body.Message == "" {
			body = APIError{Kind: "internal", Message: fmt.Sprintf("daemon answered %s: %s", resp.Status, bytes.TrimSpace(b))}
		}
		return errorOf(body, resp.StatusCode)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("parent: decode daemon response: %w", err)
	}
	return nil
}

// Info describes the daemon.
func (c *Client) Info(ctx context.Context) (Info, error) {
	var i Info
	err := c.do(ctx, http.MethodGet, "/v1/info", nil, &i)
	return i, err
}

// Run launches an enclave and returns when it has booted.
func (c *Client) Run(ctx context.Context, req RunRequest) (RunResult, error) {
	var r RunResult
	if err := c.do(ctx, http.MethodPost, "/v1/enclaves", req, &r); err != nil {
		return RunResult{}, err
	}
	return r, nil
}

// Describe lists running enclaves, and exited ones too when all is set.
func (c *Client) Describe(ctx context.Context, all bool) ([]EnclaveDescription, error) {
	var out []EnclaveDescription
	path := "/v1/enclaves"
	if all {
		path += "?all=true"
	}
	if err := c.do(ctx, http.MethodGet, path, nil, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// DescribeEnclave describes one enclave by ID or name.
func (c *Client) DescribeEnclave(ctx context.Context, idOrName string) (EnclaveDescription, error) {
	var d EnclaveDescription
	if err := c.do(ctx, http.MethodGet, "/v1/enclaves/"+url.PathEscape(idOrName), nil, &d); err != nil {
		return EnclaveDescription{}, err
	}
	return d, nil
}

// ByCID finds the running enclave with the given CID.
func (c *Client) ByCID(ctx context.Context, cid uint64) (EnclaveDescription, error) {
	all, err := c.Describe(ctx, false)
	if err != nil {
		return EnclaveDescription{}, err
	}
	for _, d := range all {
		if d.EnclaveCID == cid {
			return d, nil
		}
	}
	return EnclaveDescription{}, NewError("", ErrNotFound, "no running enclave has CID %d (see describe-enclaves)", cid)
}

// Terminate terminates an enclave by ID or name.
func (c *Client) Terminate(ctx context.Context, idOrName string) (TerminateResult, error) {
	var r TerminateResult
	if err := c.do(ctx, http.MethodDelete, "/v1/enclaves/"+url.PathEscape(idOrName), nil, &r); err != nil {
		return TerminateResult{}, err
	}
	return r, nil
}

// TerminateAll terminates every running enclave.
func (c *Client) TerminateAll(ctx context.Context) ([]TerminateResult, error) {
	var r []TerminateResult
	if err := c.do(ctx, http.MethodDelete, "/v1/enclaves", nil, &r); err != nil {
		return nil, err
	}
	return r, nil
}

// DevRootPEM returns the daemon's development root certificate.
func (c *Client) DevRootPEM(ctx context.Context) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://cloister/v1/devroot", nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, c.unreachable(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, decodeResponse(resp, nil)
	}
	return io.ReadAll(io.LimitReader(resp.Body, 1<<20))
}

// Console copies the enclave's kept console log to w; with follow it keeps
// streaming until the enclave ends, ctx ends or disconnectTimeout (seconds,
// 0 = none) passes.
func (c *Client) Console(ctx context.Context, idOrName string, follow bool, disconnectTimeout int, w io.Writer) error {
	q := url.Values{}
	if follow {
		q.Set("follow", "true")
	}
	if disconnectTimeout > 0 {
		q.Set("disconnect_timeout", strconv.Itoa(disconnectTimeout))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://cloister/v1/enclaves/"+url.PathEscape(idOrName)+"/console?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return c.unreachable(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return decodeResponse(resp, nil)
	}
	_, err = io.Copy(w, resp.Body)
	if err != nil && ctx.Err() != nil {
		return nil
	}
	return err
}

// Connect opens a stream to port inside the enclave (by ID or name). When
// the caller can reach the enclave's hybrid-vsock socket directly it is
// used; otherwise the daemon relays the stream.
func (c *Client) Connect(ctx context.Context, idOrName string, port uint32) (net.Conn, error) {
	if d, err := c.DescribeEnclave(ctx, idOrName); err == nil && d.VsockSocket != "" {
		if conn, err := hybrid.Dial(ctx, d.VsockSocket, port, nil); err == nil {
			return conn, nil
		} else if !errors.Is(err, os.ErrPermission) && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	var dl net.Dialer
	conn, err := dl.DialContext(ctx, "unix", c.socket)
	if err != nil {
		return nil, c.unreachable(err)
	}
	req := fmt.Sprintf("GET /v1/enclaves/%s/connect?port=%d HTTP/1.1\r\nHost: cloister\r\nConnection: Upgrade\r\nUpgrade: cloister-vsock\r\n\r\n", url.PathEscape(idOrName), port)
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if _, err := io.WriteString(conn, req); err != nil {
		conn.Close()
		return nil, err
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("parent: connect: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer conn.Close()
		return nil, decodeResponse(resp, nil)
	}
	_ = conn.SetDeadline(time.Time{})
	return &bufferedConn{Conn: conn, r: br}, nil
}

// bufferedConn is a net.Conn whose first bytes come from a bufio.Reader.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }

// CloseWrite half-closes the underlying connection when it supports it.
func (b *bufferedConn) CloseWrite() error {
	if cw, ok := b.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return b.Conn.Close()
}

// Listen accepts connections that the enclave (by ID or name) opens to
// port on the parent (CID 3). On Nitro this is a real AF_VSOCK listener
// shared by every enclave; elsewhere it is the enclave's hybrid-vsock host
// listener, which needs access to the daemon's state directory (root).
func (c *Client) Listen(ctx context.Context, idOrName string, port uint32) (net.Listener, error) {
	d, err := c.DescribeEnclave(ctx, idOrName)
	if err != nil {
		return nil, err
	}
	if d.Backend == "nitro" {
		return vsock.Listen(port, nil)
	}
	if d.HostListenerBase == "" {
		return nil, fmt.Errorf("parent: enclave %s is %s, not running", d.EnclaveID, d.State)
	}
	return hybrid.Listen(d.HostListenerBase, port)
}
