package doctor

import (
	"context"
	"errors"
	"io/fs"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/cloister/cloister/parent/qemu"
)

func file(s string) *fstest.MapFile { return &fstest.MapFile{Data: []byte(s)} }

func find(t *testing.T, r Report, backend, name string) Check {
	t.Helper()
	for _, c := range r.Checks {
		if c.Backend == backend && c.Name == name {
			return c
		}
	}
	t.Fatalf("no check %s/%s in %+v", backend, name, r.Checks)
	return Check{}
}

var nsFiles = fstest.MapFS{
	"proc/self/ns/user": file(""), "proc/self/ns/pid": file(""), "proc/self/ns/mnt": file(""), "proc/self/ns/net": file(""),
	"proc/self/ns/ipc": file(""), "proc/self/ns/uts": file(""), "proc/self/ns/cgroup": file(""),
}

func hostWith(extra fstest.MapFS, euid int, have map[string]bool) Host {
	m := fstest.MapFS{}
	for k, v := range nsFiles {
		m[k] = v
	}
	for k, v := range extra {
		m[k] = v
	}
	return Host{
		FS:   m,
		Euid: euid,
		LookPath: func(n string) (string, error) {
			if have[n] {
				return "/usr/bin/" + n, nil
			}
			return "", errors.New("not found")
		},
		Output: func(_ context.Context, name string, args ...string) ([]byte, error) {
			if args[0] == "-machine" {
				return []byte("microvm              microvm (i386)\n"), nil
			}
			return []byte(`name "vhost-user-vsock-device", bus virtio-bus` + "\n"), nil
		},
		OpenRW: func(p string) error {
			if have[p] {
				return nil
			}
			return fs.ErrNotExist
		},
		Env:      func(string) string { return "" },
		ProbeKVM: func(context.Context, string) error { return nil },
	}
}

func TestSandboxReadyOnHybridCgroups(t *testing.T) {
	h := hostWith(fstest.MapFS{
		"proc/sys/user/max_user_namespaces":        file("96365\n"),
		"proc/self/status":                         file("Name: x\nSeccomp:\t0\n"),
		"sys/fs/cgroup/memory/cgroup.procs":        file(""),
		"sys/fs/cgroup/cpuset/cgroup.procs":        file(""),
		"sys/fs/cgroup/pids/cgroup.procs":          file(""),
		"sys/fs/cgroup/unified/cgroup.controllers": file("hugetlb\n"),
	}, 0, nil)
	r := Run(context.Background(), h)
	if !r.Ready("sandbox") {
		t.Fatalf("sandbox not ready: %+v", r.Checks)
	}
	if c := find(t, r, "sandbox", "cgroups"); c.Detail == "" || c.Status != OK {
		t.Errorf("cgroups: %+v", c)
	}
	if r.Ready("nitro") {
		t.Error("nitro ready without /dev/nitro_enclaves")
	}
	c := find(t, r, "nitro", "device")
	if c.Status != Missing || c.Fix == "" {
		t.Errorf("nitro device check: %+v", c)
	}
	if r.Ready("qemu") {
		t.Error("qemu ready without qemu")
	}
	if c := find(t, r, "qemu", "qemu"); c.Fix != "apt-get install qemu-system-x86" {
		t.Errorf("qemu fix: %+v", c)
	}
}

func TestMissingPieces(t *testing.T) {
	h := hostWith(fstest.MapFS{
		"proc/sys/user/max_user_namespaces": file("0"),
		"sys/fs/cgroup/cgroup.controllers":  file("cpu io memory\n"),
	}, 1000, map[string]bool{"qemu-system-x86_64": true})
	r := Run(context.Background(), h)
	for _, name := range []string{"user namespaces", "seccomp", "cgroups"} {
		if c := find(t, r, "sandbox", name); c.Status != Missing || c.Fix == "" {
			t.Errorf("%s: %+v", name, c)
		}
	}
	if c := find(t, r, "all", "privileges"); c.Status != Missing {
		t.Errorf("privileges: %+v", c)
	}
	if c := find(t, r, "qemu", "qemu"); c.Status != OK {
		t.Errorf("qemu: %+v", c)
	}
	if c := find(t, r, "qemu", "kvm"); c.Status != Warning {
		t.Errorf("kvm: %+v", c)
	}
	if r.Ready("qemu") {
		t.Error("qemu ready while not root")
	}
}

