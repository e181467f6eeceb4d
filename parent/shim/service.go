package shim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/api/types/task"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cloister/cloister/parent"
)

// dialTimeout bounds one connection from a published port to the enclave.
const dialTimeout = 30 * time.Second

// stateFile, in the bundle, records the launched enclave so that the
// shim's "delete" action can clean up after a shim that died.
const stateFile = "cloister-shim.json"

// Config configures a [Service].
type Config struct {
	// Daemon is the local Cloister daemon.
	Daemon *parent.Client
	// Namespace is the containerd namespace; it prefixes enclave names.
	Namespace string
	// Containerd is containerd's gRPC socket; when set, the container is
	// labelled with its enclave's measurements (LabelPCR0, …).
	Containerd string
	// InitPath is cloister-init, built into every image.
	InitPath string
	// CacheDir keeps built images by content.
	CacheDir string
	// Events receives task events (nil: none are sent).
	Events *Publisher
	// Logger receives the shim's log (default: discard).
	Logger *slog.Logger
	// Exit is called once containerd has asked the shim to shut down.
	Exit func()
	// Getenv reads the environment for the builder (default os.Getenv).
	Getenv func(string) string
}

// Service implements containerd's runtime v2 task API
// (containerd.task.v2.Task over ttrpc) for one container, which runs as an
// enclave through the daemon.
type Service struct {
	cfg Config
	mu  sync.Mutex
	t   *taskState
}

var _ taskapi.TTRPCTaskService = (*Service)(nil)

// taskState is the one container of this shim.
type taskState struct {
	id, bundle             string
	stdin, stdout, stderr  string
	terminal               bool
	spec                   *Spec
	sandbox                bool
	rootfs                 string
	mounted                bool
	image                  *Image
	cpus, memMiB           int
	ports                  []Port
	egress                 *parent.EgressPolicy
	status                 task.Status
	pid                    uint32
	enclaveID, enclaveName string
	measurements           parent.Measurements
	fwd                    *Forwarder
	killed                 syscall.Signal
	exited                 chan struct{}
	exitStatus             uint32
	exitedAt               time.Time
	stopWatch              context.CancelFunc
}

// NewService returns a Service for cfg.
func NewService(cfg Config) *Service {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Getenv == nil {
		cfg.Getenv = os.Getenv
	}
	return &Service{cfg: cfg}
}

func errNotFound(id string) error {
	return status.Errorf(codes.NotFound, "shim: task %s: not found in this shim", id)
}

// get returns the task id, under mu.
func (s *Service) get(id string) (*taskState, error) {
	if s.t == nil || s.t.id != id {
		return nil, errNotFound(id)
	}
	return s.t, nil
}

func execUnsupported(execID string) error {
	if execID != "" {
		return status.Errorf(codes.Unimplemented, "shim: exec processes are not supported: an enclave has no shell to enter")
	}
	return nil
}

// Create reads the bundle, mounts the root file system and builds (or
// finds in the cache) the enclave image. Nothing runs until Start.
func (s *Service) Create(ctx context.Context, r *taskapi.CreateTaskRequest) (*taskapi.CreateTaskResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.t != nil {
		return nil, status.Errorf(codes.AlreadyExists, "shim: this shim already runs task %s", s.t.id)
	}
	if r.Checkpoint != "" {
		return nil, status.Errorf(codes.Unimplemented, "shim: enclaves cannot be restored from checkpoints")
	}
	spec, err := LoadSpec(r.Bundle)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	t := &taskState{id: r.ID, bundle: r.Bundle, stdin: r.Stdin, stdout: r.Stdout, stderr: r.Stderr, terminal: r.Terminal,
		spec: spec, sandbox: spec.IsSandbox(), rootfs: spec.RootPath(r.Bundle), status: task.Status_CREATED,
		pid: uint32(os.Getpid()), exited: make(chan struct{})}
	if !t.sandbox {
		if err := s.prepare(ctx, t, r.Rootfs); err != nil {
			return nil, err
		}
	}
	s.t = t
	s.publish(TopicTaskCreate, &eventstypes.TaskCreate{ContainerID: t.id, Bundle: t.bundle, Rootfs: r.Rootfs,
		IO: &eventstypes.TaskIO{Stdin: t.stdin, Stdout: t.stdout, Stderr: t.stderr, Terminal: t.terminal}, Pid: t.pid})
	return &taskapi.CreateTaskResponse{Pid: t.pid}, nil
}

