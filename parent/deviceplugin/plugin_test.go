package deviceplugin_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	api "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/cloister/cloister/parent/deviceplugin"
	"github.com/cloister/cloister/parent/parenttest"
	"github.com/cloister/cloister/parent/shim"
)

func TestMain(m *testing.M) {
	code := m.Run()
	parenttest.Cleanup()
	os.Exit(code)
}

// fakeKubelet is the kubelet's Registration service on dir/kubelet.sock.
type fakeKubelet struct {
	api.UnimplementedRegistrationServer
	mu   sync.Mutex
	regs map[string]*api.RegisterRequest
	srv  *grpc.Server
}

func (k *fakeKubelet) Register(_ context.Context, r *api.RegisterRequest) (*api.Empty, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.regs[r.ResourceName] = r
	return &api.Empty{}, nil
}

func (k *fakeKubelet) registrations() map[string]*api.RegisterRequest {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := map[string]*api.RegisterRequest{}
	for n, r := range k.regs {
		out[n] = r
	}
	return out
}

func startKubelet(t *testing.T, dir string) *fakeKubelet {
	t.Helper()
	path := filepath.Join(dir, "kubelet.sock")
	_ = os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	k := &fakeKubelet{regs: map[string]*api.RegisterRequest{}, srv: grpc.NewServer()}
	api.RegisterRegistrationServer(k.srv, k)
	go func() { _ = k.srv.Serve(ln) }()
	t.Cleanup(k.srv.Stop)
	return k
}

// TestDevicePlugin runs the plugin against a real daemon (sandbox, a pool
// of 2048 MiB) and a stand-in for the kubelet's registration service:
// the three resources register, list the pool's CPUs, memory units and
// enclave slots, allocate the annotations the shim sizes enclaves from,
// and register again when the kubelet restarts. (A real kubelet was not
// run: see docs/fleet.md.)
func TestDevicePlugin(t *testing.T) {
	d := parenttest.StartDaemon(t, "sandbox", "---\nmemory_mib: 2048\n")
	info, err := d.Client.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	dir := parenttest.ShortTemp(t)
	k := startKubelet(t, dir)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- deviceplugin.Run(ctx, deviceplugin.Config{Daemon: d.Client, Dir: dir, MemoryUnitMiB: 256, Poll: 100 * time.Millisecond})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	waitRegistered := func(k *fakeKubelet) map[string]*api.RegisterRequest {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			if regs := k.registrations(); len(regs) == 3 {
				return regs
			}
			if time.Now().After(deadline) {
				t.Fatalf("registrations: %v", k.registrations())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	regs := waitRegistered(k)

	tests := []struct {
		resource string
		devices  int
		request  int
		want     map[string]string
	}{
		{deviceplugin.ResourceCPU, len(info.CPUPool), 2, map[string]string{shim.AnnotationCPUs: "2"}},
		{deviceplugin.ResourceMemory, 2048 / 256, 3, map[string]string{shim.AnnotationMemory: "768"}},
		{deviceplugin.ResourceNitroEnclaves, len(info.CPUPool), 1, nil},
	}
	for _, tt := range tests {
		t.Run(tt.resource, func(t *testing.T) {
			r := regs[tt.resource]
			if r == nil || r.Version != api.Version {
				t.Fatalf("registration %+v", r)
			}
			conn, err := grpc.NewClient("unix://"+filepath.Join(dir, r.Endpoint), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			c := api.NewDevicePluginClient(conn)
			sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer scancel()
			stream, err := c.ListAndWatch(sctx, &api.Empty{})
			if err != nil {
				t.Fatal(err)
			}
			resp, err := stream.Recv()
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, dv := range resp.Devices {
				if dv.Health != api.Healthy {
					t.Errorf("device %s is %s", dv.ID, dv.Health)
				}
				ids = append(ids, dv.ID)
			}
			if len(ids) != tt.devices {
				t.Fatalf("%d devices %v, want %d", len(ids), ids, tt.devices)
			}
			sort.Strings(ids)
			a, err := c.Allocate(sctx, &api.AllocateRequest{ContainerRequests: []*api.ContainerAllocateRequest{{DevicesIds: ids[:tt.request]}}})
			if err != nil {
				t.Fatal(err)
			}
			if len(a.ContainerResponses) != 1 {
				t.Fatalf("%d responses", len(a.ContainerResponses))
			}
			if diff := cmp.Diff(tt.want, a.ContainerResponses[0].Annotations); diff != "" {
				t.Errorf("annotations (-want +got):\n%s", diff)
			}
		})
	}

	// The kubelet restarts: a new socket, so the plugins register again.
	k.srv.Stop()
	k2 := startKubelet(t, dir)
	waitRegistered(k2)
}
