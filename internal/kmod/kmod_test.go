package kmod

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cloister/cloister/internal/testenv"
	"github.com/google/go-cmp/cmp"
)

// fakeTree writes a modules.dep (and optionally modules.builtin) into a
// temporary directory and returns it.
func fakeTree(t *testing.T, dep, builtin string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644); err != nil {
		t.Fatal(err)
	}
	if builtin != "" {
		if err := os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte(builtin), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// debianDep is the relevant part of Debian 12's 6.1 cloud kernel modules.dep,
// with the dependency lists in depmod's order (users first).
const debianDep = `kernel/fs/fuse/virtiofs.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko kernel/fs/fuse/fuse.ko
kernel/fs/fuse/fuse.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/net/vmw_vsock/vsock.ko:
kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/net/vmw_vsock/vsock.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko: kernel/net/vmw_vsock/vsock.ko
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
`

func TestResolve(t *testing.T) {
	dir := fakeTree(t, debianDep, "kernel/drivers/block/loop.ko\nkernel/fs/ext4/ext4.ko\n")
	abs := func(rels ...string) []string {
		var out []string
		for _, r := range rels {
			out = append(out, filepath.Join(dir, r))
		}
		return out
	}
	tests := []struct {
		name  string
		names []string
		want  []string
	}{
		{"leaf", []string{"virtio_ring"}, abs("kernel/drivers/virtio/virtio_ring.ko")},
		{"deps first", []string{"virtio_mmio"}, abs(
			"kernel/drivers/virtio/virtio_ring.ko",
			"kernel/drivers/virtio/virtio.ko",
			"kernel/drivers/virtio/virtio_mmio.ko")},
		{"vsock set, no duplicates", VsockModuleNames, abs(
			"kernel/drivers/virtio/virtio_ring.ko",
			"kernel/drivers/virtio/virtio.ko",
			"kernel/drivers/virtio/virtio_mmio.ko",
			"kernel/net/vmw_vsock/vsock.ko",
			"kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko",
			"kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko")},
		{"dash, suffix and repeats", []string{"virtio-rng.ko", "virtio", "virtio_rng"}, abs(
			"kernel/drivers/virtio/virtio_ring.ko",
			"kernel/drivers/virtio/virtio.ko",
			"kernel/drivers/char/hw_random/virtio-rng.ko")},
		{"builtin needs no file", []string{"loop", "virtio_ring"}, abs("kernel/drivers/virtio/virtio_ring.ko")},
		{"nothing", nil, []string{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Resolve(dir, tc.names...)
			if err != nil {
				t.Fatalf("Resolve(%q): %v", tc.names, err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Resolve(%q) (-want +got):\n%s", tc.names, diff)
			}
		})
	}
}

func TestResolveErrors(t *testing.T) {
	tests := []struct {
		name  string
		dep   string
		names []string
		want  error
	}{
		{"unknown module", debianDep, []string{"nvme"}, ErrNotFound},
		{"empty name", debianDep, []string{""}, ErrNotFound},
		{"cycle", "a.ko: b.ko\nb.ko: a.ko\n", []string{"a"}, ErrMalformed},
		{"missing dependency line", "a.ko: b.ko\n", []string{"a"}, ErrMalformed},
		{"no colon", "a.ko b.ko\n", []string{"a"}, ErrMalformed},
		{"same name twice", "x/a.ko:\ny/a.ko:\n", []string{"a"}, ErrMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := fakeTree(t, tc.dep, "")
			got, err := Resolve(dir, tc.names...)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Resolve(%q) = %q, %v; want error %v", tc.names, got, err, tc.want)
			}
			if got != nil {
				t.Errorf("Resolve returned %q together with an error", got)
			}
		})
	}
}

// TestResolveCompressed: Debian's 6.12 kernels store every module as .ko.xz;
// the files are returned as they are, for cloister-init to load compressed.
func TestResolveCompressed(t *testing.T) {
	dir := fakeTree(t, "kernel/drivers/misc/nsm.ko.xz:\nkernel/a.ko: kernel/b.ko.zst\nkernel/b.ko.zst:\n", "")
	got, err := Resolve(dir, "nsm", "a")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(dir, "kernel/drivers/misc/nsm.ko.xz"), filepath.Join(dir, "kernel/b.ko.zst"), filepath.Join(dir, "kernel/a.ko")}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Resolve (-want +got):\n%s", diff)
	}
}

func TestCompressed(t *testing.T) {
	for in, want := range map[string]bool{
		"nsm.ko": false, "nsm.ko.xz": true, "/m/a.ko.zst": true, "a.ko.gz": true, "a.xz": false, "a.ko.bz2": false,
	} {
		if got := Compressed(in); got != want {
			t.Errorf("Compressed(%q) = %v, want %v", in, got, want)
		}
	}
}

