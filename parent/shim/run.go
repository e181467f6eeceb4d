package shim

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cloister/cloister/internal/installdir"
	"github.com/cloister/cloister/parent"
)

// Environment of the shim (containerd passes its own environment on).
const (
	// EnvSocket is the daemon's API socket (parent.SocketFromEnv's variable).
	EnvInit          = "CLOISTER_INIT"            // cloister-init (default: next to the shim, else in ../lib/cloister, else on PATH)
	EnvCache         = "CLOISTER_SHIM_CACHE"      // image cache (default DefaultCacheDir)
	EnvShimSocketDir = "CLOISTER_SHIM_SOCKET_DIR" // the shims' ttrpc sockets (default DefaultSocketDir)
)

// Defaults of the shim's environment.
const (
	DefaultCacheDir  = "/var/lib/cloister/shim/images"
	DefaultSocketDir = "/run/containerd/s"
)

// flags are the command-line flags containerd's runtime v2 passes.
type flags struct {
	namespace, address, publishBinary, id, bundle, socket string
	debug                                                 bool
	action                                                string
}

func parseFlags(args []string, stderr io.Writer) (flags, error) {
	var f flags
	fs := flag.NewFlagSet("containerd-shim-cloister-v2", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.namespace, "namespace", "", "containerd namespace")
	fs.StringVar(&f.address, "address", "", "containerd's gRPC socket")
	fs.StringVar(&f.publishBinary, "publish-binary", "", "containerd binary (unused: events go over ttrpc)")
	fs.StringVar(&f.id, "id", "", "task id")
	fs.StringVar(&f.bundle, "bundle", "", "bundle directory (delete)")
	fs.StringVar(&f.socket, "socket", "", "ttrpc socket (unused)")
	fs.BoolVar(&f.debug, "debug", false, "debug logging")
	if err := fs.Parse(args); err != nil {
		return f, err
	}
	f.action = fs.Arg(0)
	if f.namespace == "" || f.id == "" {
		return f, errors.New("shim: -namespace and -id are required (containerd starts this program; see docs/fleet.md)")
	}
	return f, nil
}

// Main runs the shim as containerd invokes it: "start" (start a shim
// server and print its address), "delete" (clean up after a dead shim and
// print a DeleteResponse), or no action (serve the task API on the socket
// passed as descriptor 3). It returns the exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	f, err := parseFlags(args, stderr)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	switch f.action {
	case "start":
		addr, err := start(f)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		fmt.Fprint(stdout, addr)
		return 0
	case "delete":
		b, err := deleteAction(f, stderr)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		_, _ = stdout.Write(b)
		return 0
	case "":
		if err := serve(f); err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		return 0
	}
	fmt.Fprintf(stderr, "shim: unknown action %q: want start, delete or none\n", f.action)
	return 2
}

// SocketPath is the ttrpc socket of the shim for (containerd address,
// namespace, id), as containerd names its shims' sockets.
func SocketPath(dir, address, namespace, id string) string {
	sum := sha256.Sum256([]byte(filepath.Join(address, namespace, id)))
	return filepath.Join(dir, hex.EncodeToString(sum[:]))
}

// start creates the socket, starts the shim server (this program with no
// action, the socket as descriptor 3, in its own session) and returns the
// address containerd connects to. The address is also written to the
// bundle's "address" file, which containerd reads when it restarts.
func start(f flags) (string, error) {
	cwd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("shim: bundle: %w", err)
	}
	dir := os.Getenv(EnvShimSocketDir)
	if dir == "" {
		dir = DefaultSocketDir
	}
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return "", fmt.Errorf("shim: socket directory: %w", err)
	}
	path := SocketPath(dir, f.address, f.namespace, f.id)
	_ = os.Remove(path)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return "", fmt.Errorf("shim: listen: %w", err)
	}
	ln.SetUnlinkOnClose(false)
	lf, err := ln.File()
	ln.Close()
	if err != nil {
		return "", fmt.Errorf("shim: listen: %w", err)
	}
	defer lf.Close()
	self, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("shim: own path: %w", err)
	}
	args := []string{"-namespace", f.namespace, "-address", f.address, "-id", f.id}
	if f.publishBinary != "" {
		args = append(args, "-publish-binary", f.publishBinary)
	}
	if f.debug {
		args = append(args, "-debug")
	}
	cmd := exec.Command(self, args...)
	cmd.Dir = cwd
	cmd.ExtraFiles = []*os.File{lf}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		os.Remove(path)
		return "", fmt.Errorf("shim: start the shim server: %w", err)
	}
	go func() { _ = cmd.Wait() }() // the server outlives us; reap it if it fails fast
	addr := "unix://" + path
	if err := os.WriteFile(filepath.Join(cwd, "address"), []byte(addr), 0o600); err != nil {
		_ = cmd.Process.Kill()
		return "", fmt.Errorf("shim: write the address file: %w", err)
	}
	return addr, nil
}

