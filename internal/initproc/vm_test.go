package initproc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

// fakeSys records the VM flow's system calls, with paths relative to root.
// Output, when set, also receives each call as "fakesys: <call>".
type fakeSys struct {
	root     string
	output   io.Writer
	loadErr  map[string]error // by module file name
	mountErr map[string]error // by target relative to root

	mu    sync.Mutex
	calls []string
}

var errFakeReboot = errors.New("fake reboot")

func (f *fakeSys) rel(p string) string {
	r, err := filepath.Rel(f.root, p)
	if err != nil || strings.HasPrefix(r, "..") {
		return p
	}
	return "/" + strings.TrimPrefix(r, ".")
}

func (f *fakeSys) record(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	f.mu.Lock()
	f.calls = append(f.calls, s)
	f.mu.Unlock()
	if f.output != nil {
		fmt.Fprintf(f.output, "fakesys: %s\n", s)
	}
}

func (f *fakeSys) Mount(source, target, fstype string, flags uintptr, data string) error {
	f.record("mount %s %s", fstype, f.rel(target))
	return f.mountErr[f.rel(target)]
}
func (f *fakeSys) Unmount(target string, flags int) error {
	f.record("umount %s", f.rel(target))
	return nil
}
func (f *fakeSys) LoadModule(file *os.File) error {
	b, err := io.ReadAll(file)
	if err != nil {
		return err
	}
	name := filepath.Base(file.Name())
	f.record("load %s (%s)", name, b)
	return f.loadErr[name]
}
func (f *fakeSys) SwitchRoot(newRoot string) (string, error) {
	f.record("switchroot %s", f.rel(newRoot))
	return newRoot, nil
}
func (f *fakeSys) ReopenConsole(path string) error {
	f.record("console %s", f.rel(path))
	return nil
}
func (f *fakeSys) Sync() { f.record("sync") }
func (f *fakeSys) Reboot() error {
	f.record("reboot")
	return errFakeReboot
}

// pipeParent is a heartbeat Dialer whose parent echoes (or answers reply).
func pipeParent(reply byte, calls *int) Dialer {
	return func(ctx context.Context) (Conn, error) {
		*calls++
		a, b := net.Pipe()
		go func() {
			defer b.Close()
			var buf [1]byte
			if _, err := io.ReadFull(b, buf[:]); err == nil {
				_, _ = b.Write([]byte{reply})
			}
		}()
		return a, nil
	}
}

// vmTree writes a bootstrap + customer ramdisk layout into a temporary root.
func vmTree(t *testing.T, cmdline string) string {
	t.Helper()
	root := t.TempDir()
	writeFiles(t, root, map[string]string{
		"proc/cmdline":          cmdline + "\n",
		"modules/order":         "virtio.ko\n\nvsock.ko\n",
		"modules/virtio.ko":     "VIRTIO",
		"modules/vsock.ko":      "VSOCK",
		"cmd":                   "hello\n--greet\n",
		"env":                   "GREETING=hi\n",
		"workdir":               "/work\n",
		"user":                  "app\n",
		"rootfs/etc/passwd":     "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
		"rootfs/etc/group":      "app:x:1000:\nstaff:x:50:app\n",
		"rootfs/usr/bin/hello":  "#!/bin/sh\n",
		"rootfs/usr/bin/notexe": "data",
	})
	if err := os.Chmod(filepath.Join(root, "rootfs/usr/bin/hello"), 0o755); err != nil {
		t.Fatal(err)
	}
	return root
}