// prepare validates the spec, builds the image and sizes the enclave.
func (s *Service) prepare(ctx context.Context, t *taskState, rootfs []*types.Mount) (err error) {
	if t.spec.Process == nil {
		return status.Errorf(codes.InvalidArgument, "shim: config.json has no process")
	}
	if t.cpus, err = t.spec.CPUs(); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	if t.memMiB, err = t.spec.MemoryMiB(); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	if t.ports, err = t.spec.Ports(); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	if t.egress, err = t.spec.Egress(); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	if len(t.ports) > 0 && t.spec.Linux != nil && t.spec.NetNS() == "" && hasNetNS(t.spec) {
		return status.Errorf(codes.InvalidArgument, "shim: %s needs the path of the network namespace to publish into (a pod's, or ctr --with-ns network:PATH), or host networking", AnnotationPorts)
	}
	if len(rootfs) > 0 {
		ms := make([]Mount, 0, len(rootfs))
		for _, m := range rootfs {
			ms = append(ms, Mount{Type: m.Type, Source: m.Source, Options: m.Options})
		}
		if err := MountAll(ms, t.rootfs); err != nil {
			return status.Error(codes.Internal, err.Error())
		}
		t.mounted = true
		defer func() {
			// The image holds the file system now; the mount is not needed.
			if uerr := UnmountAll(t.rootfs); uerr != nil {
				s.cfg.Logger.Warn("shim: unmount rootfs", "err", uerr)
			} else {
				t.mounted = false
			}
		}()
	}
	p := t.spec.Process
	start := time.Now()
	img, err := BuildImage(ctx, ImageRequest{RootFS: t.rootfs, Args: p.Args, Env: p.Env, Cwd: p.Cwd, UID: p.User.UID, GID: p.User.GID,
		InitPath: s.cfg.InitPath, CacheDir: s.cfg.CacheDir, Getenv: s.cfg.Getenv})
	if err != nil {
		if errors.Is(err, ErrSpec) {
			return status.Error(codes.InvalidArgument, err.Error())
		}
		return status.Error(codes.Internal, err.Error())
	}
	s.cfg.Logger.Info("shim: enclave image", "id", t.id, "eif", img.Path, "cached", img.Cached, "size", img.Size, "duration", time.Since(start))
	t.image = img
	if t.memMiB == 0 {
		t.memMiB = max(DefaultMemoryMiB, int((4*img.Size+(1<<20-1))>>20))
	}
	return nil
}

// hasNetNS reports whether the spec lists a network namespace (new or joined).
func hasNetNS(s *Spec) bool {
	if s.Linux == nil {
		return false
	}
	for _, ns := range s.Linux.Namespaces {
		if ns.Type == "network" {
			return true
		}
	}
	return false
}

// enclaveName is the daemon's name for the container's enclave.
func (s *Service) enclaveName(id string) string {
	n := s.cfg.Namespace + "-" + id
	if len(n) > 128 {
		n = n[:128]
	}
	return n
}

