package shim_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cloister/cloister/parent"
	"github.com/cloister/cloister/parent/parenttest"
	"github.com/cloister/cloister/parent/shim"
)

// criImage is the image the CRI test imports: the test app, and the pod
// sandbox ("pause") image too (a sandbox runs no enclave).
const criImage = "cloister.test/app:1"

// criPlugin configures containerd's CRI plugin as a node's
// /etc/containerd/config.toml would: runc as the default runtime, a
// sandbox image, CNI directories, and the runtime handler "cloister"
// exactly as deploy/containerd/cloister.toml adds it (that file is used
// as it is).
func criPlugin(t testing.TB, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(parenttest.RepoRoot(), "deploy", "containerd", "cloister.toml"))
	if err != nil {
		t.Fatal(err)
	}
	handler := strings.Replace(string(b), "version = 2\n", "", 1)
	if !strings.Contains(handler, `runtime_type = "`+runtimeType+`"`) {
		t.Fatalf("deploy/containerd/cloister.toml does not name runtime type %s", runtimeType)
	}
	return fmt.Sprintf(`
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = %q
  conf_dir = %q
`, criImage, filepath.Join(dir, "cni-bin"), filepath.Join(dir, "cni-conf")) + handler
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestCRI runs a pod with the "cloister" runtime handler (what a
// RuntimeClass with handler: cloister selects) through containerd's CRI
// plugin, as the kubelet would: sandbox, an echo container whose port is
// published and reached over TCP, a container whose exit code and debug
// console reach CRI's status and log, stop and removal.
//
// The pod uses the node's network namespace (hostNetwork: no CNI plugin
// is configured); publishing into a pod's own namespace is the same code
// path as TestContainerd's --with-ns network namespace.
func TestCRI(t *testing.T) {
	dir := t.TempDir()
	srv := startEgressServers(t)
	n := startNodeWith(t, srv.config, criPlugin(t, dir))
	archive := filepath.Join(n.dir, "app.tar")
	writeImage(t, archive, n.app, criImage)
	if _, _, err := n.ctrIn("k8s.io", "image", "import", archive); err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("unix://"+n.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rs := runtimeapi.NewRuntimeServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := rs.Version(ctx, &runtimeapi.VersionRequest{}); err != nil {
		t.Fatalf("CRI Version: %v", err)
	}

	port := freePort(t)
	logs := filepath.Join(dir, "logs")
	podCfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "enclave-pod", Namespace: "default", Uid: "0d9a0a52-uid"},
		Hostname:     "enclave-pod",
		LogDirectory: logs,
		Annotations: map[string]string{
			shim.AnnotationPorts:   strconv.Itoa(port) + ":5000",
			"unrelated/annotation": "not passed on",
		},
		Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
			NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE},
		}},
	}
	pod, err := rs.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podCfg, RuntimeHandler: "cloister"})
	if err != nil {
		b, _ := os.ReadFile(n.logPath)
		t.Fatalf("RunPodSandbox: %v\ncontainerd log:\n%s", err, tail(string(b), 40))
	}
	podID := pod.PodSandboxId

	createOnly := func(name string, args []string, annotations map[string]string, res *runtimeapi.LinuxContainerResources) string {
		t.Helper()
		c, err := rs.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
			PodSandboxId: podID,
			Config: &runtimeapi.ContainerConfig{
				Metadata:    &runtimeapi.ContainerMetadata{Name: name},
				Image:       &runtimeapi.ImageSpec{Image: criImage},
				Command:     args,
				LogPath:     name + ".log",
				Annotations: annotations,
				Linux:       &runtimeapi.LinuxContainerConfig{Resources: res},
			},
			SandboxConfig: podCfg,
		})
		if err != nil {
			t.Fatalf("CreateContainer %s: %v", name, err)
		}
		return c.ContainerId
	}
	create := func(name string, args []string, annotations map[string]string, res *runtimeapi.LinuxContainerResources) string {
		t.Helper()
		id := createOnly(name, args, annotations, res)
		if _, err := rs.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: id}); err != nil {
			t.Fatalf("StartContainer %s: %v", name, err)
		}
		return id
	}
	status := func(id string) *runtimeapi.ContainerStatus {
		t.Helper()
		st, err := rs.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
		if err != nil {
			t.Fatal(err)
		}
		return st.Status
	}
	waitExited := func(id string) *runtimeapi.ContainerStatus {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for {
			st := status(id)
			if st.State == runtimeapi.ContainerState_CONTAINER_EXITED {
				return st
			}
			if time.Now().After(deadline) {
				t.Fatalf("container %s still %s", id, st.State)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	// A debug-mode container that exits 7: status and log (first: the
	// node has 2 CPUs, which the echo container then takes).
	crashID := create("crash", []string{"/bin/enclaveapp", "crash", "7"}, map[string]string{shim.AnnotationDebug: "true"}, nil)
	st := waitExited(crashID)
	if st.ExitCode != 7 {
		t.Fatalf("exit code %d, want 7", st.ExitCode)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(filepath.Join(logs, "crash.log"))
		if strings.Contains(string(b), " stdout ") && strings.Contains(string(b), "crashing with status 7") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("container log:\n%s\nwant the debug console", b)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// A container whose annotation narrows its enclave's egress to server
	// a (the daemon permits a and b): its log shows a reached, b refused.
	egressID := create("egress", []string{"/bin/enclaveapp", "egress", srv.a, srv.b},
		map[string]string{shim.AnnotationDebug: "true", shim.AnnotationEgressAllow: srv.a}, nil)
	if st := waitExited(egressID); st.ExitCode != 0 {
		t.Fatalf("egress container: exit code %d", st.ExitCode)
	}
	deadline = time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(filepath.Join(logs, "egress.log"))
		if strings.Contains(string(b), "EGRESS DONE") {
			for _, want := range []string{"EGRESS " + srv.a + ": ok: server-a", "EGRESS " + srv.b + ": refused: 403"} {
				if !strings.Contains(string(b), want) {
					t.Errorf("egress container log: want %q in:\n%s", want, b)
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("egress container log:\n%s\nwant the egress outcomes", b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// One whose annotation would widen the daemon's allowlist does not
	// start, and says why in its CRI status.
	widerID := createOnly("egress-wider", []string{"/bin/enclaveapp", "egress", srv.c},
		map[string]string{shim.AnnotationEgressAllow: srv.c}, nil)
	_, err = rs.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: widerID})
	if err == nil || !strings.Contains(err.Error(), "not within the daemon's egress allowlist") {
		t.Fatalf("StartContainer with an annotation wider than the daemon's allowlist: %v; want it refused", err)
	}
	if st := status(widerID); st.State != runtimeapi.ContainerState_CONTAINER_EXITED || st.Reason != "StartError" ||
		!strings.Contains(st.Message, "not within the daemon's egress allowlist") || !strings.Contains(st.Message, srv.c) {
		t.Fatalf("status of the refused container: %s, reason %q, message %q; want EXITED with the daemon's refusal", st.State, st.Reason, st.Message)
	}

	// An echo server: 2 CPUs and 300 MiB from its limits, its vsock port
	// 5000 on the pod's TCP port.
	echoID := create("echo", []string{"/bin/enclaveapp", "echo"}, nil,
		&runtimeapi.LinuxContainerResources{CpuQuota: 200000, CpuPeriod: 100000, MemoryLimitInBytes: 300 << 20})
	if st := status(echoID); st.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Fatalf("echo container %s", st.State)
	}
	d, err := n.d.Client.DescribeEnclave(ctx, "k8s.io-"+echoID)
	if err != nil {
		t.Fatal(err)
	}
	if d.State != parent.StateRunning || d.NumberOfCPUs != 2 || d.MemoryMiB != 300 {
		t.Fatalf("enclave of the echo container: %s, %d CPUs, %d MiB; want RUNNING, 2, 300", d.State, d.NumberOfCPUs, d.MemoryMiB)
	}
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), 10*time.Second)
	if err != nil {
		t.Fatalf("the pod's published port: %v", err)
	}
	if got := echo(t, c, "hello pod"); got != "hello pod" {
		t.Fatalf("echo through the pod's port: %q", got)
	}

	// Stop the echo container (kubelet: StopContainer with a grace period).
	if _, err := rs.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: echoID, Timeout: 10}); err != nil {
		t.Fatal(err)
	}
	if st := waitExited(echoID); st.ExitCode != 143 && st.ExitCode != 137 {
		t.Fatalf("stopped container exit code %d, want 143 (SIGTERM) or 137", st.ExitCode)
	}
	if d, err := n.d.Client.DescribeEnclave(ctx, "k8s.io-"+echoID); err != nil || d.State != parent.StateExited {
		t.Fatalf("enclave after StopContainer: %+v %v", d.State, err)
	}
	for _, id := range []string{echoID, crashID, egressID, widerID} {
		if _, err := rs.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: id}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := rs.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: podID}); err != nil {
		t.Fatal(err)
	}
	if _, err := rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: podID}); err != nil {
		t.Fatal(err)
	}
	if out, _, _ := n.ctrIn("k8s.io", "task", "ls", "-q"); strings.TrimSpace(out) != "" {
		t.Fatalf("tasks left after the pod was removed: %q", out)
	}
}
