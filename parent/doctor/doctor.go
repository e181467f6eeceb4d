// Package doctor checks what each Cloister backend needs on this host —
// the process sandbox, the QEMU microVM and real Nitro Enclaves — and says,
// for everything missing, the exact command that fixes it.
package doctor

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/cloister/cloister/parent/qemu"
)

// Status is a check's outcome.
type Status string

const (
	OK      Status = "ok"
	Warning Status = "warning" // works, but not as well as it could
	Missing Status = "missing" // the backend cannot run until this is fixed
)

// Check is one prerequisite.
type Check struct {
	Backend string `json:"backend"` // "sandbox", "qemu", "nitro" or "all"
	Name    string `json:"name"`
	Status  Status `json:"status"`
	Detail  string `json:"detail"`
	Fix     string `json:"fix,omitempty"`
}

// Report is the outcome of every check.
type Report struct {
	Checks []Check `json:"checks"`
}

// Ready reports whether backend has no missing prerequisite.
func (r Report) Ready(backend string) bool {
	for _, c := range r.Checks {
		if (c.Backend == backend || c.Backend == "all") && c.Status == Missing {
			return false
		}
	}
	return true
}

// Host is how the checks see the machine; tests replace it.
type Host struct {
	// FS is the root filesystem (default os.DirFS("/")).
	FS fs.FS
	// Euid is the effective user id (default os.Geteuid()).
	Euid int
	// LookPath finds programs (default exec.LookPath).
	LookPath func(string) (string, error)
	// Output runs a program and returns its combined output (default: exec
	// with a 10 s timeout).
	Output func(ctx context.Context, name string, args ...string) ([]byte, error)
	// OpenRW reports whether a device can be opened read-write (default: os.OpenFile).
	OpenRW func(path string) error
	// Env reads environment variables (default os.Getenv).
	Env func(string) string
}

func (h Host) withDefaults() Host {
	if h.FS == nil {
		h.FS = os.DirFS("/")
		h.Euid = os.Geteuid()
	}
	if h.LookPath == nil {
		h.LookPath = exec.LookPath
	}
	if h.Output == nil {
		h.Output = func(ctx context.Context, name string, args ...string) ([]byte, error) {
			ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			return exec.CommandContext(ctx, name, args...).CombinedOutput()
		}
	}
	if h.OpenRW == nil {
		h.OpenRW = func(path string) error {
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err == nil {
				f.Close()
			}
			return err
		}
	}
	if h.Env == nil {
		h.Env = os.Getenv
	}
	return h
}

// read returns a file's trimmed content from the host filesystem.
func (h Host) read(path string) (string, error) {
	b, err := fs.ReadFile(h.FS, strings.TrimPrefix(path, "/"))
	return strings.TrimSpace(string(b)), err
}

func (h Host) exists(path string) bool {
	_, err := fs.Stat(h.FS, strings.TrimPrefix(path, "/"))
	return err == nil
}

// Run performs every check.
func Run(ctx context.Context, h Host) Report {
	h = h.withDefaults()
	var r Report
	add := func(c Check) { r.Checks = append(r.Checks, c) }

	if h.Euid == 0 {
		add(Check{Backend: "all", Name: "privileges", Status: OK, Detail: "running as root"})
	} else {
		add(Check{Backend: "all", Name: "privileges", Status: Missing, Detail: fmt.Sprintf("running as uid %d; the daemon needs root to create namespaces, cgroups and enclaves", h.Euid), Fix: "sudo cloister daemon"})
	}
	sandboxChecks(h, add)
	qemuChecks(ctx, h, add)
	nitroChecks(h, add)
	return r
}

