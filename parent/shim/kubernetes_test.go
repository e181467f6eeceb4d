package shim_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"

	"github.com/cloister/cloister/internal/testenv"
	"github.com/cloister/cloister/parent"
	"github.com/cloister/cloister/parent/deviceplugin"
	"github.com/cloister/cloister/parent/parenttest"
	"github.com/cloister/cloister/parent/shim"
)

// k8sNode is the node name the kubelet registers. The kubelet refuses a
// loopback node IP, so the API server reaches it by its Hostname address,
// which is the node name: "localhost" keeps that on loopback.
const k8sNode = "localhost"

// TestKubernetes runs a pod with runtimeClassName: cloister on a
// single-node Kubernetes assembled on this machine: etcd (Debian's
// etcd-server), kube-apiserver and kubelet built from k8s.io/kubernetes by
// scripts/build-k8s.sh ($CLOISTER_TEST_K8S_BIN), Debian's containerd with
// its CRI plugin and the cloister handler of deploy/containerd/cloister.toml,
// the Cloister daemon (sandbox backend) and the device plugin. There is no
// scheduler (the pod names its node) and no controller manager (the pod
// mounts no service-account token).
//
// The test creates deploy/kubernetes/runtimeclass.yaml as it is, sees the
// device plugin's resources in the node's capacity, runs a debug-mode echo
// enclave with CPU, memory and aws.ec2.nitro/nitro_enclaves limits, reads
// its log through the API server, reaches its published port, compares the
// measurement labels of its containerd container with the daemon's, and
// deletes the pod: the enclave ends.
func TestKubernetes(t *testing.T) {
	binDir := os.Getenv("CLOISTER_TEST_K8S_BIN")
	apiserverBin, kubeletBin := filepath.Join(binDir, "kube-apiserver"), filepath.Join(binDir, "kubelet")
	testenv.Require(t, binDir != "" && isExecutable(apiserverBin) && isExecutable(kubeletBin),
		"kube-apiserver and kubelet in $CLOISTER_TEST_K8S_BIN",
		"export CLOISTER_TEST_K8S_BIN=$(bash scripts/build-k8s.sh)")
	etcdBin := testenv.LookPath(t, "etcd", "apt-get install etcd-server")
	testenv.RequireRoot(t)

	dir := parenttest.ShortTemp(t)
	n := startNodeWith(t, "", criPlugin(t, dir))
	archive := filepath.Join(n.dir, "app.tar")
	writeImage(t, archive, n.app, criImage)
	if _, _, err := n.ctrIn("k8s.io", "image", "import", archive); err != nil {
		t.Fatal(err)
	}

	pki := newTestPKI(t, filepath.Join(dir, "pki"))
	etcdURL := startEtcd(t, etcdBin, dir)
	api := startAPIServer(t, apiserverBin, dir, pki, etcdURL)
	startKubelet(t, kubeletBin, dir, pki, api, n.sock)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	// The device plugin registers with this kubelet once its registration
	// socket is there.
	api.waitFor(t, time.Minute, "the kubelet's device-plugin registration socket", func() (bool, string) {
		_, err := os.Stat(filepath.Join(devicePluginDir, "kubelet.sock"))
		return err == nil, fmt.Sprint(err)
	})
	pluginCtx, stopPlugin := context.WithCancel(ctx)
	pluginDone := make(chan error, 1)
	go func() {
		pluginDone <- deviceplugin.Run(pluginCtx, deviceplugin.Config{Daemon: n.d.Client,
			Dir: devicePluginDir, Poll: time.Second})
	}()
	defer func() {
		stopPlugin()
		if err := <-pluginDone; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("device plugin: %v", err)
		}
	}()

	info, err := n.d.Client.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wantCapacity := map[string]string{
		deviceplugin.ResourceNitroEnclaves: strconv.Itoa(len(info.CPUPool)),
		deviceplugin.ResourceCPU:           strconv.Itoa(len(info.CPUPool)),
		deviceplugin.ResourceMemory:        strconv.Itoa(info.MemoryMiB / deviceplugin.DefaultMemoryUnitMiB),
	}
	var node struct {
		Status struct {
			Capacity map[string]string `json:"capacity"`
		} `json:"status"`
	}
	api.waitFor(t, time.Minute, "the node's capacity to show the device plugin's resources", func() (bool, string) {
		code, body := api.do(t, http.MethodGet, "/api/v1/nodes/"+k8sNode, "", nil)
		if code != http.StatusOK {
			return false, fmt.Sprintf("GET node: %d %s", code, body)
		}
		node.Status.Capacity = nil
		if err := json.Unmarshal(body, &node); err != nil {
			t.Fatalf("node: %v", err)
		}
		got := map[string]string{}
		for r := range wantCapacity {
			if v, ok := node.Status.Capacity[r]; ok {
				got[r] = v
			}
		}
		return cmp.Equal(wantCapacity, got), cmp.Diff(wantCapacity, got)
	})
	t.Logf("node %s capacity: %v", k8sNode, node.Status.Capacity)

	// The RuntimeClass, exactly as deployed.
	rc, err := os.ReadFile(filepath.Join(parenttest.RepoRoot(), "deploy", "kubernetes", "runtimeclass.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if code, body := api.do(t, http.MethodPost, "/apis/node.k8s.io/v1/runtimeclasses", "application/yaml", rc); code != http.StatusCreated {
		t.Fatalf("create the RuntimeClass: %d %s", code, body)
	}

	// Every other manifest of deploy/kubernetes passes the API server's
	// validation, unknown fields refused (a dry run: nothing is stored).
	dryRunManifests(t, api)

	port := freePort(t)
	pod := map[string]any{
		"apiVersion": "v1", "kind": "Pod",
		"metadata": map[string]any{"name": "enclave", "namespace": "default", "annotations": map[string]string{
			shim.AnnotationDebug: "true",
			shim.AnnotationPorts: strconv.Itoa(port) + ":5000",
		}},
		"spec": map[string]any{
			"nodeName":                      k8sNode,
			"runtimeClassName":              "cloister",
			"hostNetwork":                   true,
			"dnsPolicy":                     "Default",
			"automountServiceAccountToken":  false,
			"enableServiceLinks":            false,
			"restartPolicy":                 "Never",
			"terminationGracePeriodSeconds": 10,
			"containers": []any{map[string]any{
				"name": "app", "image": criImage, "imagePullPolicy": "Never",
				"command": []string{"/bin/enclaveapp", "echo"},
				"resources": map[string]any{"limits": map[string]string{
					"cpu": "1", "memory": "256Mi", deviceplugin.ResourceNitroEnclaves: "1",
				}},
			}},
		},
	}
	body, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	if code, body := api.do(t, http.MethodPost, "/api/v1/namespaces/default/pods", "application/json", body); code != http.StatusCreated {
		t.Fatalf("create the pod: %d %s", code, body)
	}

	type podStatus struct {
		Spec struct {
			NodeSelector map[string]string `json:"nodeSelector"`
		} `json:"spec"`
		Status struct {
			Phase             string `json:"phase"`
			Reason            string `json:"reason"`
			Message           string `json:"message"`
			ContainerStatuses []struct {
				ContainerID string          `json:"containerID"`
				State       json.RawMessage `json:"state"`
				Ready       bool            `json:"ready"`
			} `json:"containerStatuses"`
		} `json:"status"`
	}
	var ps podStatus
	api.waitFor(t, 3*time.Minute, "the pod to run", func() (bool, string) {
		code, body := api.do(t, http.MethodGet, "/api/v1/namespaces/default/pods/enclave", "", nil)
		if code != http.StatusOK {
			return false, fmt.Sprintf("GET pod: %d %s", code, body)
		}
		ps = podStatus{}
		if err := json.Unmarshal(body, &ps); err != nil {
			t.Fatalf("pod: %v", err)
		}
		return ps.Status.Phase == "Running" && len(ps.Status.ContainerStatuses) == 1 && ps.Status.ContainerStatuses[0].Ready, string(body)
	})
	// The RuntimeClass's scheduling constraint reached the pod.
	if ps.Spec.NodeSelector["cloister.dev/enclaves"] != "true" {
		t.Errorf("pod node selector %v; want the RuntimeClass's cloister.dev/enclaves=true", ps.Spec.NodeSelector)
	}
	containerID, ok := strings.CutPrefix(ps.Status.ContainerStatuses[0].ContainerID, "containerd://")
	if !ok {
		t.Fatalf("container ID %q", ps.Status.ContainerStatuses[0].ContainerID)
	}

	// The enclave: RUNNING with the container's limits.
	enclaveName := "k8s.io-" + containerID
	d, err := n.d.Client.DescribeEnclave(ctx, enclaveName)
	if err != nil {
		t.Fatal(err)
	}
	if d.State != parent.StateRunning || d.NumberOfCPUs != 1 || d.MemoryMiB != 256 {
		t.Fatalf("enclave %s: %s, %d CPUs, %d MiB; want RUNNING with the pod's limits, 1 CPU and 256 MiB", enclaveName, d.State, d.NumberOfCPUs, d.MemoryMiB)
	}

	t.Logf("pod enclave: container %s, enclave %s %s, %d CPU, %d MiB, PCR0 %s", containerID, d.EnclaveName, d.State, d.NumberOfCPUs, d.MemoryMiB, d.Measurements.PCR0)

	// The debug console is the container log, read through the API server
	// (which asks the kubelet).
	var podLog string
	api.waitFor(t, time.Minute, "the pod's log to show the enclave's console", func() (bool, string) {
		code, body := api.do(t, http.MethodGet, "/api/v1/namespaces/default/pods/enclave/log?container=app", "", nil)
		podLog = string(body)
		return code == http.StatusOK && strings.Contains(podLog, "ECHO READY"), fmt.Sprintf("%d %s", code, body)
	})
	t.Logf("pod log through the API server:\n%s", tail(podLog, 5))

	// The published port reaches the enclave's vsock port 5000.
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), 10*time.Second)
	if err != nil {
		t.Fatalf("the pod's published port: %v", err)
	}
	if got := echo(t, c, "hello from a Kubernetes pod"); got != "hello from a Kubernetes pod" {
		t.Fatalf("echo through the pod's port: %q", got)
	}

	// The measurements are the labels of the pod's containerd container.
	out, _, err := n.ctrIn("k8s.io", "container", "info", containerID)
	if err != nil {
		t.Fatal(err)
	}
	var cinfo struct {
		Labels map[string]string `json:"Labels"`
	}
	if err := json.Unmarshal([]byte(out), &cinfo); err != nil {
		t.Fatalf("ctr container info: %v", err)
	}
	wantLabels := map[string]string{shim.LabelPCR0: d.Measurements.PCR0, shim.LabelPCR1: d.Measurements.PCR1,
		shim.LabelPCR2: d.Measurements.PCR2, shim.LabelEnclaveID: d.EnclaveID}
	gotLabels := map[string]string{}
	for k := range wantLabels {
		gotLabels[k] = cinfo.Labels[k]
	}
	if diff := cmp.Diff(wantLabels, gotLabels); diff != "" || len(d.Measurements.PCR0) != 96 {
		t.Errorf("measurement labels of the pod's container (-daemon +labels):\n%s", diff)
	}

	// Deleting the pod ends the enclave; the kubelet removes the pod once
	// its container stopped.
	if code, body := api.do(t, http.MethodDelete, "/api/v1/namespaces/default/pods/enclave", "", nil); code != http.StatusOK {
		t.Fatalf("delete the pod: %d %s", code, body)
	}
	api.waitFor(t, 2*time.Minute, "the pod to be deleted", func() (bool, string) {
		code, body := api.do(t, http.MethodGet, "/api/v1/namespaces/default/pods/enclave", "", nil)
		return code == http.StatusNotFound, fmt.Sprintf("%d %s", code, body)
	})
	d, err = n.d.Client.DescribeEnclave(ctx, enclaveName)
	var perr *parent.Error
	switch {
	case errors.As(err, &perr) && perr.Status == http.StatusNotFound:
	case err != nil:
		t.Fatal(err)
	case d.State != parent.StateExited:
		t.Fatalf("enclave after the pod's deletion: %s, want EXITED", d.State)
	}
	if running, err := n.d.Client.Describe(ctx, false); err != nil || len(running) != 0 {
		t.Fatalf("running enclaves after the pod's deletion: %v %v", running, err)
	}
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// testPKI is a certificate authority and the certificates of a test
// cluster, as PEM files.
type testPKI struct {
	dir string
	ca  *x509.Certificate
	key *ecdsa.PrivateKey
}

