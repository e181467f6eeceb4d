// Package qemu is the microVM backend: every enclave is a QEMU `-M microvm`
// virtual machine that boots the EIF's own kernel, command line and
// ramdisks, with the enclave's dedicated memory and vCPUs, no network, no
// disk, and vsock as its only device — a vhost-user-vsock device served in
// Go by this process (internal/vsockdev), which routes the guest's
// connections to CID 3 (Nitro's parent) and CID 2 to the daemon's
// hybrid-vsock listeners, so an unmodified Nitro init's heartbeat works.
//
// With Machine "nitro-enclave" the VM is QEMU's own model of a Nitro enclave
// instead (QEMU ≥ 9.2 built with libcbor and gnutls; Debian's packages are
// not, scripts/build-qemu-nitro.sh builds one): QEMU loads the EIF itself,
// measures PCR0/1/2 and gives the guest a virtio-nsm device that Linux's nsm
// driver turns into /dev/nsm. Its attestation documents are unsigned, so they
// never verify under the development root (nor AWS's): it is an independent
// check of images and of the /dev/nsm ABI, not a way to release keys.
//
// QEMU uses KVM when /dev/kvm is usable and TCG emulation otherwise. It is
// confined like any enclave process: it runs unprivileged (as nobody, with
// the kvm group), in a cgroup with the enclave's CPUs and memory (plus
// QEMU's own overhead), under QEMU's seccomp sandbox, with no monitor the
// guest could reach.
package qemu

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cloister/cloister/enclave/eif"
	"github.com/cloister/cloister/internal/cgroups"
	"github.com/cloister/cloister/internal/hybrid"
	"github.com/cloister/cloister/internal/vsockdev"
	"github.com/cloister/cloister/parent/backend"
)

// Backend runs enclaves as QEMU microVMs. The zero value uses
// qemu-system-x86_64 from PATH and picks KVM or TCG automatically.
type Backend struct {
	// Binary is the QEMU executable; "" means qemu-system-x86_64 on PATH.
	Binary string
	// Accel is "auto" (or ""), "kvm" or "tcg".
	Accel string
	// CgroupParent is the cgroup under which each VM's group is created
	// ("" means "cloister").
	CgroupParent string
	// Logger receives the device's logs; nil discards them.
	Logger *slog.Logger
	// User is the account QEMU runs as when the daemon is root: "" means
	// "nobody" (with the kvm group when it exists, for /dev/kvm); "root"
	// keeps root.
	User string
	// Machine is MachineMicroVM ("" means it) or MachineNitroEnclave.
	// For MachineNitroEnclave an empty Binary means the newest build under
	// NitroCacheDir ([FindNitroBinary]).
	Machine string
}

// The machines a Backend can boot.
const (
	// MachineMicroVM is QEMU's microvm machine booting the EIF's kernel,
	// command line and ramdisks, which this process extracts (QEMU ≥ 5.1;
	// Debian 12's 7.2 will do).
	MachineMicroVM = "microvm"
	// MachineNitroEnclave is QEMU's nitro-enclave machine (QEMU ≥ 9.2
	// with libcbor and gnutls): QEMU reads the EIF, computes its PCRs and
	// serves an unsigned virtio-nsm device.
	MachineNitroEnclave = "nitro-enclave"
)

// NitroCacheDir is where scripts/build-qemu-nitro.sh installs QEMU builds
// with the nitro-enclave machine: <version>/bin/qemu-system-x86_64, one
// directory per Debian source version.
const NitroCacheDir = "/var/cache/cloister/qemu-nitro"

// FindNitroBinary returns the absolute path of the most recently built
// NitroCacheDir/<version>/bin/qemu-system-x86_64 in fsys (the host's root
// file system, as os.DirFS("/")), or "" when there is none.
func FindNitroBinary(fsys fs.FS) string {
	root := strings.TrimPrefix(NitroCacheDir, "/")
	ents, err := fs.ReadDir(fsys, root)
	if err != nil {
		return ""
	}
	var best string
	var bestTime time.Time
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		rel := root + "/" + e.Name() + "/bin/qemu-system-x86_64"
		fi, err := fs.Stat(fsys, rel)
		if err != nil || !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
			continue
		}
		if best == "" || fi.ModTime().After(bestTime) {
			best, bestTime = "/"+rel, fi.ModTime()
		}
	}
	return best
}