// Start launches the enclave (RUNNING once it has booted), publishes its
// ports and starts watching it.
func (s *Service) Start(ctx context.Context, r *taskapi.StartRequest) (*taskapi.StartResponse, error) {
	if err := execUnsupported(r.ExecID); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	if t.status != task.Status_CREATED {
		return nil, status.Errorf(codes.FailedPrecondition, "shim: task %s is %s, not CREATED", t.id, t.status)
	}
	if t.sandbox {
		t.status = task.Status_RUNNING
		s.publish(TopicTaskStart, &eventstypes.TaskStart{ContainerID: t.id, Pid: t.pid})
		return &taskapi.StartResponse{Pid: t.pid}, nil
	}
	res, err := s.cfg.Daemon.Run(ctx, parent.RunRequest{EIFPath: t.image.Path, MemoryMiB: t.memMiB, CPUCount: t.cpus,
		DebugMode: t.spec.Debug(), EnclaveName: s.enclaveName(t.id), Egress: t.egress})
	if err != nil {
		code := codes.Unknown
		if errors.Is(err, parent.ErrInvalidArgument) {
			code = codes.InvalidArgument // e.g. an egress annotation wider than the daemon's allowlist
		}
		return nil, status.Errorf(code, "shim: run the enclave: %v", err)
	}
	t.enclaveID, t.enclaveName, t.pid = res.EnclaveID, res.EnclaveName, uint32(res.ProcessID)
	if err := writeState(t.bundle, persisted{EnclaveID: t.enclaveID, Pid: t.pid}); err != nil {
		s.cfg.Logger.Warn("shim: record state", "err", err)
	}
	if d, err := s.cfg.Daemon.DescribeEnclave(ctx, t.enclaveID); err == nil {
		t.measurements = d.Measurements
		if err := writeMeasurements(t.bundle, d); err != nil {
			s.cfg.Logger.Warn("shim: record measurements", "err", err)
		}
		if s.cfg.Containerd != "" {
			labels, id := measurementLabels(t.enclaveID, d.Measurements), t.id
			go func() {
				if err := LabelContainer(context.Background(), s.cfg.Containerd, s.cfg.Namespace, id, labels); err != nil {
					s.cfg.Logger.Warn("shim: label the container with its measurements", "err", err)
				}
			}()
		}
	}
	s.cfg.Logger.Info("shim: enclave running", "id", t.id, "enclave", t.enclaveID, "cid", res.EnclaveCID,
		"cpus", res.NumberOfCPUs, "memory_mib", res.MemoryMiB, "pcr0", t.measurements.PCR0, "pcr1", t.measurements.PCR1, "pcr2", t.measurements.PCR2)
	if len(t.ports) > 0 {
		id := t.enclaveID
		dial := func(ctx context.Context, port uint32) (net.Conn, error) { return s.cfg.Daemon.Connect(ctx, id, port) }
		if t.fwd, err = Publish(t.spec.NetNS(), t.ports, dial, s.cfg.Logger); err != nil {
			_, _ = s.cfg.Daemon.Terminate(context.WithoutCancel(ctx), t.enclaveID)
			return nil, status.Errorf(codes.Unknown, "shim: publish ports: %v", err)
		}
	}
	t.status = task.Status_RUNNING
	wctx, cancel := context.WithCancel(context.Background())
	t.stopWatch = cancel
	go s.watch(wctx, t)
	s.publish(TopicTaskStart, &eventstypes.TaskStart{ContainerID: t.id, Pid: t.pid})
	return &taskapi.StartResponse{Pid: t.pid}, nil
}