func newTestPKI(t testing.TB, dir string) *testPKI {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "cloister-test-ca"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	p := &testPKI{dir: dir, ca: ca, key: key}
	writePEM(t, p.path("ca.crt"), "CERTIFICATE", der)
	return p
}

func (p *testPKI) path(name string) string { return filepath.Join(p.dir, name) }

// issue writes name.crt and name.key: a certificate for a server (ips and
// dnsNames set) or a client (cn, orgs).
func (p *testPKI) issue(t testing.TB, name, cn string, orgs []string, ips []net.IP, dnsNames []string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn, Organization: orgs},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		IPAddresses:  ips,
		DNSNames:     dnsNames,
	}
	if len(ips) > 0 || len(dnsNames) > 0 {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, p.path(name+".crt"), "CERTIFICATE", der)
	writeKey(t, p.path(name+".key"), key)
}

func writeKey(t testing.TB, path string, key *ecdsa.PrivateKey) {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, path, "PRIVATE KEY", der)
}

func writePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// startProcess starts a cluster component whose output goes to
// dir/name.log, stops it (SIGTERM, then SIGKILL) when the test ends, and
// shows the log's tail when the test failed. exited is closed when it
// exits.
func startProcess(t testing.TB, dir, name, bin string, args ...string) (logPath string, exited <-chan struct{}) {
	t.Helper()
	logPath = filepath.Join(dir, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("%s log:\n%s", name, tail(string(b), 60))
		}
	})
	return logPath, done
}

