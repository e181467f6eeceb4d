// Package sdnotifytest plays the service manager's side of sd_notify in
// tests: the datagram socket a Type=notify service reports to.
package sdnotifytest

import (
	"net"
	"path/filepath"
	"testing"
	"time"
)

// Listen opens the notification socket at dir/notify (put it in the
// service's NOTIFY_SOCKET) and returns its path and a function returning
// the next notification, which fails the test after 30 s without one
// (naming what was awaited) or once the socket is closed. The socket is
// closed at the end of the test.
func Listen(t testing.TB, dir string) (path string, next func(what string) string) {
	t.Helper()
	path = filepath.Join(dir, "notify")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	got := make(chan string, 8)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := ln.Read(buf)
			if err != nil {
				close(got)
				return
			}
			got <- string(buf[:n])
		}
	}()
	return path, func(what string) string {
		t.Helper()
		select {
		case s, ok := <-got:
			if !ok {
				t.Fatalf("notification socket closed waiting for %s", what)
			}
			return s
		case <-time.After(30 * time.Second):
			t.Fatalf("no %s notification", what)
		}
		return ""
	}
}