func TestNitroReady(t *testing.T) {
	h := hostWith(fstest.MapFS{
		"dev/nitro_enclaves": file(""),
		"dev/vsock":          file(""),
		"sys/module/nitro_enclaves/parameters/ne_cpus":             file("1,3\n"),
		"sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages":    file("256\n"),
		"sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages": file("1\n"),
		"boot/vmlinuz-6.1.0-56-cloud-amd64":                        file(""),
	}, 0, map[string]bool{"/dev/nitro_enclaves": true})
	r := Run(context.Background(), h)
	if !r.Ready("nitro") {
		t.Fatalf("nitro not ready: %+v", r.Checks)
	}
	if c := find(t, r, "nitro", "hugepages"); c.Detail != "1536 MiB of hugepages reserved" {
		t.Errorf("hugepages: %+v", c)
	}
	if c := find(t, r, "qemu", "kernel"); c.Status != OK {
		t.Errorf("kernel: %+v", c)
	}
}

func TestNitroEnclaveCheck(t *testing.T) {
	cached := strings.TrimPrefix(qemu.NitroCacheDir, "/") + "/10.0.13+ds-0+deb13u1/bin/qemu-system-x86_64"
	for _, tc := range []struct {
		name       string
		files      fstest.MapFS
		pathHas    bool // the QEMU on PATH lists nitro-enclave
		cachedRuns bool
		want       Status
		detail     string
	}{
		{"none", nil, false, false, Warning, "no QEMU with the nitro-enclave machine"},
		{"cached build", fstest.MapFS{cached: {Mode: 0o755}}, false, true, OK, "/" + cached + " has the nitro-enclave machine"},
		{"cached build broken", fstest.MapFS{cached: {Mode: 0o755}}, false, false, Warning, "does not run or lacks"},
		{"on PATH", nil, true, false, OK, "/usr/bin/qemu-system-x86_64 has the nitro-enclave machine"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := hostWith(tc.files, 0, map[string]bool{"qemu-system-x86_64": true})
			h.Output = func(_ context.Context, name string, args ...string) ([]byte, error) {
				machines := "microvm              microvm (i386)\n"
				switch {
				case name == "/"+cached && !tc.cachedRuns:
					return nil, errors.New("exit status 1")
				case name == "/"+cached || tc.pathHas:
					machines += "nitro-enclave        AWS Nitro Enclave\n"
				}
				if args[0] == "-machine" {
					return []byte(machines), nil
				}
				return []byte(`name "vhost-user-vsock-device", bus virtio-bus` + "\n"), nil
			}
			r := Run(context.Background(), h)
			c := find(t, r, "qemu", "qemu nitro-enclave")
			if c.Status != tc.want || !strings.Contains(c.Detail, tc.detail) {
				t.Errorf("check = %+v, want status %s and detail containing %q", c, tc.want, tc.detail)
			}
		})
	}
}

func TestKVMProbe(t *testing.T) {
	for _, tc := range []struct {
		name   string
		opens  bool
		probe  error
		want   Status
		detail string
	}{
		{"no device", false, nil, Warning, "/dev/kvm is not usable"},
		{"vCPU refused", true, errors.New("QEMU cannot run a KVM vCPU here (exit status 134: failed to set MSR 0x10a)"), Warning, "/dev/kvm opens, but QEMU cannot run a KVM vCPU here"},
		{"usable", true, nil, OK, "/dev/kvm usable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := hostWith(nil, 0, map[string]bool{"qemu-system-x86_64": true, "/dev/kvm": tc.opens})
			probed := false
			h.ProbeKVM = func(_ context.Context, bin string) error {
				probed = true
				if bin != "/usr/bin/qemu-system-x86_64" {
					t.Errorf("probed %s", bin)
				}
				return tc.probe
			}
			c := find(t, Run(context.Background(), h), "qemu", "kvm")
			if c.Status != tc.want || !strings.HasPrefix(c.Detail, tc.detail) {
				t.Errorf("check = %+v, want %s, detail starting %q", c, tc.want, tc.detail)
			}
			if tc.probe != nil && !strings.HasPrefix(c.Fix, "nothing to do") {
				t.Errorf("fix for a refused vCPU: %q", c.Fix)
			}
			if probed != tc.opens {
				t.Errorf("probe ran: %v, want %v (only once /dev/kvm opens)", probed, tc.opens)
			}
		})
	}
}