func startEtcd(t testing.TB, bin, dir string) string {
	t.Helper()
	client := "http://127.0.0.1:" + strconv.Itoa(freePort(t))
	peer := "http://127.0.0.1:" + strconv.Itoa(freePort(t))
	startProcess(t, dir, "etcd", bin,
		"--name", "default", "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "default="+peer, "--log-level", "warn")
	return client
}

// apiClient talks to the test cluster's API server as a member of
// system:masters.
type apiClient struct {
	url    string
	client *http.Client
	log    string
	exited <-chan struct{}
}

func startAPIServer(t testing.TB, bin, dir string, pki *testPKI, etcdURL string) *apiClient {
	t.Helper()
	pki.issue(t, "apiserver", "kube-apiserver", nil, []net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(10, 96, 0, 1)},
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"})
	pki.issue(t, "admin", "cloister-test-admin", []string{"system:masters"}, nil, nil)
	pki.issue(t, "apiserver-kubelet-client", "kube-apiserver-kubelet-client", []string{"system:masters"}, nil, nil)
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	writeKey(t, pki.path("sa.key"), saKey)
	pub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, pki.path("sa.pub"), "PUBLIC KEY", pub)

	port := freePort(t)
	logPath, exited := startProcess(t, dir, "kube-apiserver", bin,
		"--etcd-servers", etcdURL,
		"--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1", "--secure-port", strconv.Itoa(port),
		"--tls-cert-file", pki.path("apiserver.crt"), "--tls-private-key-file", pki.path("apiserver.key"),
		"--client-ca-file", pki.path("ca.crt"),
		"--authorization-mode", "AlwaysAllow",
		// deploy/kubernetes/node.yaml's DaemonSet is privileged.
		"--allow-privileged=true",
		"--service-cluster-ip-range", "10.96.0.0/24",
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", pki.path("sa.pub"), "--service-account-signing-key-file", pki.path("sa.key"),
		// No controller manager runs to create service accounts.
		"--disable-admission-plugins", "ServiceAccount",
		// The only address is loopback, which Endpoints may not hold.
		"--endpoint-reconciler-type", "none",
		"--kubelet-client-certificate", pki.path("apiserver-kubelet-client.crt"),
		"--kubelet-client-key", pki.path("apiserver-kubelet-client.key"),
		"--kubelet-certificate-authority", pki.path("ca.crt"),
		"--kubelet-preferred-address-types", "Hostname",
		"--cert-dir", filepath.Join(dir, "apiserver-certs"),
		"--profiling=false")
	cert, err := tls.LoadX509KeyPair(pki.path("admin.crt"), pki.path("admin.key"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(pki.ca)
	api := &apiClient{url: "https://127.0.0.1:" + strconv.Itoa(port), log: logPath, exited: exited,
		client: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		}}}
	api.waitFor(t, 2*time.Minute, "kube-apiserver to be ready", func() (bool, string) {
		code, body := api.do(t, http.MethodGet, "/readyz", "", nil)
		return code == http.StatusOK, fmt.Sprintf("%d %s", code, body)
	})
	return api
}