func sandboxChecks(h Host, add func(Check)) {
	const b = "sandbox"
	if s, err := h.read("/proc/sys/user/max_user_namespaces"); err != nil {
		add(Check{Backend: b, Name: "user namespaces", Status: Missing, Detail: "kernel has no user namespaces (/proc/sys/user/max_user_namespaces unreadable)", Fix: "use a kernel built with CONFIG_USER_NS=y"})
	} else if n, _ := strconv.Atoi(s); n <= 0 {
		add(Check{Backend: b, Name: "user namespaces", Status: Missing, Detail: "user.max_user_namespaces is " + s, Fix: "sysctl -w user.max_user_namespaces=15000"})
	} else {
		add(Check{Backend: b, Name: "user namespaces", Status: OK, Detail: "user.max_user_namespaces = " + s})
	}
	var missingNS []string
	for _, ns := range []string{"user", "pid", "mnt", "net", "ipc", "uts", "cgroup"} {
		if !h.exists("/proc/self/ns/" + ns) {
			missingNS = append(missingNS, ns)
		}
	}
	if len(missingNS) > 0 {
		add(Check{Backend: b, Name: "namespaces", Status: Missing, Detail: "missing namespace types: " + strings.Join(missingNS, ", "), Fix: "use a kernel with all namespace types enabled (CONFIG_*_NS=y)"})
	} else {
		add(Check{Backend: b, Name: "namespaces", Status: OK, Detail: "user, pid, mnt, net, ipc, uts, cgroup"})
	}
	if status, err := h.read("/proc/self/status"); err == nil && strings.Contains(status, "Seccomp:") {
		add(Check{Backend: b, Name: "seccomp", Status: OK, Detail: "seccomp filters supported"})
	} else {
		add(Check{Backend: b, Name: "seccomp", Status: Missing, Detail: "the kernel does not report seccomp support", Fix: "use a kernel built with CONFIG_SECCOMP_FILTER=y"})
	}
	add(cgroupCheck(h))
}

