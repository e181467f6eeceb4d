package transport

import (
	"os"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestDetect(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		nsm  bool
		want World
	}{
		{"bare VM", nil, false, WorldMicroVM},
		{"nitro", nil, true, WorldNitro},
		{"sandbox by dir", map[string]string{EnvVsockDir: "/run/cloister/vsock"}, false, WorldSandbox},
		{"sandbox dir wins over nsm", map[string]string{EnvVsockDir: "/x"}, true, WorldSandbox},
		{"explicit sandbox", map[string]string{EnvWorld: "sandbox"}, true, WorldSandbox},
		{"explicit microvm wins over dir and nsm", map[string]string{EnvWorld: "microvm", EnvVsockDir: "/x"}, true, WorldMicroVM},
		{"explicit nitro", map[string]string{EnvWorld: "nitro"}, false, WorldNitro},
		{"auto means detect", map[string]string{EnvWorld: "auto"}, true, WorldNitro},
		{"unknown value ignored", map[string]string{EnvWorld: "Sandbox"}, false, WorldMicroVM},
		{"empty dir is unset", map[string]string{EnvVsockDir: ""}, false, WorldMicroVM},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var probed []string
			got := detect(func(k string) string { return tt.env[k] }, func(p string) bool {
				probed = append(probed, p)
				return tt.nsm && p == "/dev/nsm"
			})
			if got != tt.want {
				t.Errorf("detect = %v, want %v", got, tt.want)
			}
			for _, p := range probed {
				if p != "/dev/nsm" {
					t.Errorf("probed unexpected path %q", p)
				}
			}
		})
	}
}

// TestKernelDevice tells the nsm driver's misc device (major 10) from any
// other file, such as the CUSE /dev/nsm of a microVM (a dynamic major).
func TestKernelDevice(t *testing.T) {
	tests := []struct {
		path string
		want bool
	}{
		{"/dev/null", false}, // character major 1
		{"/dev/zero", false},
		{"/", false},
		{"/no/such/file", false},
	}
	for _, tt := range tests {
		if got := kernelDevice(tt.path); got != tt.want {
			t.Errorf("kernelDevice(%s) = %v, want %v", tt.path, got, tt.want)
		}
	}
	// /dev/fuse, when present, is a misc device: major 10 like /dev/nsm.
	if _, err := os.Stat("/dev/fuse"); err == nil && !kernelDevice("/dev/fuse") {
		t.Error("kernelDevice(/dev/fuse) = false, want true (misc major 10)")
	}
	// glibc's encoding: major bits 0-11 at 8-19, bits 12-31 at 44-63.
	for _, dev := range []struct{ dev, major uint64 }{
		{10<<8 | 144, 10},
		{511 << 8, 511},
		{0x1000<<32 | 0xa<<8 | 1, 0x100a},
	} {
		if got := major(dev.dev); got != dev.major {
			t.Errorf("major(%#x) = %d, want %d", dev.dev, got, dev.major)
		}
	}
}

func TestDetectUsesEnvironment(t *testing.T) {
	t.Setenv(EnvWorld, "")
	t.Setenv(EnvVsockDir, "/somewhere")
	if got := Detect(); got != WorldSandbox {
		t.Errorf("Detect with %s set = %v, want sandbox", EnvVsockDir, got)
	}
	t.Setenv(EnvWorld, "nitro")
	if got := Detect(); got != WorldNitro {
		t.Errorf("Detect with %s=nitro = %v, want nitro", EnvWorld, got)
	}
}

func TestParseWorld(t *testing.T) {
	got := map[string]World{}
	for _, s := range []string{"auto", "nitro", "microvm", "sandbox"} {
		w, err := ParseWorld(s)
		if err != nil {
			t.Fatalf("ParseWorld(%q): %v", s, err)
		}
		got[s] = w
		if w.String() != s {
			t.Errorf("%v.String() = %q, want %q", w, w.String(), s)
		}
	}
	want := map[string]World{"auto": WorldAuto, "nitro": WorldNitro, "microvm": WorldMicroVM, "sandbox": WorldSandbox}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ParseWorld (-want +got):\n%s", diff)
	}
	for _, s := range []string{"", "NITRO", "qemu"} {
		if _, err := ParseWorld(s); err == nil {
			t.Errorf("ParseWorld(%q) succeeded", s)
		}
	}
	if s := World(42).String(); s != "World(42)" {
		t.Errorf("World(42).String() = %q", s)
	}
}
