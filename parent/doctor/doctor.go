// Package doctor checks what each Cloister backend needs on this host —
// the process sandbox, the QEMU microVM and real Nitro Enclaves — and says,
// for everything missing, the exact command that fixes it.
package doctor

import (
	"context"
	"errors"
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
	// ProbeKVM reports whether the QEMU at bin can run a vCPU on KVM
	// (default qemu.ProbeKVM as this user): /dev/kvm can open on hosts
	// whose nested hypervisor then refuses the vCPU.
	ProbeKVM func(ctx context.Context, bin string) error
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
	if h.ProbeKVM == nil {
		h.ProbeKVM = func(ctx context.Context, bin string) error { return qemu.ProbeKVM(ctx, bin, nil) }
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
	kvmErr := kvmUsable(ctx, h, qemu)
	if kvmErr != nil {
		fix := "on bare metal or a VM with nested virtualization: modprobe kvm_intel (or kvm_amd) and give the daemon access to /dev/kvm"
		if errors.Is(kvmErr, errVCPURefused) {
			fix = "nothing to do for microVMs to work; for hardware speed, run on bare metal or under a hypervisor whose nested KVM QEMU can use"
		}
		add(Check{Backend: b, Name: "kvm", Status: Warning, Detail: kvmErr.Error() + "; microVMs run under TCG emulation, about 10–50× slower", Fix: fix})
	} else {
		add(Check{Backend: b, Name: "kvm", Status: OK, Detail: "/dev/kvm usable: microVMs run with hardware virtualization"})
	}
	add(kernelCheck(pickKernel(ctx, h, qemu, kvmErr == nil)))
}

// errVCPURefused is kvmUsable's error when /dev/kvm opens but QEMU
// cannot run a vCPU on it.
var errVCPURefused = errors.New("/dev/kvm opens")

// kvmUsable reports why microVMs cannot use KVM, or nil: /dev/kvm must
// open, and the QEMU at bin must get a vCPU through its first reset.
func kvmUsable(ctx context.Context, h Host, bin string) error {
	if err := h.OpenRW("/dev/kvm"); err != nil {
		return fmt.Errorf("/dev/kvm is not usable (%v)", err)
	}
	if bin == "" {
		return nil
	}
	if err := h.ProbeKVM(ctx, bin); err != nil {
		return fmt.Errorf("%w, but %v", errVCPURefused, err)
	}
	return nil
}

func kernelCheck(k Kernel) Check {
	const b = "qemu"
	switch {
	case k.Path == "":
		return Check{Backend: b, Name: "kernel", Status: Warning, Detail: "no kernel for enclave images found (images built without one only run on the sandbox backend)",
			Fix: "apt-get install linux-image-cloud-amd64, then build-enclave --kernel /boot/vmlinuz-<version>-cloud-amd64, or install AWS's blobs under /usr/share/nitro_enclaves/blobs"}
	case k.Hazard != "":
		return Check{Backend: b, Name: "kernel", Status: Warning, Detail: "enclave kernel: " + k.Path + ", but " + k.Hazard,
			Fix: "apt-get install linux-image-cloud-amd64 (Debian 12's 6.1 kernel) and build images with it, or install QEMU 10: apt-get install -t bookworm-backports qemu-system-x86"}
	}
	d := "enclave kernel available: " + k.Path + " (pass it to build-enclave --kernel)"
	if k.PassedOver != "" {
		d += "; passed over " + k.PassedOver
	}
	return Check{Backend: b, Name: "kernel", Status: OK, Detail: d}
}

// Kernel is the kernel the doctor recommends for microVM enclave images.
type Kernel struct {
	// Path is the kernel image: AWS's bzImage blob or /boot/vmlinuz-<release>.
	Path string
	// ModulesDir is /lib/modules/<release> for a /boot kernel, else "".
	ModulesDir string
	// PassedOver names newer kernels not recommended, and why.
	PassedOver string
	// Hazard says why Path may not boot reliably here, when every kernel
	// on the host is one to pass over.
	Hazard string
}

// EnclaveKernel picks the kernel for microVM enclave images on this host:
// AWS's blob when installed, else the newest Debian kernel in /boot that
// this host's QEMU boots reliably (see [pickKernel]).
func EnclaveKernel(ctx context.Context, h Host) Kernel {
	h = h.withDefaults()
	bin, err := h.LookPath("qemu-system-x86_64")
	if err != nil {
		bin = ""
	}
	return pickKernel(ctx, h, bin, bin != "" && kvmUsable(ctx, h, bin) == nil)
}

// tcgSafeBelow is the first kernel series that QEMU older than
// tcgSafeQEMU, under TCG, does not boot reliably: Debian 12's QEMU 7.2
// double-faults Debian's 6.12 backports kernel early in boot (in the SLUB
// fast path, kmem_cache_alloc, just after its cmpxchg16b), in 6 of 84
// boots measured, with or without 5-level paging; it booted Debian 12's
// own 6.1 kernel 70 times of 70, and QEMU 10.0 booted 6.12 30 of 30.
var tcgSafeBelow = [2]int{6, 12}

const tcgSafeQEMU = 10

// pickKernel chooses among the host's kernels; kvm says whether microVMs
// run on KVM, qemuBin is the QEMU on PATH ("" if none).
func pickKernel(ctx context.Context, h Host, qemuBin string, kvm bool) Kernel {
	var dirs []string
	if d := h.Env("CLOISTER_BLOBS"); d != "" {
		dirs = append(dirs, d)
	}
	dirs = append(dirs, "/usr/share/nitro_enclaves/blobs")
	for _, d := range dirs {
		if p := filepath.Join(d, "bzImage"); h.exists(p) {
			return Kernel{Path: p}
		}
	}
	ks := bootKernels(h)
	if len(ks) == 0 {
		return Kernel{}
	}
	best := ks[0]
	if kvm || qemuBin == "" {
		return best.kernel()
	}
	if major := qemuMajor(ctx, h, qemuBin); major == 0 || major >= tcgSafeQEMU {
		return best.kernel()
	}
	var passed []string
	for _, k := range ks {
		if !k.atLeast(tcgSafeBelow) {
			out := k.kernel()
			if len(passed) > 0 {
				out.PassedOver = strings.Join(passed, ", ") + fmt.Sprintf(": QEMU older than %d under TCG does not boot %d.%d or newer kernels reliably", tcgSafeQEMU, tcgSafeBelow[0], tcgSafeBelow[1])
			}
			return out
		}
		passed = append(passed, k.path)
	}
	out := best.kernel()
	out.Hazard = fmt.Sprintf("this QEMU (older than %d, under TCG) double-faults %d.%d and newer kernels early in boot in about one boot in 15", tcgSafeQEMU, tcgSafeBelow[0], tcgSafeBelow[1])
	return out
}

// bootKernel is a /boot/vmlinuz-<release> file.
type bootKernel struct {
	path, release string
	version       [3]int // from the release: 6.12.95+deb12-cloud-amd64 → 6, 12, 95
}

func (k bootKernel) kernel() Kernel {
	return Kernel{Path: k.path, ModulesDir: "/lib/modules/" + k.release}
}

func (k bootKernel) atLeast(v [2]int) bool {
	return k.version[0] > v[0] || k.version[0] == v[0] && k.version[1] >= v[1]
}

// bootKernels returns /boot's kernels, newest version first.
func bootKernels(h Host) []bootKernel {
	ents, err := fs.ReadDir(h.FS, "boot")
	if err != nil {
		return nil
	}
	var ks []bootKernel
	for _, e := range ents {
		rel, ok := strings.CutPrefix(e.Name(), "vmlinuz-")
		if !ok || rel == "" {
			continue
		}
		k := bootKernel{path: "/boot/" + e.Name(), release: rel}
		nums := strings.FieldsFunc(rel, func(r rune) bool { return r < '0' || r > '9' })
		for i := 0; i < len(k.version) && i < len(nums); i++ {
			k.version[i], _ = strconv.Atoi(nums[i])
		}
		ks = append(ks, k)
	}
	sort.SliceStable(ks, func(i, j int) bool {
		a, b := ks[i].version, ks[j].version
		if a != b {
			return a[0] > b[0] || a[0] == b[0] && (a[1] > b[1] || a[1] == b[1] && a[2] > b[2])
		}
		return ks[i].release > ks[j].release
	})
	return ks
}

// qemuMajor returns the major version "qemu -version" prints, or 0.
func qemuMajor(ctx context.Context, h Host, bin string) int {
	out, err := h.Output(ctx, bin, "-version")
	if err != nil {
		return 0
	}
	_, rest, ok := strings.Cut(string(out), "version ")
	if !ok {
		return 0
	}
	major, _, _ := strings.Cut(rest, ".")
	n, _ := strconv.Atoi(major)
	return n
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