func TestPrepareVM(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cmdline   string
		wantDials int
		wantLog   string
	}{
		{"heartbeat", "reboot=k console=ttyS0", 1, "cloister-init: heartbeat sent to the parent (vsock 3:9000)\n"},
		{"no heartbeat", "console=ttyS0 cloister.no_heartbeat=1", 0, "cloister-init: heartbeat skipped (cloister.no_heartbeat=1 on the kernel command line)\n"},
		{"switch turned off again", "cloister.no_heartbeat=1 cloister.no_heartbeat=0", 1, "cloister-init: heartbeat sent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := vmTree(t, tc.cmdline)
			sys := &fakeSys{root: root}
			var out strings.Builder
			dials := 0
			cfg := &Config{World: WorldVM, Root: root, Sys: sys, Dial: pipeParent(HeartbeatByte, &dials)}
			l, err := prepareVM(context.Background(), cfg, func(f string, a ...any) { fmt.Fprintf(&out, "cloister-init: "+f+"\n", a...) })
			if err != nil {
				t.Fatalf("prepareVM: %v\n%s", err, out.String())
			}
			wantCalls := []string{
				"mount devtmpfs /dev",
				"console /dev/console",
				"mount proc /proc",
				"umount /proc",
				"load virtio.ko (VIRTIO)",
				"load vsock.ko (VSOCK)",
				"switchroot /rootfs",
				"mount devtmpfs /rootfs/dev",
				"mount proc /rootfs/proc",
				"mount sysfs /rootfs/sys",
				"mount tmpfs /rootfs/run",
				"mount tmpfs /rootfs/tmp",
				"mount tmpfs /rootfs/dev/shm",
				"mount devpts /rootfs/dev/pts",
				"mount cgroup2 /rootfs/sys/fs/cgroup",
			}
			if diff := cmp.Diff(wantCalls, sys.calls); diff != "" {
				t.Errorf("system calls (-want +got):\n%s", diff)
			}
			if dials != tc.wantDials {
				t.Errorf("heartbeat dials = %d, want %d", dials, tc.wantDials)
			}
			if !strings.Contains(out.String(), "cloister-init: loaded kernel module virtio.ko\ncloister-init: loaded kernel module vsock.ko\n") {
				t.Errorf("console lacks the module lines:\n%s", out.String())
			}
			if !strings.Contains(out.String(), tc.wantLog) {
				t.Errorf("console lacks %q:\n%s", tc.wantLog, out.String())
			}
			want := Launch{
				Path: "/usr/bin/hello",
				Args: []string{"hello", "--greet"},
				Env:  []string{"GREETING=hi", "PATH=" + DefaultPath, "HOME=/home/app"},
				Dir:  "/work",
				Cred: Credential{UID: 1000, GID: 1000, Groups: []uint32{1000, 50}, Name: "app", Home: "/home/app"},
			}
			if diff := cmp.Diff(want, l); diff != "" {
				t.Errorf("Launch (-want +got):\n%s", diff)
			}
			for _, gone := range []string{"cmd", "env", "workdir", "user", "modules/order", "modules/virtio.ko", "modules/vsock.ko"} {
				if fileExists(filepath.Join(root, gone)) {
					t.Errorf("/%s still exists after init read it", gone)
				}
			}
			for _, link := range devLinks {
				got, err := os.Readlink(filepath.Join(root, "rootfs", link[0]))
				if err != nil || got != link[1] {
					t.Errorf("%s -> %q, %v; want -> %s", link[0], got, err, link[1])
				}
			}
			if !fileExists(filepath.Join(root, "rootfs/work")) {
				t.Errorf("the missing working directory was not created")
			}
		})
	}
}