// do sends a request; code is -1 when it could not be sent.
func (a *apiClient) do(t testing.TB, method, path, contentType string, body []byte) (code int, respBody []byte) {
	t.Helper()
	req, err := http.NewRequest(method, a.url+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := a.client.Do(req)
	if err != nil {
		return -1, []byte(err.Error())
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return -1, []byte(err.Error())
	}
	return resp.StatusCode, b
}

// waitFor polls cond until it holds; on timeout the test fails with what
// it was waiting for and cond's last description.
func (a *apiClient) waitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, last := cond()
		if ok {
			return
		}
		select {
		case <-a.exited:
			b, _ := os.ReadFile(a.log)
			t.Fatalf("waiting for %s: kube-apiserver exited:\n%s", what, tail(string(b), 40))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; last: %s", what, last)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// kubeletSysctls are the kernel settings the kubelet sets at start
// (protectKernelDefaults: false); the test puts them back.
var kubeletSysctls = []string{"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes"}

// devicePluginDir is where the kubelet serves its device-plugin
// registration socket, whatever its --root-dir.
const devicePluginDir = "/var/lib/kubelet/device-plugins"

// claimDevicePluginDir makes sure no other kubelet serves devicePluginDir
// and removes what the test's kubelet and plugin leave there when the test
// ends (and the kubelet's fixed directories, if the test made them and
// they are empty).
func claimDevicePluginDir(t testing.TB) {
	t.Helper()
	sock := filepath.Join(devicePluginDir, "kubelet.sock")
	if c, err := net.DialTimeout("unix", sock, time.Second); err == nil {
		c.Close()
		t.Fatalf("a kubelet is already running on this machine (%s answers); stop it to run this test", sock)
	}
	// The kubelet also makes /var/log/containers (symbolic links to its
	// containers' logs, removed with the containers).
	var made []string
	for _, d := range []string{filepath.Dir(devicePluginDir), devicePluginDir, "/var/log/containers"} {
		if _, err := os.Stat(d); errors.Is(err, os.ErrNotExist) {
			made = append(made, d)
		}
	}
	t.Cleanup(func() {
		left, _ := filepath.Glob(filepath.Join(devicePluginDir, "cloister-*.sock"))
		for _, p := range append(left, sock, filepath.Join(devicePluginDir, "kubelet_internal_checkpoint")) {
			_ = os.Remove(p)
		}
		for i := len(made) - 1; i >= 0; i-- {
			_ = os.Remove(made[i])
		}
	})
}

// startKubelet runs the kubelet against containerd's CRI socket.
func startKubelet(t testing.TB, bin, dir string, pki *testPKI, api *apiClient, criSock string) {
	t.Helper()
	claimDevicePluginDir(t)
	saved := map[string][]byte{}
	for _, s := range kubeletSysctls {
		if b, err := os.ReadFile("/proc/sys/" + s); err == nil {
			saved[s] = b
		}
	}
	t.Cleanup(func() {
		for s, b := range saved {
			if err := os.WriteFile("/proc/sys/"+s, b, 0o644); err != nil {
				t.Errorf("restore sysctl %s: %v", s, err)
			}
		}
	})

	pki.issue(t, "kubelet-client", "system:node:"+k8sNode, []string{"system:nodes"}, nil, nil)
	pki.issue(t, "kubelet", k8sNode, nil, []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}, []string{k8sNode})
	root := filepath.Join(dir, "kubelet")
	kubeconfig := filepath.Join(dir, "kubelet.kubeconfig")
	if err := os.WriteFile(kubeconfig, fmt.Appendf(nil, `apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {server: %q, certificate-authority: %q}
users:
- name: kubelet
  user: {client-certificate: %q, client-key: %q}
contexts:
- name: test
  context: {cluster: test, user: kubelet}
current-context: test
`, api.url, pki.path("ca.crt"), pki.path("kubelet-client.crt"), pki.path("kubelet-client.key")), 0o600); err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(dir, "kubelet.yaml")
	if err := os.WriteFile(config, fmt.Appendf(nil, `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: %d
readOnlyPort: 0
healthzPort: 0
tlsCertFile: %q
tlsPrivateKeyFile: %q
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: %q}
authorization: {mode: AlwaysAllow}
containerRuntimeEndpoint: unix://%s
cgroupDriver: cgroupfs
# No QoS cgroup hierarchy (and so no node-allocatable enforcement) on the
# test machine's cgroups; cgroup v1 is still allowed in this release.
cgroupsPerQOS: false
enforceNodeAllocatable: []
failCgroupV1: false
failSwapOn: false
podLogsDir: %q
volumePluginDir: %q
imageGCHighThresholdPercent: 100
evictionHard: {memory.available: 1Mi, nodefs.available: 1%%, imagefs.available: 1%%, nodefs.inodesFree: 1%%}
`, freePort(t), pki.path("kubelet.crt"), pki.path("kubelet.key"), pki.path("ca.crt"), criSock,
		filepath.Join(dir, "pod-logs"), filepath.Join(dir, "volume-plugins")), 0o600); err != nil {
		t.Fatal(err)
	}
	logPath, exited := startProcess(t, dir, "kubelet", bin,
		"--config", config, "--kubeconfig", kubeconfig, "--root-dir", root,
		"--hostname-override", k8sNode,
		"--node-labels", "cloister.dev/enclaves=true",
		"--cert-dir", filepath.Join(dir, "kubelet-pki"), "--v", "2")
	api.waitFor(t, 2*time.Minute, "the kubelet to register its node", func() (bool, string) {
		select {
		case <-exited:
			b, _ := os.ReadFile(logPath)
			t.Fatalf("the kubelet exited:\n%s", tail(string(b), 40))
		default:
		}
		code, body := api.do(t, http.MethodGet, "/api/v1/nodes/"+k8sNode, "", nil)
		return code == http.StatusOK, fmt.Sprintf("%d %s", code, body)
	})
}

// dryRunManifests sends every document of deploy/kubernetes/*.yaml but the
// RuntimeClass (created for real) to the API server with dryRun=All and
// fieldValidation=Strict.
func dryRunManifests(t testing.TB, api *apiClient) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(parenttest.RepoRoot(), "deploy", "kubernetes", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	sent := 0
	for _, f := range files {
		if filepath.Base(f) == "runtimeclass.yaml" {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for doc := range strings.SplitSeq(string(b), "\n---\n") {
			var meta struct {
				APIVersion string `yaml:"apiVersion"`
				Kind       string `yaml:"kind"`
				Metadata   struct {
					Name      string `yaml:"name"`
					Namespace string `yaml:"namespace"`
				} `yaml:"metadata"`
			}
			if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if meta.Kind == "" {
				continue
			}
			group := "/apis/" + meta.APIVersion
			if meta.APIVersion == "v1" {
				group = "/api/v1"
			}
			ns := meta.Metadata.Namespace
			if ns == "" {
				ns = "default"
			}
			path := group + "/namespaces/" + ns + "/" + strings.ToLower(meta.Kind) + "s?dryRun=All&fieldValidation=Strict"
			if code, body := api.do(t, http.MethodPost, path, "application/yaml", []byte(doc)); code != http.StatusCreated {
				t.Errorf("%s: %s %s refused by the API server: %d %s", filepath.Base(f), meta.Kind, meta.Metadata.Name, code, body)
			}
			sent++
		}
	}
	t.Logf("deploy/kubernetes: %d objects pass the API server's validation (dry run)", sent)
}