// watch follows the enclave's console (into the container's stdout in
// debug mode) until the enclave ends, then records its exit.
func (s *Service) watch(ctx context.Context, t *taskState) {
	var out io.Writer = io.Discard
	if t.spec.Debug() && t.stdout != "" {
		f, err := os.OpenFile(t.stdout, os.O_WRONLY, 0)
		if err != nil {
			s.cfg.Logger.Warn("shim: open the container's stdout", "path", t.stdout, "err", err)
		} else {
			defer f.Close()
			out = f
		}
	}
	if err := s.cfg.Daemon.Console(ctx, t.enclaveID, true, 0, out); err != nil {
		s.cfg.Logger.Warn("shim: follow console", "enclave", t.enclaveID, "err", err)
	}
	var desc parent.EnclaveDescription
	for {
		d, err := s.cfg.Daemon.DescribeEnclave(ctx, t.enclaveID)
		if err == nil && d.State == parent.StateExited {
			desc = d
			break
		}
		if err != nil {
			var perr *parent.Error
			if errors.As(err, &perr) && perr.Status == 404 {
				break // forgotten by the daemon: report it as killed
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.exit(t, desc.ExitStatus)
}

// exit records the end of t; mu held.
func (s *Service) exit(t *taskState, x *parent.ExitStatus) {
	if t.status == task.Status_STOPPED {
		return
	}
	t.exitedAt = time.Now()
	switch {
	case t.killed != 0:
		t.exitStatus = 128 + uint32(t.killed)
	case x == nil:
		t.exitStatus = 128 + uint32(syscall.SIGKILL)
	case x.Signal != "":
		t.exitStatus = 128 + uint32(signalNumber(x.Signal))
	default:
		t.exitStatus = uint32(x.Code) & 0xff
	}
	if x != nil && !x.Time.IsZero() {
		t.exitedAt = x.Time
	}
	t.status = task.Status_STOPPED
	t.fwd.Close()
	close(t.exited)
	s.publish(TopicTaskExit, &eventstypes.TaskExit{ContainerID: t.id, ID: t.id, Pid: t.pid, ExitStatus: t.exitStatus, ExitedAt: timestamppb.New(t.exitedAt)})
}

// signalNumber maps "SIGKILL" or "9" to 9 (SIGKILL when unknown).
func signalNumber(s string) syscall.Signal {
	if n, err := strconv.Atoi(s); err == nil && n > 0 && n < 128 {
		return syscall.Signal(n)
	}
	if n := unix.SignalNum(s); n != 0 {
		return n
	}
	return syscall.SIGKILL
}

// Kill terminates the enclave: an enclave has no signals, so every
// signal but 0 ends it, and the exit status is 128 + the signal, as for a
// killed process.
func (s *Service) Kill(ctx context.Context, r *taskapi.KillRequest) (*emptypb.Empty, error) {
	if err := execUnsupported(r.ExecID); err != nil {
		return nil, err
	}
	s.mu.Lock()
	t, err := s.get(r.ID)
	if err != nil {
		s.mu.Unlock()
		return nil, err
	}
	if r.Signal == 0 || t.status == task.Status_STOPPED {
		s.mu.Unlock()
		if r.Signal == 0 || r.All {
			return &emptypb.Empty{}, nil
		}
		return nil, status.Errorf(codes.NotFound, "shim: task %s: process already finished", t.id)
	}
	t.killed = syscall.Signal(r.Signal)
	if t.status == task.Status_CREATED || t.sandbox {
		s.exit(t, nil)
		s.mu.Unlock()
		return &emptypb.Empty{}, nil
	}
	id := t.enclaveID
	s.mu.Unlock()
	if _, err := s.cfg.Daemon.Terminate(ctx, id); err != nil {
		var perr *parent.Error
		if !errors.As(err, &perr) || perr.Status != 404 {
			return nil, status.Errorf(codes.Unknown, "shim: terminate enclave %s: %v", id, err)
		}
	}
	return &emptypb.Empty{}, nil
}

// Delete removes a stopped (or never started) task.
func (s *Service) Delete(ctx context.Context, r *taskapi.DeleteRequest) (*taskapi.DeleteResponse, error) {
	if err := execUnsupported(r.ExecID); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	switch t.status {
	case task.Status_RUNNING:
		return nil, status.Errorf(codes.FailedPrecondition, "shim: task %s is running; kill it first", t.id)
	case task.Status_CREATED:
		t.killed = syscall.SIGKILL
		s.exit(t, nil)
	}
	if t.stopWatch != nil {
		t.stopWatch()
	}
	if t.mounted {
		if err := UnmountAll(t.rootfs); err != nil {
			s.cfg.Logger.Warn("shim: unmount rootfs", "err", err)
		}
	}
	_ = os.Remove(filepath.Join(t.bundle, stateFile))
	s.t = nil
	s.publish(TopicTaskDelete, &eventstypes.TaskDelete{ContainerID: t.id, ID: t.id, Pid: t.pid, ExitStatus: t.exitStatus, ExitedAt: timestamppb.New(t.exitedAt)})
	return &taskapi.DeleteResponse{Pid: t.pid, ExitStatus: t.exitStatus, ExitedAt: timestamppb.New(t.exitedAt)}, nil
}

// State reports the task.
func (s *Service) State(ctx context.Context, r *taskapi.StateRequest) (*taskapi.StateResponse, error) {
	if err := execUnsupported(r.ExecID); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	resp := &taskapi.StateResponse{ID: t.id, Bundle: t.bundle, Pid: t.pid, Status: t.status, Stdin: t.stdin, Stdout: t.stdout,
		Stderr: t.stderr, Terminal: t.terminal, ExitStatus: t.exitStatus}
	if t.status == task.Status_STOPPED {
		resp.ExitedAt = timestamppb.New(t.exitedAt)
	}
	return resp, nil
}

// Wait blocks until the task has exited.
func (s *Service) Wait(ctx context.Context, r *taskapi.WaitRequest) (*taskapi.WaitResponse, error) {
	if err := execUnsupported(r.ExecID); err != nil {
		return nil, err
	}
	s.mu.Lock()
	t, err := s.get(r.ID)
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	select {
	case <-t.exited:
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return &taskapi.WaitResponse{ExitStatus: t.exitStatus, ExitedAt: timestamppb.New(t.exitedAt)}, nil
}

// Pids lists the enclave's monitor process, the task's one process.
func (s *Service) Pids(ctx context.Context, r *taskapi.PidsRequest) (*taskapi.PidsResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	return &taskapi.PidsResponse{Processes: []*task.ProcessInfo{{Pid: t.pid}}}, nil
}

// Connect returns the shim's and the task's process IDs.
func (s *Service) Connect(ctx context.Context, r *taskapi.ConnectRequest) (*taskapi.ConnectResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	resp := &taskapi.ConnectResponse{ShimPid: uint32(os.Getpid()), Version: "cloister"}
	if t, err := s.get(r.ID); err == nil {
		resp.TaskPid = t.pid
	}
	return resp, nil
}

// Shutdown ends the shim once its task is gone.
func (s *Service) Shutdown(ctx context.Context, r *taskapi.ShutdownRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	busy := s.t != nil && s.t.status == task.Status_RUNNING
	s.mu.Unlock()
	if busy {
		return &emptypb.Empty{}, nil
	}
	if s.cfg.Exit != nil {
		s.cfg.Exit()
	}
	return &emptypb.Empty{}, nil
}

// Stats is not available: the enclave's resources are fixed at launch.
func (s *Service) Stats(ctx context.Context, r *taskapi.StatsRequest) (*taskapi.StatsResponse, error) {
	return nil, status.Errorf(codes.Unimplemented, "shim: enclaves have no cgroup statistics")
}

// Pause is not supported.
func (s *Service) Pause(context.Context, *taskapi.PauseRequest) (*emptypb.Empty, error) {
	return nil, status.Errorf(codes.Unimplemented, "shim: enclaves cannot be paused")
}

// Resume is not supported.
func (s *Service) Resume(context.Context, *taskapi.ResumeRequest) (*emptypb.Empty, error) {
	return nil, status.Errorf(codes.Unimplemented, "shim: enclaves cannot be paused")
}

// Checkpoint is not supported.
func (s *Service) Checkpoint(context.Context, *taskapi.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return nil, status.Errorf(codes.Unimplemented, "shim: enclaves cannot be checkpointed")
}

// Exec is not supported.
func (s *Service) Exec(context.Context, *taskapi.ExecProcessRequest) (*emptypb.Empty, error) {
	return nil, execUnsupported("exec")
}

// ResizePty is accepted and ignored: the console is not a terminal.
func (s *Service) ResizePty(context.Context, *taskapi.ResizePtyRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}

// CloseIO is accepted: an enclave has no stdin.
func (s *Service) CloseIO(context.Context, *taskapi.CloseIORequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}

// Update is not supported: an enclave's CPUs and memory are fixed at launch.
func (s *Service) Update(context.Context, *taskapi.UpdateTaskRequest) (*emptypb.Empty, error) {
	return nil, status.Errorf(codes.Unimplemented, "shim: an enclave's CPUs and memory are fixed at launch; recreate the container")
}

func (s *Service) publish(topic string, ev any) {
	if s.cfg.Events != nil {
		s.cfg.Events.Publish(topic, ev)
	}
}

// persisted is stateFile's content.
type persisted struct {
	EnclaveID string `json:"enclave_id"`
	Pid       uint32 `json:"pid"`
}

func writeState(bundle string, p persisted) error {
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(bundle, stateFile), b, 0o600)
}

func readState(bundle string) (persisted, error) {
	var p persisted
	b, err := os.ReadFile(filepath.Join(bundle, stateFile))
	if err != nil {
		return p, err
	}
	if len(b) > 4096 {
		return p, fmt.Errorf("shim: %s is too large", stateFile)
	}
	err = json.Unmarshal(b, &p)
	return p, err
}

// MeasurementsFile, in the bundle, holds the enclave's description
// (measurements PCR0/1/2, CID, CPUs, memory) once it runs.
const MeasurementsFile = "cloister-enclave.json"

func writeMeasurements(bundle string, d parent.EnclaveDescription) error {
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(bundle, MeasurementsFile), b, 0o644)
}