func TestPrepareVMFailures(t *testing.T) {
	tests := []struct {
		name    string
		modify  func(t *testing.T, root string, sys *fakeSys, cfg *Config)
		wantErr error
		wantMsg string
	}{
		{"heartbeat wrong answer", func(t *testing.T, root string, sys *fakeSys, cfg *Config) {
			n := 0
			cfg.Dial = pipeParent(0x42, &n)
		}, ErrHeartbeat, "answered 0x42"},
		{"module load fails", func(t *testing.T, root string, sys *fakeSys, cfg *Config) {
			sys.loadErr = map[string]error{"vsock.ko": unix.ENOEXEC}
		}, unix.ENOEXEC, "loading kernel module vsock.ko"},
		{"module already loaded is fine, missing file is not", func(t *testing.T, root string, sys *fakeSys, cfg *Config) {
			sys.loadErr = map[string]error{"virtio.ko": unix.EEXIST}
			writeFiles(t, root, map[string]string{"modules/order": "virtio.ko\nabsent.ko\n"})
		}, os.ErrNotExist, "absent.ko"},
		{"module path escapes", func(t *testing.T, root string, sys *fakeSys, cfg *Config) {
			writeFiles(t, root, map[string]string{"modules/order": "../cmd\n"})
		}, nil, "want a file name"},
		{"no rootfs", func(t *testing.T, root string, sys *fakeSys, cfg *Config) {
			if err := os.RemoveAll(filepath.Join(root, "rootfs")); err != nil {
				t.Fatal(err)
			}
		}, nil, "no rootfs/"},
		{"no cmd", func(t *testing.T, root string, sys *fakeSys, cfg *Config) {
			os.Remove(filepath.Join(root, "cmd"))
		}, ErrNoCommand, "cmd does not exist"},
		{"command not in PATH", func(t *testing.T, root string, sys *fakeSys, cfg *Config) {
			writeFiles(t, root, map[string]string{"cmd": "nope\n"})
		}, nil, `"nope" not found in PATH=/sbin:/usr/sbin:/bin:/usr/bin`},
		{"command not executable", func(t *testing.T, root string, sys *fakeSys, cfg *Config) {
			writeFiles(t, root, map[string]string{"cmd": "notexe\n"})
		}, nil, "not an executable file"},
		{"unknown user", func(t *testing.T, root string, sys *fakeSys, cfg *Config) {
			writeFiles(t, root, map[string]string{"user": "ghost\n"})
		}, ErrUnknownUser, "ghost"},
		{"proc mount fails", func(t *testing.T, root string, sys *fakeSys, cfg *Config) {
			sys.mountErr = map[string]error{"/proc": unix.EPERM}
		}, unix.EPERM, "kernel command line"},
		{"rootfs sysfs mount fails", func(t *testing.T, root string, sys *fakeSys, cfg *Config) {
			sys.mountErr = map[string]error{"/rootfs/sys": unix.ENODEV}
		}, unix.ENODEV, "mounting sysfs on /sys"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := vmTree(t, "console=ttyS0")
			sys := &fakeSys{root: root}
			n := 0
			cfg := &Config{World: WorldVM, Root: root, Sys: sys, Dial: pipeParent(HeartbeatByte, &n),
				Heartbeat: HeartbeatConfig{Attempts: 1}}
			tc.modify(t, root, sys, cfg)
			l, err := prepareVM(context.Background(), cfg, func(string, ...any) {})
			if err == nil {
				t.Fatalf("prepareVM succeeded with %+v", l)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("prepareVM error %v; want one wrapping %v", err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("prepareVM error %q lacks %q", err, tc.wantMsg)
			}
		})
	}
}

func TestNitroNsmKo(t *testing.T) {
	root := vmTree(t, "cloister.no_heartbeat=1")
	writeFiles(t, root, map[string]string{"nsm.ko": "NSM"})
	sys := &fakeSys{root: root}
	if _, err := prepareVM(context.Background(), &Config{Root: root, Sys: sys}, func(string, ...any) {}); err != nil {
		t.Fatal(err)
	}
	if got := sys.calls[4]; got != "load nsm.ko (NSM)" {
		t.Errorf("first module loaded: %q, want nsm.ko before /modules/order", got)
	}
	if fileExists(filepath.Join(root, "nsm.ko")) {
		t.Error("/nsm.ko not removed after loading")
	}
}

func TestCmdlineParam(t *testing.T) {
	for _, tc := range []struct {
		cmdline, want string
		found         bool
	}{
		{"a=1 cloister.no_heartbeat=1 b", "1", true},
		{"cloister.no_heartbeat", "", true},
		{"cloister.no_heartbeat=1 cloister.no_heartbeat=0", "0", true},
		{"xcloister.no_heartbeat=1", "", false},
		{"", "", false},
	} {
		got, found := cmdlineParam(tc.cmdline, NoHeartbeatParam)
		if got != tc.want || found != tc.found {
			t.Errorf("cmdlineParam(%q) = %q, %v; want %q, %v", tc.cmdline, got, found, tc.want, tc.found)
		}
	}
}

func TestModuleInitFlags(t *testing.T) {
	for name, want := range map[string]int{
		"/modules/vsock.ko":  0,
		"/modules/nsm.ko.xz": unix.MODULE_INIT_COMPRESSED_FILE,
		"/nsm.ko":            0,
		"/modules/a.ko.zst":  unix.MODULE_INIT_COMPRESSED_FILE,
	} {
		if got := moduleInitFlags(name); got != want {
			t.Errorf("moduleInitFlags(%q) = %#x, want %#x", name, got, want)
		}
	}
}