func (b *Backend) machine() (string, error) {
	switch b.Machine {
	case "", MachineMicroVM:
		return MachineMicroVM, nil
	case MachineNitroEnclave:
		return MachineNitroEnclave, nil
	}
	return "", fmt.Errorf("qemu: unknown machine %q (use %s or %s)", b.Machine, MachineMicroVM, MachineNitroEnclave)
}

// qemuCredential resolves the unprivileged account QEMU runs as, or nil to
// keep the current one (not root, or User "root", or no such account).
func (b *Backend) qemuCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 || b.User == "root" {
		return nil, nil
	}
	name := b.User
	if name == "" {
		name = "nobody"
	}
	u, err := user.Lookup(name)
	if err != nil {
		if b.User != "" {
			return nil, fmt.Errorf("qemu: user %q: %w", b.User, err)
		}
		return nil, nil
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	if g, err := user.LookupGroup("kvm"); err == nil {
		if kgid, err := strconv.ParseUint(g.Gid, 10, 32); err == nil {
			cred.Groups = []uint32{uint32(kgid)}
		}
	}
	return cred, nil
}

var (
	_ backend.Backend = (*Backend)(nil)
	_ backend.Cleaner = (*Backend)(nil)
)

// Kind returns backend.KindQEMU.
func (*Backend) Kind() backend.Kind { return backend.KindQEMU }

// Capabilities: the microVM's security module is the daemon's emulator
// and its host listeners are Unix sockets (the vsock device dials them);
// it needs a kernel.
func (*Backend) Capabilities() backend.Capabilities {
	return backend.Capabilities{EmulatedNSM: true, HostSockets: true}
}

func (b *Backend) binary() (string, error) {
	m, err := b.machine()
	if err != nil {
		return "", err
	}
	name := b.Binary
	if name == "" && m == MachineNitroEnclave {
		if name = FindNitroBinary(os.DirFS("/")); name == "" {
			return "", fmt.Errorf("%w: no QEMU with the nitro-enclave machine under %s (run scripts/build-qemu-nitro.sh, or set qemu.binary)", backend.ErrUnavailable, NitroCacheDir)
		}
	}
	if name == "" {
		name = "qemu-system-x86_64"
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%w: %s not found (apt-get install qemu-system-x86)", backend.ErrUnavailable, name)
	}
	return p, nil
}

// accel resolves the accelerator: KVM when requested, or (auto) when
// /dev/kvm can be opened and QEMU can really start a vCPU on it (see
// ResolveAccel), else TCG.
func (b *Backend) accel() (string, error) {
	switch b.Accel {
	case "kvm":
		if err := kvmOpens(); err != nil {
			return "", fmt.Errorf("%w: accel kvm requested but /dev/kvm is not usable: %v", backend.ErrUnavailable, err)
		}
		return "kvm", nil
	case "tcg":
		return "tcg", nil
	case "", "auto":
		accel, _, err := b.ResolveAccel(context.Background())
		return accel, err
	}
	return "", fmt.Errorf("unknown accelerator %q (use auto, kvm or tcg)", b.Accel)
}

func kvmOpens() error {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err == nil {
		f.Close()
	}
	return err
}

// ResolveAccel turns Accel "auto" into the accelerator this host can run:
// "kvm" when /dev/kvm opens and a QEMU probe (as the account VMs run as)
// gets through vCPU initialisation with the CPU model VMs use, else "tcg",
// with why KVM was passed over. Some nested hypervisors expose a /dev/kvm
// on which QEMU aborts at the first vCPU reset ("failed to set MSR …"):
// the probe catches that once, so each launch does not fail. The daemon
// calls it at start-up and hands the result to its monitors. Accel values
// other than auto are returned as they are.
func (b *Backend) ResolveAccel(ctx context.Context) (accel, why string, err error) {
	if b.Accel != "" && b.Accel != "auto" {
		return b.Accel, "", nil
	}
	if err := kvmOpens(); err != nil {
		return "tcg", fmt.Sprintf("/dev/kvm is not usable: %v", err), nil
	}
	bin, err := b.binary()
	if err != nil {
		return "", "", err
	}
	cred, err := b.qemuCredential()
	if err != nil {
		return "", "", err
	}
	if err := ProbeKVM(ctx, bin, cred); err != nil {
		return "tcg", err.Error(), nil
	}
	return "kvm", "", nil
}