func TestEnclaveKernel(t *testing.T) {
	const (
		k61  = "boot/vmlinuz-6.1.0-57-cloud-amd64"
		k612 = "boot/vmlinuz-6.12.95+deb12-cloud-amd64"
		k69  = "boot/vmlinuz-6.9.7+bpo-cloud-amd64"
		k510 = "boot/vmlinuz-5.10.0-30-cloud-amd64"
		blob = "usr/share/nitro_enclaves/blobs/bzImage"
	)
	for _, tc := range []struct {
		name    string
		files   []string
		kvm     bool
		qemu    string // what "qemu -version" prints
		want    string
		passed  string // substring of PassedOver, "" for none
		hazard  bool
		checkOK bool
	}{
		{"kvm takes the newest (version order, not name order)", []string{k61, k612, k69}, true, "QEMU emulator version 7.2.22", "/" + k612, "", false, true},
		{"tcg on QEMU 10 takes the newest", []string{k61, k612}, false, "QEMU emulator version 10.0.13 (Debian)", "/" + k612, "", false, true},
		{"tcg on QEMU 7.2 passes over 6.12", []string{k510, k61, k612}, false, "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)", "/" + k61, "/" + k612 + ": QEMU older than 10", false, true},
		{"tcg on QEMU 7.2 with only 6.12", []string{k612}, false, "QEMU emulator version 7.2.22", "/" + k612, "", true, false},
		{"unknown QEMU version takes the newest", []string{k61, k612}, false, "garbage", "/" + k612, "", false, true},
		{"AWS's blob first", []string{k61, k612, blob}, false, "QEMU emulator version 7.2.22", "/" + blob, "", false, true},
		{"none", nil, false, "QEMU emulator version 7.2.22", "", "", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files := fstest.MapFS{}
			for _, f := range tc.files {
				files[f] = file("")
			}
			h := hostWith(files, 0, map[string]bool{"qemu-system-x86_64": true, "/dev/kvm": true})
			if !tc.kvm {
				h.ProbeKVM = func(context.Context, string) error { return errors.New("QEMU cannot run a KVM vCPU here") }
			}
			base := h.Output
			h.Output = func(ctx context.Context, name string, args ...string) ([]byte, error) {
				if args[0] == "-version" {
					return []byte(tc.qemu + "\nCopyright (c) 2003-2022 Fabrice Bellard\n"), nil
				}
				return base(ctx, name, args...)
			}
			k := EnclaveKernel(context.Background(), h)
			if k.Path != tc.want {
				t.Fatalf("kernel %+v, want %s", k, tc.want)
			}
			if rel, ok := strings.CutPrefix(k.Path, "/boot/vmlinuz-"); ok && k.ModulesDir != "/lib/modules/"+rel {
				t.Errorf("modules dir %q for %s", k.ModulesDir, k.Path)
			}
			if !strings.Contains(k.PassedOver, tc.passed) || (tc.passed == "") != (k.PassedOver == "") {
				t.Errorf("passed over %q, want %q", k.PassedOver, tc.passed)
			}
			if (k.Hazard != "") != tc.hazard {
				t.Errorf("hazard %q, want one: %v", k.Hazard, tc.hazard)
			}
			c := find(t, Run(context.Background(), h), "qemu", "kernel")
			if (c.Status == OK) != tc.checkOK || (tc.want != "" && !strings.Contains(c.Detail, tc.want)) {
				t.Errorf("kernel check %+v, want ok=%v naming %s", c, tc.checkOK, tc.want)
			}
		})
	}
}
