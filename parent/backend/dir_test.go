package backend_test

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/cloister/cloister/internal/hybrid"
	"github.com/cloister/cloister/parent/backend"
)

// TestDirLayout pins the per-enclave directory's layout
// (docs/ARCHITECTURE.md): monitors of an older daemon and enclaves already
// running use these exact names, so changing one breaks upgrades.
func TestDirLayout(t *testing.T) {
	d := backend.Dir("/s/enclaves/0123")
	got := map[string]string{
		"Record": d.Record(), "MonitorSpec": d.MonitorSpec(), "Exit": d.Exit(),
		"Console": d.Console(), "ConsoleRotated": d.ConsoleRotated(),
		"MonitorSock": d.MonitorSock(), "MonitorLog": d.MonitorLog(), "VsockSock": d.VsockSock(),
		"HostDir": d.HostDir(), "HostListenerBase": d.HostListenerBase(), "HostListener": d.HostListener(9000),
		"GuestDir": d.GuestDir(), "VM": d.VM(),
	}
	want := map[string]string{
		"Record": "/s/enclaves/0123/record.json", "MonitorSpec": "/s/enclaves/0123/monitor.json",
		"Exit": "/s/enclaves/0123/exit.json", "Console": "/s/enclaves/0123/console.log",
		"ConsoleRotated": "/s/enclaves/0123/console.log.1", "MonitorSock": "/s/enclaves/0123/monitor.sock",
		"MonitorLog": "/s/enclaves/0123/monitor.log", "VsockSock": "/s/enclaves/0123/vsock.sock",
		"HostDir": "/s/enclaves/0123/host", "HostListenerBase": "/s/enclaves/0123/host/vsock",
		"HostListener": "/s/enclaves/0123/host/vsock_9000", "GuestDir": "/s/enclaves/0123/guest",
		"VM": "/s/enclaves/0123/vm",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("layout (-want +got):\n%s", diff)
	}
	// hybrid.Listen(HostListenerBase(), port) listens on HostListener(port).
	for _, port := range []uint32{0, 9000, 5133133, 1<<32 - 1} {
		if a, b := hybrid.HostPath(d.HostListenerBase(), port), d.HostListener(port); a != b {
			t.Errorf("port %d: hybrid.HostPath = %s, HostListener = %s", port, a, b)
		}
	}
}