func TestResolveNoTree(t *testing.T) {
	if _, err := Resolve(t.TempDir(), "vsock"); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Resolve on a directory without modules.dep: err = %v, want a not-exist error", err)
	}
}

func TestModuleName(t *testing.T) {
	for in, want := range map[string]string{
		"virtio_mmio":                             "virtio_mmio",
		"virtio-mmio":                             "virtio_mmio",
		"kernel/drivers/virtio/virtio_mmio.ko":    "virtio_mmio",
		"kernel/drivers/virtio/virtio-mmio.ko.xz": "virtio_mmio",
		"a.ko.zst":                                "a",
		"":                                        "",
	} {
		if got := ModuleName(in); got != want {
			t.Errorf("ModuleName(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestVsockModulesReal resolves the vsock set against the real Debian cloud
// kernel tree that scripts/test.sh points CLOISTER_TEST_MODULES at.
func TestVsockModulesReal(t *testing.T) {
	dir := os.Getenv("CLOISTER_TEST_MODULES")
	testenv.Require(t, dir != "", "CLOISTER_TEST_MODULES (a /lib/modules/<version> tree of a Debian cloud kernel)",
		"apt-get install linux-image-cloud-amd64 and run scripts/test.sh, or export CLOISTER_TEST_MODULES=/lib/modules/$(uname -r)")
	got, err := VsockModules(dir)
	if err != nil {
		t.Fatalf("VsockModules(%s): %v", dir, err)
	}
	var names []string
	for _, p := range got {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("resolved module file: %v", err)
		}
		names = append(names, ModuleName(p))
	}
	want := []string{"virtio_ring", "virtio", "virtio_mmio", "vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport"}
	if diff := cmp.Diff(want, names); diff != "" {
		t.Errorf("VsockModules(%s) module names (-want +got):\n%s", dir, diff)
	}
}

func TestMicroVMModules(t *testing.T) {
	withCUSE := debianDep + "kernel/fs/fuse/cuse.ko: kernel/fs/fuse/fuse.ko\n"
	tests := []struct {
		name, dep, builtin string
		want               []string
	}{
		{"cuse as a module", withCUSE, "", []string{"virtio_ring", "virtio", "virtio_mmio", "vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport", "fuse", "cuse"}},
		{"no cuse", debianDep, "", []string{"virtio_ring", "virtio", "virtio_mmio", "vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport"}},
		{"cuse built in", debianDep, "kernel/fs/fuse/cuse.ko\n", []string{"virtio_ring", "virtio", "virtio_mmio", "vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := MicroVMModules(fakeTree(t, tt.dep, tt.builtin))
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, p := range got {
				names = append(names, ModuleName(p))
			}
			if diff := cmp.Diff(tt.want, names); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
	if _, err := MicroVMModules(fakeTree(t, "kernel/fs/fuse/cuse.ko:\n", "")); !errors.Is(err, ErrNotFound) {
		t.Errorf("without the vsock modules: %v, want ErrNotFound", err)
	}
}

// TestMicroVMModulesReal adds cuse and fuse after the vsock set on the real
// Debian cloud kernel tree.
func TestMicroVMModulesReal(t *testing.T) {
	dir := os.Getenv("CLOISTER_TEST_MODULES")
	testenv.Require(t, dir != "", "CLOISTER_TEST_MODULES (a /lib/modules/<version> tree of a Debian cloud kernel)",
		"apt-get install linux-image-cloud-amd64 and run scripts/test.sh, or export CLOISTER_TEST_MODULES=/lib/modules/$(uname -r)")
	got, err := MicroVMModules(dir)
	if err != nil {
		t.Fatalf("MicroVMModules(%s): %v", dir, err)
	}
	var names []string
	for _, p := range got {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("resolved module file: %v", err)
		}
		names = append(names, ModuleName(p))
	}
	want := []string{"virtio_ring", "virtio", "virtio_mmio", "vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport", "fuse", "cuse"}
	if diff := cmp.Diff(want, names); diff != "" {
		t.Errorf("MicroVMModules(%s) module names (-want +got):\n%s", dir, diff)
	}
}

func BenchmarkResolveReal(b *testing.B) {
	dir := os.Getenv("CLOISTER_TEST_MODULES")
	testenv.Require(b, dir != "", "CLOISTER_TEST_MODULES", "export CLOISTER_TEST_MODULES=/lib/modules/<version>")
	for b.Loop() {
		if _, err := VsockModules(dir); err != nil {
			b.Fatal(err)
		}
	}
}
