package kmod

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

var (
	// ErrNotFound means a requested module is neither in modules.dep nor
	// built into the kernel.
	ErrNotFound = errors.New("kmod: module not found")
	// ErrMalformed means modules.dep could not be parsed or its
	// dependencies form a cycle.
	ErrMalformed = errors.New("kmod: malformed modules.dep")
)

// maxDepFile caps the size of modules.dep and modules.builtin that Resolve
// reads (Debian's are about 100 KiB).
const maxDepFile = 16 << 20

// VsockModuleNames are the modules a Debian cloud kernel needs for
// virtio-vsock over virtio-mmio in a QEMU microVM, as passed to [Resolve] by
// [VsockModules]. Their dependencies (virtio, virtio_ring, vsock,
// vmw_vsock_virtio_transport_common) are added by Resolve.
var VsockModuleNames = []string{"virtio_mmio", "vmw_vsock_virtio_transport"}

// VsockModules returns the absolute .ko paths, in load order, of
// [VsockModuleNames] and their dependencies in modulesDir (for Debian 12's
// cloud kernel: virtio_ring, virtio, virtio_mmio, vsock,
// vmw_vsock_virtio_transport_common, vmw_vsock_virtio_transport). Modules built
// into the kernel are left out.
func VsockModules(modulesDir string) ([]string, error) {
	return Resolve(modulesDir, VsockModuleNames...)
}

// CUSEModuleName is the module that lets cloister-init serve /dev/nsm in a
// microVM (CUSE, character devices in user space; it needs fuse).
const CUSEModuleName = "cuse"

// MicroVMModules returns [VsockModules] followed by [CUSEModuleName] and
// its dependencies (fuse) when the kernel has CUSE as a module; a kernel
// without it (or with it built in) adds nothing, and the guest then has no
// /dev/nsm (the SDK reaches the emulated module over vsock directly).
func MicroVMModules(modulesDir string) ([]string, error) {
	vm, err := VsockModules(modulesDir)
	if err != nil {
		return nil, err
	}
	all, err := Resolve(modulesDir, append(append([]string{}, VsockModuleNames...), CUSEModuleName)...)
	if errors.Is(err, ErrNotFound) {
		return vm, nil
	}
	if err != nil {
		return nil, err
	}
	return all, nil
}