// ProbeKVM starts QEMU stopped (-S) on KVM with the CPU model VMs use,
// completes the QMP handshake (which resets the vCPUs) and quits. It fails
// when QEMU does not answer and exit cleanly. cred, when not nil, is the
// account QEMU runs as.
func ProbeKVM(ctx context.Context, bin string, cred *syscall.Credential) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-M", "microvm", "-accel", "kvm", "-cpu", cpuModel("kvm"),
		"-m", "16M", "-nodefaults", "-no-user-config", "-display", "none", "-S", "-qmp", "stdio")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	cmd.Stdin = strings.NewReader(`{"execute":"qmp_capabilities"}` + "\n" + `{"execute":"quit"}` + "\n")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"return"`) {
		// QEMU's own complaint, without the QMP greeting and replies.
		var msg []string
		for _, l := range strings.Split(string(out), "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "{") {
				msg = append(msg, l)
			}
		}
		return fmt.Errorf("QEMU cannot run a KVM vCPU here (%v: %s)", err, strings.Join(msg, "; "))
	}
	return nil
}

// Check verifies QEMU is installed with the machine (microvm, or
// nitro-enclave) and the vhost-user-vsock device, and that the requested
// accelerator works.
func (b *Backend) Check(ctx context.Context) error {
	bin, err := b.binary()
	if err != nil {
		return err
	}
	m, _ := b.machine()
	if _, err := b.accel(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "-machine", "help").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "microvm") {
		return fmt.Errorf("%w: %s has no microvm machine (QEMU ≥ 4.2 needed): %v", backend.ErrUnavailable, bin, err)
	}
	if m == MachineNitroEnclave && !HasMachine(string(out), MachineNitroEnclave) {
		return fmt.Errorf("%w: %s has no nitro-enclave machine (QEMU ≥ 9.2 built with libcbor and gnutls; run scripts/build-qemu-nitro.sh)", backend.ErrUnavailable, bin)
	}
	out, err = exec.CommandContext(ctx, bin, "-device", "help").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "vhost-user-vsock-device") {
		return fmt.Errorf("%w: %s has no vhost-user-vsock-device (QEMU ≥ 5.1 needed): %v", backend.ErrUnavailable, bin, err)
	}
	return nil
}

// HasMachine reports whether "qemu -machine help" output lists name.
func HasMachine(help, name string) bool {
	for _, l := range strings.Split(help, "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == name {
			return true
		}
	}
	return false
}

// HostListen listens on the enclave's host-side socket for port; the
// vsock device dials it when the guest connects to (3, port).
func (*Backend) HostListen(ctx context.Context, spec backend.Spec, port uint32) (net.Listener, error) {
	if err := os.MkdirAll(spec.Dir.HostDir(), 0o700); err != nil {
		return nil, err
	}
	return hybrid.Listen(spec.Dir.HostListenerBase(), port)
}

// memOverheadMiB is what QEMU itself needs on top of guest memory in its
// cgroup (TCG's translation cache, device state).
const memOverheadMiB = 256

// Runtime command-line parameters appended to the image's own: the guest
// must end (not reboot) on reboot or panic so that QEMU exits with it.
const runtimeCmdline = "console=ttyS0 reboot=t panic=-1"

// Launch boots the EIF in a microVM, in steps: "find qemu" (binary and
// accelerator), "check image" (layout and CRC, a kernel, the command line),
// "resolve qemu user", "create vm directory", "stage kernel and initrd",
// "start vsock device", "start qemu", "join cgroup". A failure is a
// [*backend.StepError] naming the step, returned once what the earlier
// steps created is released.
func (b *Backend) Launch(ctx context.Context, spec backend.Spec) (backend.Instance, error) {
	logger := b.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	l := &launch{b: b, spec: spec, logger: logger}
	if err := backend.RunSteps(ctx, backend.KindQEMU, l.steps()); err != nil {
		return nil, err
	}
	inst := &instance{cmd: l.cmd, dev: l.dev, stopDev: l.stopDev, devDone: l.devDone, group: l.group,
		vmDir: l.vmDir, link: spec.Dir.VM(), done: make(chan struct{})}
	console := spec.Console
	if console == nil {
		console = io.Discard
	}
	go inst.pump(l.stdout, console)
	return inst, nil
}

// launch is one microVM's launch: what its steps have found and created.
type launch struct {
	b      *Backend
	spec   backend.Spec
	logger *slog.Logger

	bin, accel string
	machine    string
	secs       backend.Sections
	cmdline    string // the image's command line and runtimeCmdline (microvm)
	extra      string // runtimeCmdline and what the accelerator adds
	eif        string // the image, for QEMU to load (nitro-enclave)
	cred       *syscall.Credential
	vmDir      string // QEMU's files; D/vm links to it
	linked     bool
	kernel     string
	initrd     string
	vhostSock  string
	dev        *vsockdev.Device
	stopDev    context.CancelFunc
	devDone    chan error
	cmd        *exec.Cmd
	stdout     io.ReadCloser
	group      *cgroups.Group
}

func (l *launch) steps() []backend.Step {
	return []backend.Step{
		{Name: "find qemu", Do: l.findQEMU},
		{Name: "check image", Do: l.checkImage},
		{Name: "resolve qemu user", Do: l.resolveUser},
		{Name: "create vm directory", Do: l.createVMDir, Undo: l.removeVMDir},
		{Name: "stage kernel and initrd", Do: l.stage},
		{Name: "start vsock device", Do: l.startDevice, Undo: l.stopDevice},
		{Name: "start qemu", Do: l.startQEMU, Undo: l.killQEMU},
		{Name: "join cgroup", Do: l.joinCgroup},
	}
}

func (l *launch) findQEMU(context.Context) error {
	var err error
	if l.machine, err = l.b.machine(); err != nil {
		return err
	}
	if l.bin, err = l.b.binary(); err != nil {
		return err
	}
	l.accel, err = l.b.accel()
	return err
}

// checkImage validates the image (backend.ImageSections), refuses one
// built without a kernel and reads its command line.
func (l *launch) checkImage(context.Context) error {
	var err error
	if l.secs, err = backend.ImageSections(l.spec.Image, l.spec.EIFPath, l.spec.ImageVerified); err != nil {
		return err
	}
	if l.secs.NoKernel {
		return fmt.Errorf("%w: %s was built without a kernel, so it can only run in the sandbox backend; rebuild it with build-enclave --kernel (see docs/images.md)", backend.ErrUnsupportedImage, l.spec.EIFPath)
	}
	c := l.secs.Cmdline
	if c.Size > 64<<10 {
		return fmt.Errorf("%w: %s has a %d-byte kernel command line", backend.ErrUnsupportedImage, l.spec.EIFPath, c.Size)
	}
	data := make([]byte, c.Size)
	if _, err := l.spec.Image.ReadAt(data, c.Offset); err != nil {
		return fmt.Errorf("read command line: %w", err)
	}
	l.extra = runtimeCmdline
	if l.accel == "tcg" {
		if khz := hostTSCkHz(); khz > 0 {
			l.extra += " tsc_early_khz=" + strconv.Itoa(khz)
		}
	}
	l.cmdline = strings.TrimSpace(string(data)) + " " + l.extra
	return nil
}

func (l *launch) resolveUser(context.Context) error {
	var err error
	l.cred, err = l.b.qemuCredential()
	return err
}

// createVMDir creates the directory of QEMU's files (kernel, initramfs,
// vhost-user socket), which the unprivileged QEMU can traverse; the
// enclave's private directory stays root-only, because its host listeners
// (the emulated security module among them) must not be reachable by
// other local users. D/vm points to it.
func (l *launch) createVMDir(context.Context) error {
	var err error
	if l.vmDir, err = os.MkdirTemp("", "cloister-vm-"); err != nil {
		return err
	}
	if err := os.Chmod(l.vmDir, 0o711); err != nil {
		return err
	}
	_ = os.Remove(l.spec.Dir.VM())
	if err := os.Symlink(l.vmDir, l.spec.Dir.VM()); err != nil {
		return err
	}
	l.linked = true
	return nil
}

func (l *launch) removeVMDir() {
	if l.vmDir != "" {
		os.RemoveAll(l.vmDir)
	}
	if l.linked {
		os.Remove(l.spec.Dir.VM())
	}
}

// stage copies the kernel out and concatenates the ramdisks into one
// initramfs, exactly as the Nitro hypervisor presents them: QEMU 7.2
// cannot load an EIF (copy_file_range: nothing passes through this
// process's memory). For nitro-enclave it copies the whole image, which
// QEMU loads and measures itself.
func (l *launch) stage(context.Context) error {
	var files []string
	if l.machine == MachineNitroEnclave {
		l.eif = filepath.Join(l.vmDir, "image.eif")
		if err := eif.ExtractImage(l.eif, l.spec.Image); err != nil {
			return fmt.Errorf("image: %w", err)
		}
		files = []string{l.eif}
	} else {
		l.kernel = filepath.Join(l.vmDir, "kernel")
		l.initrd = filepath.Join(l.vmDir, "initrd")
		if err := eif.ExtractSections(l.kernel, l.spec.Image, l.secs.Kernel); err != nil {
			return fmt.Errorf("kernel: %w", err)
		}
		if err := eif.ExtractSections(l.initrd, l.spec.Image, l.secs.Ramdisks...); err != nil {
			return fmt.Errorf("initrd: %w", err)
		}
		files = []string{l.kernel, l.initrd}
	}
	if l.cred != nil {
		for _, p := range files {
			if err := os.Chown(p, int(l.cred.Uid), int(l.cred.Gid)); err != nil {
				return err
			}
		}
	}
	return nil
}

// startDevice starts the vhost-user-vsock device and waits for its socket,
// which QEMU must find.
func (l *launch) startDevice(ctx context.Context) error {
	l.vhostSock = filepath.Join(l.vmDir, "vhost.sock")
	dev, err := vsockdev.New(vsockdev.Config{
		GuestCID: l.spec.CID, SocketPath: l.vhostSock,
		HostListenerBase: l.spec.Dir.HostListenerBase(),
		Logger:           l.logger.With("enclave", l.spec.ID, "component", "vsock"),
	})
	if err != nil {
		return err
	}
	devCtx, stopDev := context.WithCancel(context.Background())
	l.dev, l.stopDev, l.devDone = dev, stopDev, make(chan error, 1)
	go func() { l.devDone <- dev.Serve(devCtx) }()
	if err := waitForFile(ctx, l.vhostSock, 10*time.Second); err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	if l.cred != nil {
		if err := os.Chown(l.vhostSock, int(l.cred.Uid), int(l.cred.Gid)); err != nil {
			return fmt.Errorf("socket: %w", err)
		}
	}
	return nil
}

func (l *launch) stopDevice() {
	if l.dev == nil {
		return
	}
	l.stopDev()
	_ = l.dev.Close()
	<-l.devDone
}

func (l *launch) startQEMU(context.Context) error {
	args := Args(ArgsConfig{Accel: l.accel, MemoryMiB: l.spec.MemoryMiB, CPUs: len(l.spec.CPUs), Kernel: l.kernel, Initrd: l.initrd,
		Cmdline: l.cmdline, VhostSocket: l.vhostSock})
	if l.machine == MachineNitroEnclave {
		args = NitroArgs(NitroArgsConfig{Accel: l.accel, MemoryMiB: l.spec.MemoryMiB, CPUs: len(l.spec.CPUs), EIF: l.eif,
			ExtraCmdline: l.extra, VhostSocket: l.vhostSock, ModuleID: l.spec.ID})
	}
	cmd := exec.Command(l.bin, args...)
	cmd.Dir = l.vmDir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL, Credential: l.cred}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s: %w", l.bin, err)
	}
	l.cmd, l.stdout = cmd, stdout
	return nil
}

func (l *launch) killQEMU() {
	if l.cmd == nil {
		return
	}
	_ = l.cmd.Process.Kill()
	_ = l.cmd.Wait()
}

// joinCgroup confines QEMU: the enclave's CPUs, its memory plus QEMU's
// overhead, and a bounded number of threads. It is best effort, as it
// always was: without a usable cgroup hierarchy QEMU runs unconfined, with
// a warning.
func (l *launch) joinCgroup(ctx context.Context) error {
	mgr, err := cgroups.New(cgroups.Config{Parent: l.b.CgroupParent})
	if err != nil {
		return nil
	}
	grp, err := mgr.Create(ctx, l.spec.ID, cgroups.Limits{
		MemoryBytes: int64(l.spec.MemoryMiB+memOverheadMiB) << 20, CPUs: l.spec.CPUs, PidsMax: 512,
		Devices: kvmDevices(l.accel),
	})
	if err != nil {
		l.logger.Warn("qemu: cgroup", "err", err)
		return nil
	}
	if err := grp.Attach(l.cmd.Process.Pid); err != nil {
		l.logger.Warn("qemu: cgroup attach", "err", err)
	}
	l.group = grp
	return nil
}

// kvmDevices is the device rule the VM's cgroup needs for accel: QEMU
// keeps using /dev/kvm after it joined the group.
func kvmDevices(accel string) []string {
	if accel == "kvm" {
		return []string{cgroups.KVMDevice}
	}
	return nil
}

// cpuModel is the -cpu model for accel: the host's CPU under KVM, the
// most capable emulated one under TCG.
func cpuModel(accel string) string {
	if accel == "kvm" {
		return "host"
	}
	return "max"
}

// ArgsConfig describes one microVM's command line.
type ArgsConfig struct {
	Accel       string // kvm or tcg
	MemoryMiB   int
	CPUs        int
	Kernel      string
	Initrd      string
	Cmdline     string
	VhostSocket string
}

// Args returns QEMU's arguments for a locked-down microVM: no default
// devices, no network, no drives, no option ROMs, no user config, no
// monitor, the serial console on stdout, guest memory in a shared memfd
// (the vhost-user device maps it), and QEMU's own seccomp sandbox.
func Args(c ArgsConfig) []string {
	cpu := cpuModel(c.Accel)
	mem := strconv.Itoa(c.MemoryMiB) + "M"
	return slices.Concat([]string{
		"-M", "microvm,x-option-roms=off,rtc=on,memory-backend=mem",
		"-accel", c.Accel,
		"-cpu", cpu,
		"-m", mem,
		"-smp", strconv.Itoa(max(c.CPUs, 1)),
		"-object", "memory-backend-memfd,id=mem,size=" + mem + ",share=on",
	}, lockdown(c.VhostSocket), []string{
		"-device", "vhost-user-vsock-device,chardev=vsock0",
		"-kernel", c.Kernel,
		"-initrd", c.Initrd,
		"-append", c.Cmdline,
	})
}

// NitroArgsConfig describes one nitro-enclave VM's command line.
type NitroArgsConfig struct {
	Accel     string // kvm or tcg
	MemoryMiB int
	CPUs      int
	EIF       string // QEMU loads and measures it
	// ExtraCmdline is appended to the image's own command line.
	ExtraCmdline string
	VhostSocket  string
	// ModuleID is what the virtio-nsm device answers in DescribeNSM.
	ModuleID string
}

// NitroArgs returns QEMU's arguments for the nitro-enclave machine, locked
// down as [Args] is. The machine creates its vhost-user-vsock device on the
// chardev named by vsock= and its virtio-nsm device itself, and keeps guest
// memory in a shared memfd. Nitro disables ACPI; here it is on (acpi=on)
// because Debian's cloud kernels find virtio-mmio devices only through ACPI
// (they lack CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES, the other way).
func NitroArgs(c NitroArgsConfig) []string {
	mem := strconv.Itoa(c.MemoryMiB) + "M"
	return slices.Concat([]string{
		"-M", "nitro-enclave,vsock=vsock0,id=" + c.ModuleID + ",acpi=on,x-option-roms=off,rtc=on",
		"-accel", c.Accel,
		"-cpu", cpuModel(c.Accel),
		"-m", mem,
		"-smp", strconv.Itoa(max(c.CPUs, 1)),
	}, lockdown(c.VhostSocket), []string{
		"-kernel", c.EIF,
		"-append", c.ExtraCmdline,
	})
}

// lockdown is the part of every VM's command line that keeps QEMU locked
// down, the same for both machines: no default devices, user
// configuration, display, reboot, network or monitor; the console on the
// serial port; QEMU's own seccomp sandbox; and the vhost-user-vsock
// chardev (vsock0), the VM's only way out.
func lockdown(vhostSocket string) []string {
	return []string{
		"-global", "virtio-mmio.force-legacy=false",
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-nic", "none",
		"-monitor", "none",
		"-serial", "stdio",
		"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
		"-chardev", "socket,id=vsock0,path=" + vhostSocket,
	}
}

// hostTSCkHz returns the host CPU's frequency in kHz from /proc/cpuinfo,
// or 0. Under TCG the guest's TSC runs at the host's rate, but the microvm
// machine (hardware-reduced ACPI: no PIT, PIC or HPET) gives the kernel
// nothing to calibrate it against; on a busy host calibration fails, the
// local APIC timer never starts and boot hangs after "tsc: Marking TSC
// unstable". Passing tsc_early_khz avoids the calibration.
func hostTSCkHz() int {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok || strings.TrimSpace(k) != "cpu MHz" {
			continue
		}
		mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || mhz < 100 {
			return 0
		}
		return int(mhz * 1000)
	}
	return 0
}

func waitForFile(ctx context.Context, path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear within %s", path, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

type instance struct {
	cmd     *exec.Cmd
	dev     *vsockdev.Device
	stopDev context.CancelFunc
	devDone chan error
	group   *cgroups.Group
	vmDir   string // QEMU's files
	link    string // D/vm → vmDir
	done    chan struct{}

	mu         sync.Mutex
	exit       backend.Exit
	appStatus  *int
	panicked   bool
	terminated bool
}

var appExit = regexp.MustCompile(`cloister-init: application exited with status (\d+)`)

// pump copies the serial console and watches it for init's exit report and
// kernel panics, then waits for QEMU and records the exit.
func (i *instance) pump(r io.Reader, console io.Writer) {
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadString('\n')
		if len(line) > 0 {
			_, _ = io.WriteString(console, line)
			i.mu.Lock()
			if m := appExit.FindStringSubmatch(line); m != nil {
				n, _ := strconv.Atoi(m[1])
				i.appStatus = &n
			}
			if strings.Contains(line, "Kernel panic") {
				i.panicked = true
			}
			i.mu.Unlock()
		}
		if err != nil {
			break
		}
	}
	werr := i.cmd.Wait()
	i.stopDev()
	_ = i.dev.Close()
	<-i.devDone
	if i.group != nil {
		_ = backend.RemoveCgroup(i.group)
	}
	_ = os.RemoveAll(i.vmDir)
	_ = os.Remove(i.link)

	i.mu.Lock()
	x := backend.Exit{Code: -1}
	switch {
	case i.terminated:
		x.Reason = "terminated"
		if i.appStatus != nil {
			x.Code = *i.appStatus
		}
	case i.panicked:
		x.Reason = "kernel panic"
	case i.appStatus != nil:
		x.Code = *i.appStatus
		x.Reason = fmt.Sprintf("exited with status %d", x.Code)
	default:
		var ee *exec.ExitError
		if errors.As(werr, &ee) {
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				x.Signal = ws.Signal().String()
				x.Reason = "QEMU killed by " + x.Signal
				break
			}
			x.Reason = fmt.Sprintf("QEMU exited with status %d before the application ended", ee.ExitCode())
			break
		}
		x.Reason = "the virtual machine powered off before the application ended"
	}
	i.exit = x
	i.mu.Unlock()
	close(i.done)
}

func (i *instance) Pid() int              { return i.cmd.Process.Pid }
func (i *instance) Done() <-chan struct{} { return i.done }

func (i *instance) Exit() backend.Exit {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.exit
}

// Terminate stops the VM (SIGTERM to QEMU, then SIGKILL after
// backend.TerminateGrace) and waits for everything it owned to be released.
func (i *instance) Terminate(ctx context.Context) error {
	i.mu.Lock()
	i.terminated = true
	i.mu.Unlock()
	return backend.TerminateProcess(ctx, i.done, backend.TerminateGrace,
		func() error { return i.cmd.Process.Signal(syscall.SIGTERM) },
		func() error { _ = i.cmd.Process.Kill(); return nil })
}

// Dial opens a host-initiated connection to port inside the guest; the
// guest sees it coming from CID 3, as on Nitro.
func (i *instance) Dial(ctx context.Context, port uint32) (net.Conn, error) {
	return i.dev.ConnectGuest(ctx, port)
}

// Cleanup kills what is left of a VM whose monitor died: its cgroup holds
// QEMU.
func (b *Backend) Cleanup(ctx context.Context, spec backend.Spec) error {
	err := backend.CleanupCgroup(ctx, b.CgroupParent, spec.ID)
	link := spec.Dir.VM()
	if target, lerr := os.Readlink(link); lerr == nil && strings.HasPrefix(filepath.Base(target), "cloister-vm-") {
		_ = os.RemoveAll(target)
	}
	_ = os.Remove(link)
	return err
}
