package shim_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/sys/unix"

	"github.com/cloister/cloister/internal/testenv"
	"github.com/cloister/cloister/parent"
	"github.com/cloister/cloister/parent/parenttest"
	"github.com/cloister/cloister/parent/shim"
)

func TestMain(m *testing.M) {
	code := m.Run()
	parenttest.Cleanup()
	os.Exit(code)
}

const daemonConfig = `---
memory_mib: 2048
heartbeat_timeout: 60s
`

// runtimeType is the containerd runtime that resolves to
// containerd-shim-cloister-v2 on PATH.
const runtimeType = "io.containerd.cloister.v2"

// node is a Cloister daemon (sandbox backend) and a containerd (Debian's)
// whose PATH holds the shim, each with private directories and sockets.
type node struct {
	t       testing.TB
	d       *parenttest.Daemon
	dir     string
	sock    string
	cache   string
	ctrPath string
	logPath string
	app     string // enclaveapp, static
}

func startNode(t testing.TB) *node { return startNodeWith(t, "", "") }

// startNodeWith starts a node; daemonExtra is added to the daemon's
// configuration; criPlugin, when not empty, is the CRI plugin's
// configuration (the plugin is disabled otherwise).
func startNodeWith(t testing.TB, daemonExtra, criPlugin string) *node {
	t.Helper()
	testenv.RequireRoot(t)
	ctd := testenv.LookPath(t, "containerd", "apt-get install containerd")
	ctrPath := testenv.LookPath(t, "ctr", "apt-get install containerd")
	d := parenttest.StartDaemon(t, "sandbox", daemonConfig+daemonExtra)
	dir := parenttest.ShortTemp(t)
	bin := filepath.Join(dir, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	parenttest.BuildProgram(t, bin, "containerd-shim-cloister-v2", "./cmd/containerd-shim-cloister-v2")
	n := &node{t: t, d: d, dir: dir, sock: filepath.Join(dir, "c.sock"), cache: filepath.Join(dir, "cache"),
		ctrPath: ctrPath, logPath: filepath.Join(dir, "containerd.log"),
		app: parenttest.BuildProgram(t, dir, "enclaveapp", "./e2e/testdata/enclaveapp")}
	disabled := `disabled_plugins = ["io.containerd.grpc.v1.cri"]`
	if criPlugin != "" {
		disabled = ""
	}
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
%s
[grpc]
  address = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), disabled, n.sock) + criPlugin
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(n.logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(ctd, "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(),
		"PATH="+bin+":"+os.Getenv("PATH"),
		"CLOISTER_SOCKET="+d.Socket,
		shim.EnvInit+"="+parenttest.Init(t),
		shim.EnvCache+"="+n.cache,
		shim.EnvShimSocketDir+"="+filepath.Join(dir, "s"),
	)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(waited) }()
	t.Cleanup(func() {
		// Remove every container (their shims exit), then stop containerd.
		for _, ns := range []string{"test", "k8s.io"} {
			out, _, _ := n.ctrIn(ns, "task", "ls", "-q")
			for _, id := range strings.Fields(out) {
				n.ctrIn(ns, "task", "kill", "-s", "SIGKILL", id)
				n.ctrIn(ns, "task", "delete", "-f", id)
			}
			out, _, _ = n.ctrIn(ns, "container", "ls", "-q")
			for _, id := range strings.Fields(out) {
				n.ctrIn(ns, "container", "rm", id)
			}
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-waited:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-waited
		}
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(n.logPath)
			t.Logf("containerd log:\n%s", tail(string(b), 60))
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, code, _ := n.ctr("version"); code == 0 {
			break
		}
		select {
		case <-waited:
			b, _ := os.ReadFile(n.logPath)
			t.Fatalf("containerd exited:\n%s", b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("containerd did not come up")
		}
		time.Sleep(100 * time.Millisecond)
	}
	return n
}

// egressServers are three HTTP servers on loopback, each answering its
// name ("server-a", …), of which the daemon's egress allowlist permits
// the first two.
type egressServers struct {
	a, b, c string // host:port
	// config is the daemon configuration's egress section.
	config string
}

func startEgressServers(t testing.TB) egressServers {
	t.Helper()
	var s egressServers
	var doc strings.Builder
	doc.WriteString("allowlist:\n")
	for i, addr := range []*string{&s.a, &s.b, &s.c} {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		body := "server-" + string(rune('a'+i))
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, body) })}
		go func() { _ = srv.Serve(l) }()
		t.Cleanup(func() { srv.Close() })
		*addr = l.Addr().String()
		if i < 2 {
			fmt.Fprintf(&doc, "- {address: 127.0.0.1, port: %d}\n", l.Addr().(*net.TCPAddr).Port)
		}
	}
	path := filepath.Join(t.TempDir(), "egress-allowlist.yaml")
	if err := os.WriteFile(path, []byte(doc.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	s.config = "egress:\n  allowlist: " + path + "\n"
	return s
}

func tail(s string, lines int) string {
	l := strings.Split(s, "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

// ctr runs ctr against this containerd in namespace "test" and returns
// its stdout, exit code and an error carrying its stderr (nil only when
// the code is 0 and stderr is empty: ctr reports a task's non-zero exit
// status on delete as a warning).
func (n *node) ctr(args ...string) (string, int, error) { return n.ctrIn("test", args...) }

// ctrIn is ctr in containerd namespace ns.
func (n *node) ctrIn(ns string, args ...string) (string, int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, n.ctrPath, append([]string{"--address", n.sock, "-n", ns}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			return out.String(), -1, err
		}
		code = ee.ExitCode()
	}
	if code != 0 || errb.Len() > 0 {
		return out.String(), code, fmt.Errorf("ctr %s: exit %d: %s", strings.Join(args, " "), code, errb.String())
	}
	return out.String(), 0, nil
}

// rootfs makes a container root file system holding the test app.
func (n *node) rootfs(name string) string {
	n.t.Helper()
	dir := filepath.Join(n.dir, name)
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		n.t.Fatal(err)
	}
	b, err := os.ReadFile(n.app)
	if err != nil {
		n.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "enclaveapp"), b, 0o755); err != nil {
		n.t.Fatal(err)
	}
	return dir
}

