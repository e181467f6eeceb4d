package sdnotify

import (
	"net"
	"path/filepath"
	"testing"
	"time"
)

// listen opens a datagram socket like the one a service manager gives a
// service, and returns the name to put in NOTIFY_SOCKET.
func listen(t *testing.T, abstract bool) (string, *net.UnixConn) {
	t.Helper()
	name := filepath.Join(t.TempDir(), "notify")
	env := name
	if abstract {
		env = "@cloister-sdnotify-test-" + filepath.Base(t.TempDir())
		name = "\x00" + env[1:]
	}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return env, c
}

func TestNotifyDelivers(t *testing.T) {
	for _, abstract := range []bool{false, true} {
		env, c := listen(t, abstract)
		t.Setenv(SocketEnv, env)
		for _, state := range []string{Ready, Stopping, "STATUS=serving 3 enclaves"} {
			ok, err := Notify(state)
			if err != nil || !ok {
				t.Fatalf("Notify(%q) via %q = %v, %v", state, env, ok, err)
			}
			buf := make([]byte, 256)
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, err := c.Read(buf)
			if err != nil {
				t.Fatal(err)
			}
			if got := string(buf[:n]); got != state {
				t.Errorf("the service manager got %q, want %q", got, state)
			}
		}
	}
}

func TestNotifyWithoutServiceManager(t *testing.T) {
	t.Setenv(SocketEnv, "")
	if ok, err := Notify(Ready); ok || err != nil {
		t.Fatalf("Notify without NOTIFY_SOCKET = %v, %v; want false, nil", ok, err)
	}
}

func TestNotifyErrors(t *testing.T) {
	for _, tc := range []struct{ path, state string }{
		{"relative/socket", Ready},
		{filepath.Join(t.TempDir(), "missing"), Ready},
		{"@x", ""},
	} {
		if ok, err := NotifySocket(tc.path, tc.state); ok || err == nil {
			t.Errorf("NotifySocket(%q, %q) = %v, %v; want an error", tc.path, tc.state, ok, err)
		}
	}
}
