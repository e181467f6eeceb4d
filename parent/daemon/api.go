package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"time"

	"github.com/cloister/cloister/internal/hybrid"
	"github.com/cloister/cloister/parent"
)

// maxRequestBody bounds JSON request bodies.
const maxRequestBody = 1 << 20

// Handler returns the daemon's HTTP/JSON API (documented in
// docs/daemon-api.yaml).
func (d *Daemon) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/info", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, d.Info())
	})
	mux.HandleFunc("GET /v1/devroot", func(w http.ResponseWriter, r *http.Request) {
		if len(d.devRoot) == 0 {
			writeError(w, newErr("", parent.ErrNotFound, "this daemon has no development root (backend %s uses the real AWS root)", d.cfg.Backend))
			return
		}
		w.Header().Set("Content-Type", "application/x-pem-file")
		_, _ = w.Write(d.devRoot)
	})
	mux.HandleFunc("POST /v1/enclaves", func(w http.ResponseWriter, r *http.Request) {
		var req parent.RunRequest
		dec := json.NewDecoder(io.LimitReader(r.Body, maxRequestBody))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeError(w, newErr("E03", parent.ErrInvalidArgument, "malformed run request: %v", err))
			return
		}
		res, err := d.Run(r.Context(), req)
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusCreated, res)
	})
	mux.HandleFunc("GET /v1/enclaves", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, d.Describe(r.URL.Query().Get("all") == "true"))
	})
	mux.HandleFunc("GET /v1/enclaves/{id}", func(w http.ResponseWriter, r *http.Request) {
		desc, err := d.DescribeOne(r.PathValue("id"))
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, desc)
	})
	mux.HandleFunc("DELETE /v1/enclaves/{id}", func(w http.ResponseWriter, r *http.Request) {
		res, err := d.Terminate(r.Context(), r.PathValue("id"))
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, res)
	})
	mux.HandleFunc("DELETE /v1/enclaves", func(w http.ResponseWriter, r *http.Request) {
		res, err := d.TerminateAll(r.Context())
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, res)
	})
	mux.HandleFunc("GET /v1/enclaves/{id}/console", d.handleConsole)
	mux.HandleFunc("GET /v1/enclaves/{id}/connect", d.handleConnect)
	d.operatorHandler(mux)
	return mux
}

// handleConsole replays the enclave's kept console log and, with
// follow=true, streams new output until the enclave ends (or
// disconnect_timeout seconds pass).
func (d *Daemon) handleConsole(w http.ResponseWriter, r *http.Request) {
	e, err := d.lookup(r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	q := r.URL.Query()
	follow := q.Get("follow") == "true"
	ctx := r.Context()
	if s := q.Get("disconnect_timeout"); s != "" {
		n, err := strconv.ParseUint(s, 10, 32)
		if err != nil || n == 0 {
			writeError(w, newErr("E03", parent.ErrInvalidArgument, "disconnect_timeout %q is not a positive number of seconds", s))
			return
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(n)*time.Second)
		defer cancel()
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	var flush func()
	if flusher, ok := w.(http.Flusher); ok {
		flush = flusher.Flush
	}
	if err := copyConsole(ctx, w, flush, e.dir, follow, e.done); err != nil {
		d.log.Debug("console stream ended", "enclave", e.rec.ID, "err", err)
	}
}

// connectUpgrade is the Upgrade token of the connect endpoint.
const connectUpgrade = "cloister-vsock"

// handleConnect upgrades the HTTP connection to a raw stream to a vsock
// port of the enclave (HTTP/1.1 101 Switching Protocols).
func (d *Daemon) handleConnect(w http.ResponseWriter, r *http.Request) {
	port, err := strconv.ParseUint(r.URL.Query().Get("port"), 10, 32)
	if err != nil {
		writeError(w, newErr("E03", parent.ErrInvalidArgument, "port %q is not a vsock port number", r.URL.Query().Get("port")))
		return
	}
	if r.Header.Get("Upgrade") != connectUpgrade {
		writeError(w, newErr("", parent.ErrInvalidArgument, "the connect endpoint needs 'Connection: Upgrade' and 'Upgrade: %s'", connectUpgrade))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	enc, err := d.Dial(ctx, r.PathValue("id"), uint32(port))
	cancel()
	if err != nil {
		writeError(w, err)
		return
	}
	defer enc.Close()
	hj, ok := w.(http.Hijacker)
	if !ok {
		writeError(w, errors.New("daemon: connection cannot be upgraded"))
		return
	}
	conn, brw, err := hj.Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	if _, err := brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + connectUpgrade + "\r\n\r\n"); err != nil {
		return
	}
	if err := brw.Flush(); err != nil {
		return
	}
	// Bytes the client sent right after its request are in brw's buffer.
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		if _, err := enc.Write(b); err != nil {
			return
		}
	}
	hybrid.Splice(conn, enc)
}

func writeError(w http.ResponseWriter, err error) {
	body, status := parent.APIErrorOf(err)
	writeJSON(w, status, body)
}

// Serve serves the API on the configured Unix socket until ctx ends, then
// shuts down gracefully. Enclaves keep running.
func (d *Daemon) Serve(ctx context.Context) error {
	l, err := ListenSocket(d.cfg.Socket, d.cfg.Group)
	if err != nil {
		return err
	}
	stopMetrics, err := d.serveMetrics(ctx)
	if err != nil {
		l.Close()
		return err
	}
	defer stopMetrics()
	srv := &http.Server{Handler: d.Handler(), ReadHeaderTimeout: 10 * time.Second, ConnContext: withCaller}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	d.log.Info("daemon listening", "socket", d.cfg.Socket, "backend", d.cfg.Backend)
	if d.opts.Ready != nil {
		d.opts.Ready()
	}
	select {
	case err := <-errc:
		return fmt.Errorf("daemon: serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = srv.Shutdown(sctx)
	_ = os.Remove(d.cfg.Socket)
	return err
}

// ListenSocket listens on the API socket: a stale socket file is replaced,
// the socket is owned by root and group (mode 0660) when that group exists,
// else it is root-only (0600).
func ListenSocket(path, group string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("daemon: socket directory: %w", err)
	}
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return nil, fmt.Errorf("daemon: another daemon is already listening on %s", path)
	}
	_ = os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("daemon: listen on %s: %w", path, err)
	}
	mode := os.FileMode(0o600)
	if g, err := user.LookupGroup(group); err == nil {
		if gid, err := strconv.Atoi(g.Gid); err == nil && os.Chown(path, os.Geteuid(), gid) == nil {
			mode = 0o660
		}
	}
	if err := os.Chmod(path, mode); err != nil {
		l.Close()
		return nil, fmt.Errorf("daemon: socket permissions: %w", err)
	}
	return l, nil
}