// Resolve reads modulesDir/modules.dep (and modulesDir/modules.builtin when
// present) and returns the absolute paths of the .ko files needed to load the
// named modules: every dependency before the modules that use it, each file
// once, requested modules in the order given. A name may use '-' or '_'
// interchangeably and may carry a .ko suffix. A module built into the kernel
// needs no file and is skipped. It fails with [ErrNotFound] for an unknown
// module and [ErrMalformed] for an unparsable modules.dep or a dependency
// cycle. Compressed module files are returned as they are (see [Compressed]). It does not check that
// the .ko files exist.
func Resolve(modulesDir string, names ...string) ([]string, error) {
	deps, err := readDep(filepath.Join(modulesDir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	builtin, err := readBuiltin(filepath.Join(modulesDir, "modules.builtin"))
	if err != nil {
		return nil, err
	}
	r := resolver{deps: deps, state: map[string]int{}}
	for _, n := range names {
		name := ModuleName(n)
		if name == "" {
			return nil, fmt.Errorf("%w: empty module name", ErrNotFound)
		}
		if _, ok := deps.byName[name]; !ok {
			if builtin[name] {
				continue
			}
			return nil, fmt.Errorf("%w: %q is not in %s", ErrNotFound, n, filepath.Join(modulesDir, "modules.dep"))
		}
		if err := r.visit(deps.byName[name], nil); err != nil {
			return nil, err
		}
	}
	out := make([]string, 0, len(r.order))
	for _, rel := range r.order {
		if filepath.IsAbs(rel) {
			out = append(out, rel)
		} else {
			out = append(out, filepath.Join(modulesDir, rel))
		}
	}
	return out, nil
}

// ModuleName returns the kernel's name for a module given as a name or a
// file path: the base name without the .ko[.xz|.zst|.gz] suffix, with '-'
// replaced by '_' ("kernel/drivers/virtio/virtio-mmio.ko.xz" → "virtio_mmio").
func ModuleName(s string) string {
	s = filepath.Base(s)
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		s = strings.TrimSuffix(s, ext)
	}
	s = strings.TrimSuffix(s, ".ko")
	if s == "." || s == "/" {
		return ""
	}
	return strings.ReplaceAll(s, "-", "_")
}

// Compressed reports whether a module file is stored compressed (.ko.xz,
// .ko.zst, .ko.gz, as Debian's 6.12 kernels ship them). cloister-init loads
// such a file with finit_module's MODULE_INIT_COMPRESSED_FILE: the enclave
// kernel decompresses it, which needs Linux 6.4 or later built with
// CONFIG_MODULE_DECOMPRESS and the file's algorithm.
func Compressed(path string) bool {
	for _, ext := range []string{".ko.xz", ".ko.zst", ".ko.gz"} {
		if strings.HasSuffix(path, ext) {
			return true
		}
	}
	return false
}

type depFile struct {
	byName map[string]string   // module name → path as written in modules.dep
	deps   map[string][]string // path → dependency paths
}

func readDep(path string) (depFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return depFile{}, fmt.Errorf("kmod: reading the module dependency list: %w (is %s a /lib/modules/<version> directory?)", err, filepath.Dir(path))
	}
	defer f.Close()
	d := depFile{byName: map[string]string{}, deps: map[string][]string{}}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	line, total := 0, 0
	for sc.Scan() {
		line++
		total += len(sc.Bytes()) + 1
		if total > maxDepFile {
			return depFile{}, fmt.Errorf("%w: %s is larger than %d bytes", ErrMalformed, path, maxDepFile)
		}
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		mod, rest, ok := strings.Cut(text, ":")
		mod = strings.TrimSpace(mod)
		if !ok || mod == "" {
			return depFile{}, fmt.Errorf("%w: %s line %d: want \"module.ko: dependencies...\"", ErrMalformed, path, line)
		}
		name := ModuleName(mod)
		if prev, dup := d.byName[name]; dup && prev != mod {
			return depFile{}, fmt.Errorf("%w: %s line %d: module %s listed twice (%s and %s)", ErrMalformed, path, line, name, prev, mod)
		}
		d.byName[name] = mod
		d.deps[mod] = strings.Fields(rest)
	}
	if err := sc.Err(); err != nil {
		return depFile{}, fmt.Errorf("%w: %s: %v", ErrMalformed, path, err)
	}
	return d, nil
}

func readBuiltin(path string) (map[string]bool, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]bool{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("kmod: reading the built-in module list: %w", err)
	}
	if len(b) > maxDepFile {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrMalformed, path, maxDepFile)
	}
	m := map[string]bool{}
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			m[ModuleName(l)] = true
		}
	}
	return m, nil
}

// visit states.
const (
	unvisited = iota
	visiting
	done
)

type resolver struct {
	deps  depFile
	state map[string]int
	order []string
}

// visit appends mod after all its dependencies (depth-first post-order), so
// the result does not depend on the order depmod listed them in.
func (r *resolver) visit(mod string, chain []string) error {
	switch r.state[mod] {
	case done:
		return nil
	case visiting:
		return fmt.Errorf("%w: dependency cycle %s", ErrMalformed, strings.Join(append(chain, mod), " -> "))
	}
	r.state[mod] = visiting
	chain = append(chain, mod)
	for _, dep := range r.deps.deps[mod] {
		if _, ok := r.deps.deps[dep]; !ok {
			return fmt.Errorf("%w: %s depends on %s, which has no line of its own", ErrMalformed, mod, dep)
		}
		if err := r.visit(dep, chain); err != nil {
			return err
		}
	}
	r.state[mod] = done
	r.order = append(r.order, mod)
	return nil
}