func cgroupCheck(h Host) Check {
	const b = "sandbox"
	need := []string{"memory", "cpuset", "pids"}
	if ctrl, err := h.read("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		have := strings.Fields(ctrl)
		var missing []string
		for _, n := range need {
			if !contains(have, n) {
				missing = append(missing, n)
			}
		}
		if len(missing) > 0 {
			return Check{Backend: b, Name: "cgroups", Status: Missing, Detail: "cgroup v2 lacks controllers: " + strings.Join(missing, ", "), Fix: "enable them: echo '+" + strings.Join(missing, " +") + "' > /sys/fs/cgroup/cgroup.subtree_control"}
		}
		return Check{Backend: b, Name: "cgroups", Status: OK, Detail: "cgroup v2 with " + strings.Join(need, ", ")}
	}
	var missing []string
	for _, n := range need {
		if !h.exists("/sys/fs/cgroup/" + n + "/cgroup.procs") {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		return Check{Backend: b, Name: "cgroups", Status: Missing, Detail: "cgroup v1 controllers not mounted: " + strings.Join(missing, ", "),
			Fix: "mount them, e.g. mkdir -p /sys/fs/cgroup/memory && mount -t cgroup -o memory cgroup /sys/fs/cgroup/memory"}
	}
	mode := "cgroup v1"
	if h.exists("/sys/fs/cgroup/unified/cgroup.controllers") {
		mode = "hybrid cgroups (v1 controllers, v2 at /sys/fs/cgroup/unified)"
	}
	return Check{Backend: b, Name: "cgroups", Status: OK, Detail: mode + " with " + strings.Join(need, ", ")}
}

func qemuChecks(ctx context.Context, h Host, add func(Check)) {
	const b = "qemu"
	machines := ""
	qemu, err := h.LookPath("qemu-system-x86_64")
	if err != nil {
		add(Check{Backend: b, Name: "qemu", Status: Missing, Detail: "qemu-system-x86_64 not found on PATH", Fix: "apt-get install qemu-system-x86"})
	} else {
		out, err := h.Output(ctx, qemu, "-machine", "help")
		machines = string(out)
		devs, err2 := h.Output(ctx, qemu, "-device", "help")
		switch {
		case err != nil || err2 != nil:
			add(Check{Backend: b, Name: "qemu", Status: Missing, Detail: fmt.Sprintf("%s does not run: %v %v", qemu, err, err2), Fix: "reinstall: apt-get install --reinstall qemu-system-x86"})
		case !strings.Contains(string(out), "microvm"):
			add(Check{Backend: b, Name: "qemu", Status: Missing, Detail: qemu + " has no microvm machine (QEMU ≥ 4.2 needed)", Fix: "apt-get install qemu-system-x86 (Debian 12 ships 7.2)"})
		case !strings.Contains(string(devs), "vhost-user-vsock-device"):
			add(Check{Backend: b, Name: "qemu", Status: Missing, Detail: qemu + " has no vhost-user-vsock-device (QEMU ≥ 5.1 needed)", Fix: "apt-get install qemu-system-x86 (Debian 12 ships 7.2)"})
		default:
			add(Check{Backend: b, Name: "qemu", Status: OK, Detail: qemu + " with microvm and vhost-user-vsock-device"})
		}
	}
	add(nitroEnclaveCheck(ctx, h, qemu, machines))
	if err := h.OpenRW("/dev/kvm"); err != nil {
		add(Check{Backend: b, Name: "kvm", Status: Warning, Detail: "/dev/kvm is not usable (" + err.Error() + "); microVMs run under TCG emulation, about 10–50× slower",
			Fix: "on bare metal or a VM with nested virtualization: modprobe kvm_intel (or kvm_amd) and give the daemon access to /dev/kvm"})
	} else {
		add(Check{Backend: b, Name: "kvm", Status: OK, Detail: "/dev/kvm usable: microVMs run with hardware virtualization"})
	}
	if k := findKernel(h); k != "" {
		add(Check{Backend: b, Name: "kernel", Status: OK, Detail: "enclave kernel available: " + k + " (pass it to build-enclave --kernel)"})
	} else {
		add(Check{Backend: b, Name: "kernel", Status: Warning, Detail: "no kernel for enclave images found (images built without one only run on the sandbox backend)",
			Fix: "apt-get install linux-image-cloud-amd64, then build-enclave --kernel /boot/vmlinuz-<version>-cloud-amd64, or install AWS's blobs under /usr/share/nitro_enclaves/blobs"})
	}
}

// nitroEnclaveCheck reports whether a QEMU with the nitro-enclave machine
// (the optional qemu.machine: nitro-enclave) is available: a build of
// scripts/build-qemu-nitro.sh, else the QEMU on PATH (pathQEMU, whose
// "-machine help" is pathMachines) if it has the machine. Its absence is
// a warning: the microvm machine does not need it.
func nitroEnclaveCheck(ctx context.Context, h Host, pathQEMU, pathMachines string) Check {
	const name = "qemu nitro-enclave"
	if bin := qemu.FindNitroBinary(h.FS); bin != "" {
		out, err := h.Output(ctx, bin, "-machine", "help")
		if err == nil && qemu.HasMachine(string(out), qemu.MachineNitroEnclave) {
			return Check{Backend: "qemu", Name: name, Status: OK,
				Detail: bin + " has the nitro-enclave machine (qemu.machine: nitro-enclave; its attestation documents are unsigned)"}
		}
		return Check{Backend: "qemu", Name: name, Status: Warning,
			Detail: fmt.Sprintf("%s does not run or lacks the nitro-enclave machine (%v)", bin, err),
			Fix:    "rebuild it: rm -r " + filepath.Dir(filepath.Dir(bin)) + " && scripts/build-qemu-nitro.sh"}
	}
	if pathQEMU != "" && qemu.HasMachine(pathMachines, qemu.MachineNitroEnclave) {
		return Check{Backend: "qemu", Name: name, Status: OK,
			Detail: pathQEMU + " has the nitro-enclave machine (set qemu.binary to use it with qemu.machine: nitro-enclave)"}
	}
	return Check{Backend: "qemu", Name: name, Status: Warning,
		Detail: "no QEMU with the nitro-enclave machine (optional: qemu.machine: nitro-enclave, the cross-check against QEMU's Nitro model; Debian's QEMU is built without it)",
		Fix:    "scripts/build-qemu-nitro.sh (builds it from Debian's QEMU source package into " + qemu.NitroCacheDir + ")"}
}

// findKernel looks where build-enclave looks for a kernel, then in /boot.
func findKernel(h Host) string {
	var dirs []string
	if d := h.Env("CLOISTER_BLOBS"); d != "" {
		dirs = append(dirs, d)
	}
	dirs = append(dirs, "/usr/share/nitro_enclaves/blobs")
	for _, d := range dirs {
		if p := filepath.Join(d, "bzImage"); h.exists(p) {
			return p
		}
	}
	ents, err := fs.ReadDir(h.FS, "boot")
	if err != nil {
		return ""
	}
	var ks []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "vmlinuz-") {
			ks = append(ks, "/boot/"+e.Name())
		}
	}
	sort.Strings(ks)
	if len(ks) == 0 {
		return ""
	}
	return ks[len(ks)-1]
}

