package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// The daemon runs as root, but a path in a run request is opened with the
// permissions of the process that sent the request (SO_PEERCRED on the API
// socket), as nitro-cli — which runs as its user — would open it. Anyone
// allowed on the socket can therefore launch only images they could read
// themselves, and learns nothing about files they could not read.

// caller is the process on the other end of an API connection.
type caller struct {
	pid      int
	uid, gid int
}

type callerKey struct{}

// withCaller records the peer credentials of c in ctx (http.Server's
// ConnContext). Connections that are not Unix sockets carry none.
func withCaller(ctx context.Context, c net.Conn) context.Context {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return ctx
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return ctx
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || credErr != nil {
		return ctx
	}
	return context.WithValue(ctx, callerKey{}, caller{pid: int(cred.Pid), uid: int(cred.Uid), gid: int(cred.Gid)})
}

// ErrCallerAccess means the daemon cannot open a file with the caller's
// permissions.
var ErrCallerAccess = errors.New("daemon: cannot open the file as the caller")

// openAsCaller opens path read-only with the file-system identity of the
// API caller recorded in ctx: its uid, gid and supplementary groups, with
// none of the daemon's privileges (changing the file-system uid from 0
// drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH). A request that did not
// come through the socket (an in-process caller) opens as the daemon.
//
// The open is non-blocking, so a FIFO cannot stall the daemon; the caller
// checks that the result is a regular file.
func openAsCaller(ctx context.Context, path string) (*os.File, error) {
	const flags = unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOCTTY | unix.O_NONBLOCK
	c, ok := ctx.Value(callerKey{}).(caller)
	if !ok || c.uid == os.Geteuid() {
		fd, err := unix.Open(path, flags, 0)
		if err != nil {
			return nil, &os.PathError{Op: "open", Path: path, Err: err}
		}
		return os.NewFile(uintptr(fd), path), nil
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w: the daemon runs as uid %d and cannot act for uid %d; run it as root or as that user", ErrCallerAccess, os.Geteuid(), c.uid)
	}
	groups := callerGroups(c)
	type result struct {
		f   *os.File
		err error
	}
	done := make(chan result, 1)
	go func() {
		// The credentials below are those of this OS thread only. The
		// thread is never unlocked, so the runtime discards it when this
		// goroutine ends and no other goroutine ever runs with them.
		runtime.LockOSThread()
		if err := unix.Setgroups(groups); err != nil {
			done <- result{err: fmt.Errorf("%w: setgroups: %v", ErrCallerAccess, err)}
			return
		}
		if _, err := unix.SetfsgidRetGid(c.gid); err != nil {
			done <- result{err: fmt.Errorf("%w: setfsgid: %v", ErrCallerAccess, err)}
			return
		}
		if _, err := unix.SetfsuidRetUid(c.uid); err != nil {
			done <- result{err: fmt.Errorf("%w: setfsuid: %v", ErrCallerAccess, err)}
			return
		}
		// setfsuid reports failure only through the value it returns:
		// read it back.
		if cur, _ := unix.SetfsuidRetUid(-1); cur != c.uid {
			done <- result{err: fmt.Errorf("%w: file-system uid is %d, not %d", ErrCallerAccess, cur, c.uid)}
			return
		}
		fd, err := unix.Open(path, flags, 0)
		if err != nil {
			done <- result{err: &os.PathError{Op: "open", Path: path, Err: err}}
			return
		}
		done <- result{f: os.NewFile(uintptr(fd), path)}
	}()
	select {
	case r := <-done:
		return r.f, r.err
	case <-ctx.Done():
		go func() {
			if r := <-done; r.f != nil {
				r.f.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

// callerGroups returns the caller's supplementary groups, read from
// /proc/<pid>/status while its request is in flight, or only its primary
// group when they cannot be read (never more than it has).
func callerGroups(c caller) []int {
	groups := []int{c.gid}
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", c.pid))
	if err != nil {
		return groups
	}
	defer f.Close()
	var uidOK bool
	var found []int
	s := bufio.NewScanner(f)
	for s.Scan() {
		line := s.Text()
		switch {
		case strings.HasPrefix(line, "Uid:"):
			// The pid still belongs to the caller (pids are reused).
			fields := strings.Fields(line)
			uidOK = len(fields) > 2 && fields[2] == strconv.Itoa(c.uid)
		case strings.HasPrefix(line, "Groups:"):
			for _, g := range strings.Fields(strings.TrimPrefix(line, "Groups:")) {
				if n, err := strconv.Atoi(g); err == nil {
					found = append(found, n)
				}
			}
		}
	}
	if !uidOK {
		return groups
	}
	return append(groups, found...)
}