func (n *node) describe(id string) parent.EnclaveDescription {
	n.t.Helper()
	d, err := n.d.Client.DescribeEnclave(context.Background(), "test-"+id)
	if err != nil {
		n.t.Fatalf("describe enclave of container %s: %v", id, err)
	}
	return d
}

func (n *node) cached() int {
	es, _ := filepath.Glob(filepath.Join(n.cache, "*.eif"))
	return len(es)
}

// newNetNS makes a network namespace with its loopback up (a pod's) and
// returns its path.
func newNetNS(t testing.TB) string {
	t.Helper()
	ip := testenv.LookPath(t, "ip", "apt-get install iproute2")
	name := fmt.Sprintf("cloister-shim-%d", time.Now().UnixNano()%1e9)
	for _, args := range [][]string{{"netns", "add", name}, {"netns", "exec", name, "ip", "link", "set", "lo", "up"}} {
		if b, err := exec.Command(ip, args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, b)
		}
	}
	t.Cleanup(func() { _ = exec.Command(ip, "netns", "delete", name).Run() })
	return "/var/run/netns/" + name
}

// dialInNetNS connects to addr from inside the network namespace nsPath.
func dialInNetNS(t testing.TB, nsPath, addr string) net.Conn {
	t.Helper()
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		f, err := os.Open(nsPath)
		if err != nil {
			ch <- result{nil, err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{nil, err}
			return
		}
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		ch <- result{c, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatalf("dial %s in %s: %v", addr, nsPath, r.err)
	}
	return r.c
}

func echo(t testing.TB, c net.Conn, msg string) string {
	t.Helper()
	defer c.Close()
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	_ = c.(*net.TCPConn).CloseWrite()
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read the echo: %v", err)
	}
	return string(b)
}