func nitroChecks(h Host, add func(Check)) {
	const b = "nitro"
	if !h.exists("/dev/nitro_enclaves") {
		add(Check{Backend: b, Name: "device", Status: Missing, Detail: "/dev/nitro_enclaves does not exist: this is not a Nitro Enclaves parent instance, or the driver is not loaded",
			Fix: "launch an EC2 instance with --enclave-options Enabled=true, then modprobe nitro_enclaves (see docs/nitro.md)"})
	} else if err := h.OpenRW("/dev/nitro_enclaves"); err != nil {
		add(Check{Backend: b, Name: "device", Status: Missing, Detail: "/dev/nitro_enclaves cannot be opened: " + err.Error(),
			Fix: "run the daemon as root, or add its user to the ne group: usermod -aG ne $USER"})
	} else {
		add(Check{Backend: b, Name: "device", Status: OK, Detail: "/dev/nitro_enclaves usable"})
	}
	if pool, err := h.read("/sys/module/nitro_enclaves/parameters/ne_cpus"); err != nil || pool == "" {
		add(Check{Backend: b, Name: "cpu pool", Status: Missing, Detail: "the nitro_enclaves CPU pool (ne_cpus) is empty or absent",
			Fix: "set cpu_count or cpu_pool in the daemon config (the nitro backend fills ne_cpus), or: echo 2,3 > /sys/module/nitro_enclaves/parameters/ne_cpus"})
	} else {
		add(Check{Backend: b, Name: "cpu pool", Status: OK, Detail: "ne_cpus = " + pool})
	}
	total := 0
	if ents, err := fs.ReadDir(h.FS, "sys/kernel/mm/hugepages"); err == nil {
		for _, e := range ents {
			s, _ := h.read("/sys/kernel/mm/hugepages/" + e.Name() + "/nr_hugepages")
			n, _ := strconv.Atoi(s)
			size, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(e.Name(), "hugepages-"), "kB"))
			total += n * size / 1024
		}
	}
	if total == 0 {
		add(Check{Backend: b, Name: "hugepages", Status: Missing, Detail: "no hugepages reserved; enclave memory must be hugepage-backed",
			Fix: "set memory_mib in the daemon config (the nitro backend reserves them), or: echo 256 > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"})
	} else {
		add(Check{Backend: b, Name: "hugepages", Status: OK, Detail: fmt.Sprintf("%d MiB of hugepages reserved", total)})
	}
	if h.exists("/dev/vsock") {
		add(Check{Backend: b, Name: "vsock", Status: OK, Detail: "/dev/vsock present"})
	} else {
		add(Check{Backend: b, Name: "vsock", Status: Missing, Detail: "/dev/vsock missing", Fix: "modprobe vsock (vhost_vsock on the parent is not needed)"})
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