// openLog opens the bundle's "log" FIFO, which containerd copies to its
// own log; stderr when it is absent.
func openLog(debug bool) *slog.Logger {
	level := slog.LevelInfo
	if debug {
		level = slog.LevelDebug
	}
	var w io.Writer = os.Stderr
	if f, err := os.OpenFile("log", os.O_WRONLY|unix.O_NONBLOCK, 0); err == nil {
		w = f
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// findInit locates cloister-init: $CLOISTER_INIT, else next to the shim
// or in ../lib/cloister (the Debian package), else on PATH.
func findInit() string {
	if p := os.Getenv(EnvInit); p != "" {
		return p
	}
	if p := installdir.Find("cloister-init"); p != "" {
		return p
	}
	if p, err := exec.LookPath("cloister-init"); err == nil {
		return p
	}
	return "cloister-init"
}

func cacheDir() string {
	if d := os.Getenv(EnvCache); d != "" {
		return d
	}
	return DefaultCacheDir
}

// serve serves the task API on descriptor 3 until containerd shuts the
// shim down.
func serve(f flags) error {
	log := openLog(f.debug).With("namespace", f.namespace, "id", f.id)
	lf := os.NewFile(3, "socket")
	if lf == nil {
		return errors.New("shim: no socket on descriptor 3 (run by containerd's \"start\" action)")
	}
	ln, err := net.FileListener(lf)
	lf.Close()
	if err != nil {
		return fmt.Errorf("shim: socket on descriptor 3: %w", err)
	}
	events := NewPublisher(os.Getenv("TTRPC_ADDRESS"), f.namespace, log)
	defer events.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	svc := NewService(Config{
		Daemon:     parent.NewClient(parent.SocketFromEnv()),
		Namespace:  f.namespace,
		Containerd: f.address,
		InitPath:   findInit(),
		CacheDir:   cacheDir(),
		Events:     events,
		Logger:     log,
		Exit:       cancel,
	})
	srv, err := ttrpc.NewServer()
	if err != nil {
		return fmt.Errorf("shim: ttrpc: %w", err)
	}
	taskapi.RegisterTTRPCTaskService(srv, svc)
	signal.Ignore(syscall.SIGPIPE, syscall.SIGHUP, syscall.SIGINT)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ctx, ln) }()
	log.Info("shim: serving", "address", ln.Addr().String())
	select {
	case err := <-errc:
		if err != nil && !errors.Is(err, ttrpc.ErrServerClosed) {
			return fmt.Errorf("shim: serve: %w", err)
		}
	case <-ctx.Done():
	}
	// Let the Shutdown reply reach containerd, then stop.
	sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer scancel()
	_ = srv.Shutdown(sctx)
	if a := ln.Addr(); a != nil && strings.HasPrefix(a.String(), "/") {
		_ = os.Remove(a.String())
	}
	return nil
}

// deleteAction cleans up after a shim that is gone: it terminates the
// enclave the bundle records, unmounts the root file system and returns a
// marshalled DeleteResponse (exit 137, as a killed task).
func deleteAction(f flags, stderr io.Writer) ([]byte, error) {
	bundle := f.bundle
	if bundle == "" {
		var err error
		if bundle, err = os.Getwd(); err != nil {
			return nil, err
		}
	}
	var pid uint32
	if st, err := readState(bundle); err == nil && st.EnclaveID != "" {
		pid = st.Pid
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if _, err := parent.NewClient(parent.SocketFromEnv()).Terminate(ctx, st.EnclaveID); err != nil {
			fmt.Fprintf(stderr, "shim: terminate enclave %s: %v\n", st.EnclaveID, err)
		}
		cancel()
		_ = os.Remove(filepath.Join(bundle, stateFile))
	}
	if spec, err := LoadSpec(bundle); err == nil {
		if err := UnmountAll(spec.RootPath(bundle)); err != nil {
			fmt.Fprintln(stderr, err)
		}
	}
	return proto.Marshal(&taskapi.DeleteResponse{Pid: pid, ExitStatus: 128 + uint32(syscall.SIGKILL), ExitedAt: timestamppb.Now()})
}