// TestContainerd runs containers through Debian's containerd and ctr with
// runtime io.containerd.cloister.v2: each is an enclave of the local
// daemon, built from the container's root file system and process.
func TestContainerd(t *testing.T) {
	srv := startEgressServers(t)
	n := startNodeWith(t, srv.config, "")
	rootfs := n.rootfs("rootfs")

	t.Run("output-and-exit-code", func(t *testing.T) {
		out, code, _ := n.ctr("run", "--rm", "--runtime", runtimeType, "--annotation", shim.AnnotationDebug+"=true",
			"--rootfs", rootfs, "crash7", "/bin/enclaveapp", "crash", "7")
		if code != 7 || !strings.Contains(out, "crashing with status 7") {
			t.Fatalf("ctr run: exit %d, output:\n%s\nwant exit 7 and the app's output", code, out)
		}
		if _, code, _ := n.ctr("run", "--rm", "--runtime", runtimeType, "--rootfs", rootfs, "crash0", "/bin/enclaveapp", "crash", "0"); code != 0 {
			t.Fatalf("exit 0 reported as %d", code)
		}
	})

	t.Run("image-cache", func(t *testing.T) {
		before := n.cached()
		if _, code, err := n.ctr("run", "--rm", "--runtime", runtimeType, "--rootfs", rootfs, "again", "/bin/enclaveapp", "crash", "7"); code != 7 {
			t.Fatalf("exit %d: %v", code, err)
		}
		if after := n.cached(); after != before {
			t.Fatalf("the same root file system and process built a new image: %d images, was %d", after, before)
		}
		if _, code, err := n.ctr("run", "--rm", "--runtime", runtimeType, "--rootfs", rootfs, "other", "/bin/enclaveapp", "crash", "8"); code != 8 {
			t.Fatalf("exit %d: %v", code, err)
		}
		if after := n.cached(); after != before+1 {
			t.Fatalf("another process: %d images, want %d", after, before+1)
		}
	})

	t.Run("resources-ports-kill-delete", func(t *testing.T) {
		ns := newNetNS(t)
		const id = "echo"
		_, _, err := n.ctr("run", "-d", "--runtime", runtimeType, "--cpus", "2", "--memory-limit", strconv.Itoa(300<<20),
			"--annotation", shim.AnnotationPorts+"=8080:5000", "--with-ns", "network:"+ns,
			"--rootfs", rootfs, id, "/bin/enclaveapp", "echo")
		if err != nil {
			t.Fatal(err)
		}
		d := n.describe(id)
		if d.State != parent.StateRunning || d.NumberOfCPUs != 2 || d.MemoryMiB != 300 {
			t.Fatalf("enclave %s: state %s, %d CPUs, %d MiB; want RUNNING with the container's 2 CPUs and 300 MiB", d.EnclaveName, d.State, d.NumberOfCPUs, d.MemoryMiB)
		}
		out, _, err := n.ctr("task", "ls")
		if err != nil || !strings.Contains(out, strconv.Itoa(d.ProcessID)) || !strings.Contains(out, "RUNNING") {
			t.Fatalf("task ls: %v\n%s\nwant the enclave's process %d RUNNING", err, out, d.ProcessID)
		}
		for i := range 3 {
			msg := fmt.Sprintf("hello %d over TCP in the pod's network namespace", i)
			if got := echo(t, dialInNetNS(t, ns, "127.0.0.1:8080"), msg); got != msg {
				t.Fatalf("echo through TCP 8080 → vsock 5000: %q, want %q", got, msg)
			}
		}
		if _, _, err := n.ctr("task", "kill", "-s", "SIGKILL", id); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(time.Minute)
		for {
			out, _, _ := n.ctr("task", "ls")
			if strings.Contains(out, "STOPPED") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("task not STOPPED after kill:\n%s", out)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if d := n.describe(id); d.State != parent.StateExited {
			t.Fatalf("enclave after kill: %s", d.State)
		}
		_, _, err = n.ctr("task", "delete", id)
		if err == nil || !strings.Contains(err.Error(), "137") {
			t.Fatalf("task delete after SIGKILL: %v; want the warning about exit code 137", err)
		}
		if out, _, _ := n.ctr("task", "ls", "-q"); strings.TrimSpace(out) != "" {
			t.Fatalf("tasks after delete: %q", out)
		}
		if _, _, err := n.ctr("container", "rm", id); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("measurements", func(t *testing.T) {
		const id = "measured"
		if _, _, err := n.ctr("run", "-d", "--runtime", runtimeType, "--rootfs", rootfs, id, "/bin/enclaveapp", "echo"); err != nil {
			t.Fatal(err)
		}
		bundle := filepath.Join(n.dir, "state", "io.containerd.runtime.v2.task", "test", id)
		b, err := os.ReadFile(filepath.Join(bundle, shim.MeasurementsFile))
		if err != nil {
			t.Fatal(err)
		}
		var got parent.EnclaveDescription
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatal(err)
		}
		desc := n.describe(id)
		if want := desc.Measurements; got.Measurements != want || len(want.PCR0) != 96 {
			t.Fatalf("bundle measurements %+v, want the daemon's %+v", got.Measurements, want)
		}
		// The container's labels (ctr c info) carry them too.
		wantLabels := map[string]string{shim.LabelPCR0: desc.Measurements.PCR0, shim.LabelPCR1: desc.Measurements.PCR1,
			shim.LabelPCR2: desc.Measurements.PCR2, shim.LabelEnclaveID: desc.EnclaveID}
		deadline := time.Now().Add(30 * time.Second)
		for {
			out, _, err := n.ctr("container", "info", id)
			if err != nil {
				t.Fatal(err)
			}
			var info struct {
				Labels map[string]string `json:"Labels"`
			}
			if err := json.Unmarshal([]byte(out), &info); err != nil {
				t.Fatalf("ctr container info: %v\n%s", err, out)
			}
			gotLabels := map[string]string{}
			for k := range wantLabels {
				if v, ok := info.Labels[k]; ok {
					gotLabels[k] = v
				}
			}
			if cmp.Equal(wantLabels, gotLabels) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("container labels (-want +got):\n%s", cmp.Diff(wantLabels, gotLabels))
			}
			time.Sleep(50 * time.Millisecond)
		}
		if _, _, err := n.ctr("task", "kill", id); err != nil {
			t.Fatal(err)
		}
		for {
			if out, _, _ := n.ctr("task", "ls"); strings.Contains(out, "STOPPED") {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if _, _, err := n.ctr("task", "delete", id); err == nil || !strings.Contains(err.Error(), "143") {
			t.Fatalf("task delete after SIGTERM: %v; want exit code 143", err)
		}
		if _, _, err := n.ctr("container", "rm", id); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("image-from-snapshotter", func(t *testing.T) {
		// An image imported into containerd: the shim mounts the
		// snapshotter's overlay and builds from it.
		archive := filepath.Join(n.dir, "app.tar")
		writeImage(t, archive, n.app, "cloister.test/app:1")
		if _, _, err := n.ctr("image", "import", archive); err != nil {
			t.Fatal(err)
		}
		out, code, _ := n.ctr("run", "--rm", "--runtime", runtimeType, "--annotation", shim.AnnotationDebug+"=true",
			"cloister.test/app:1", "fromimage", "/bin/enclaveapp", "crash", "3")
		if code != 3 || !strings.Contains(out, "crashing with status 3") {
			t.Fatalf("ctr run of an imported image: exit %d:\n%s", code, out)
		}
	})

	t.Run("egress-annotation", func(t *testing.T) {
		// The daemon permits servers a and b; the container's annotation
		// narrows its enclave's egress to a alone.
		out, code, err := n.ctr("run", "--rm", "--runtime", runtimeType, "--annotation", shim.AnnotationDebug+"=true",
			"--annotation", shim.AnnotationEgressAllow+"="+srv.a, "--rootfs", rootfs, "egress", "/bin/enclaveapp", "egress", srv.a, srv.b)
		if code != 0 || !strings.Contains(out, "EGRESS DONE") {
			t.Fatalf("ctr run: exit %d, %v:\n%s", code, err, out)
		}
		for _, want := range []string{"EGRESS " + srv.a + ": ok: server-a", "EGRESS " + srv.b + ": refused: 403"} {
			if !strings.Contains(out, want) {
				t.Errorf("egress of a container allowed %s: want %q in its output:\n%s", srv.a, want, out)
			}
		}
		// Without the annotation the daemon's allowlist applies.
		out, code, err = n.ctr("run", "--rm", "--runtime", runtimeType, "--annotation", shim.AnnotationDebug+"=true",
			"--rootfs", rootfs, "egress-all", "/bin/enclaveapp", "egress", srv.a, srv.b)
		if code != 0 || !strings.Contains(out, "EGRESS "+srv.b+": ok: server-b") {
			t.Errorf("container without the annotation: exit %d, %v:\n%s\nwant server b reached", code, err, out)
		}
		// An annotation cannot widen the daemon's allowlist: the start fails.
		_, code, err = n.ctr("run", "--rm", "--runtime", runtimeType, "--annotation", shim.AnnotationEgressAllow+"="+srv.a+","+srv.c,
			"--rootfs", rootfs, "egress-wider", "/bin/enclaveapp", "egress", srv.c)
		if code == 0 || err == nil || !strings.Contains(err.Error(), "not within the daemon's egress allowlist") || !strings.Contains(err.Error(), srv.c) {
			t.Errorf("annotation wider than the daemon's allowlist: exit %d, %v; want the launch refused, naming %s", code, err, srv.c)
		}
		if d, err := n.d.Client.DescribeEnclave(context.Background(), "test-egress-wider"); err == nil {
			t.Errorf("an enclave was launched for the refused container: %s", d.State)
		}
		// An invalid annotation fails Create.
		_, code, err = n.ctr("run", "--rm", "--runtime", runtimeType, "--annotation", shim.AnnotationEgressAllow+"=kms.example",
			"--rootfs", rootfs, "egress-bad", "/bin/enclaveapp", "egress", srv.a)
		if code == 0 || err == nil || !strings.Contains(err.Error(), shim.AnnotationEgressAllow) {
			t.Errorf("invalid annotation: exit %d, %v; want Create refused, naming the annotation", code, err)
		}
	})

	t.Run("refused", func(t *testing.T) {
		_, code, err := n.ctr("run", "--rm", "--runtime", runtimeType, "--annotation", shim.AnnotationPorts+"=notaport",
			"--rootfs", rootfs, "badports", "/bin/enclaveapp", "echo")
		if code == 0 || !strings.Contains(err.Error(), shim.AnnotationPorts) {
			t.Fatalf("bad ports annotation: exit %d, %v", code, err)
		}
		_, code, err = n.ctr("run", "--rm", "--runtime", runtimeType, "--memory-limit", strconv.Itoa(1<<40),
			"--rootfs", rootfs, "toobig", "/bin/enclaveapp", "echo")
		if code == 0 || !strings.Contains(err.Error(), "MiB") {
			t.Fatalf("1 TiB of memory: exit %d, %v", code, err)
		}
	})
}

// writeImage writes a docker-save archive of an image holding app at
// /bin/enclaveapp.
func writeImage(t testing.TB, path, app, ref string) {
	t.Helper()
	b, err := os.ReadFile(app)
	if err != nil {
		t.Fatal(err)
	}
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	for _, h := range []*tar.Header{
		{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "bin/enclaveapp", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(b))},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(layer.Bytes())), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.Config(img, v1.Config{Cmd: []string{"/bin/enclaveapp", "echo"}})
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.ConfigFile(img, withPlatform(t, img))
	if err != nil {
		t.Fatal(err)
	}
	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := tarball.WriteToFile(path, tag, img); err != nil {
		t.Fatal(err)
	}
}

func withPlatform(t testing.TB, img v1.Image) *v1.ConfigFile {
	t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	return cf
}
