// Command vsockprobe runs inside sandboxes for the AF_VSOCK, /dev/nsm and
// supervisor tests of parent/sandbox. It uses plain system calls
// (golang.org/x/sys/unix) and nothing of Cloister's, as an unmodified
// Nitro program would. Each invocation performs one probe or attack, chosen
// by its first argument, and prints "RESULT key=value" lines; "RESULT
// done=yes" ends every mode that finishes. It never dials vsock CID 2.
package main

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

func result(key string, v any) { fmt.Printf("RESULT %s=%v\n", key, v) }

// errName is "ok" or the errno's name ("EPERM", …).
func errName(err error) string {
	if err == nil {
		return "ok"
	}
	if e, ok := err.(unix.Errno); ok {
		if n := unix.ErrnoName(e); n != "" {
			return n
		}
		return fmt.Sprintf("errno%d", int(e))
	}
	return err.Error()
}

func atoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vsockprobe: bad number", s)
		os.Exit(2)
	}
	return n
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: vsockprobe MODE [ARGS]")
		os.Exit(2)
	}
	modes := map[string]func(args []string){
		"handoffbind": handoffBind,
	}
	f, ok := modes[os.Args[1]]
	if !ok {
		fmt.Fprintln(os.Stderr, "vsockprobe: unknown mode", os.Args[1])
		os.Exit(2)
	}
	f(os.Args[2:])
	result("done", "yes")
}

// handoffBind listens where the sandbox's hybrid listeners live
// (/run/cloister/vsock/guest/vsock_<port>), accepts one connection the
// way the SDK does (marker 'F' with the host client's socket), and binds
// that socket to the abstract Unix name args[1]. The socket belongs to
// the host client, so a bind that succeeds claims the name in the host's
// network namespace. It then reads from the socket until the host closes
// it.
func handoffBind(args []string) {
	port, name := args[0], args[1]
	l, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		result("listen", errName(err))
		return
	}
	path := "/run/cloister/vsock/guest/vsock_" + port
	if err := unix.Bind(l, &unix.SockaddrUnix{Name: path}); err != nil {
		result("listen", errName(err))
		return
	}
	if err := unix.Listen(l, 8); err != nil {
		result("listen", errName(err))
		return
	}
	result("listening", "yes")
	c, _, err := unix.Accept4(l, unix.SOCK_CLOEXEC)
	if err != nil {
		result("accept", errName(err))
		return
	}
	b := make([]byte, 1)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := unix.Recvmsg(c, b, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil || n != 1 || b[0] != 'F' {
		result("marker", fmt.Sprintf("%q %v", b[:n], errName(err)))
		return
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		result("marker", "no descriptor")
		return
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		result("marker", "no descriptor")
		return
	}
	unix.Close(c)
	s := fds[0]
	result("bind", errName(unix.Bind(s, &unix.SockaddrUnix{Name: "@" + name})))
	buf := make([]byte, 64)
	for {
		if n, err := unix.Read(s, buf); n <= 0 || err != nil {
			break
		}
	}
}
