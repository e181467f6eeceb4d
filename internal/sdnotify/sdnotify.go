// Package sdnotify tells a service manager about a service's state with
// the sd_notify protocol (systemd's Type=notify): one datagram of
// newline-separated VARIABLE=value assignments to the Unix socket named
// by $NOTIFY_SOCKET ("@name" for the abstract namespace).
//
// Outside a service manager NOTIFY_SOCKET is unset and every call does
// nothing, so services call it unconditionally.
package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
)

// States a service reports (see sd_notify(3)).
const (
	// Ready: start-up is finished (the API is being served).
	Ready = "READY=1"
	// Stopping: the service is shutting down.
	Stopping = "STOPPING=1"
)

// SocketEnv is the environment variable naming the service manager's socket.
const SocketEnv = "NOTIFY_SOCKET"

// Notify sends state to the socket named by $NOTIFY_SOCKET. It reports
// whether a service manager was notified: false with a nil error when
// NOTIFY_SOCKET is unset.
func Notify(state string) (bool, error) {
	return NotifySocket(os.Getenv(SocketEnv), state)
}

// NotifySocket sends state to the notification socket at path (as in
// $NOTIFY_SOCKET; "" does nothing). Only Unix datagram sockets are
// supported: a filesystem path or "@name" (abstract).
func NotifySocket(path, state string) (bool, error) {
	if path == "" {
		return false, nil
	}
	if path[0] != '/' && path[0] != '@' {
		return false, fmt.Errorf("sdnotify: %s=%q is neither an absolute path nor an abstract socket name (@name)", SocketEnv, path)
	}
	if state == "" {
		return false, errors.New("sdnotify: empty state")
	}
	name := path
	if name[0] == '@' {
		name = "\x00" + name[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return false, fmt.Errorf("sdnotify: connect to the service manager at %s: %w", path, err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return false, fmt.Errorf("sdnotify: send %q: %w", state, err)
	}
	return true, nil
}
