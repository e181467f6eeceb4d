//go:build linux

package unotify

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Caller is the thread that made one notified call, as a handler reaches
// it: its descriptors and its memory. Everything obtained through it is
// bound to that thread by the rule of seccomp_unotify(2): open first,
// then check that the notification is still valid (the thread still waits
// in the call, so its id cannot have been reused), then use what was
// opened. Close releases what it opened.
type Caller struct {
	l *Listener
	n *Notification

	pidfd int      // -1 until needed
	mem   *os.File // /proc/<tid>/mem, nil until needed
	maps  *os.File // /proc/<tid>/maps, for access checks
}

// NewCaller returns the caller of n.
func NewCaller(l *Listener, n *Notification) *Caller {
	return &Caller{l: l, n: n, pidfd: -1}
}

// Valid reports whether the call still waits for its answer.
func (c *Caller) Valid() bool { return c.l.Valid(c.n.ID) }

// pidfdThread is PIDFD_THREAD (Linux 6.9): a pidfd for one thread.
const pidfdThread = unix.O_EXCL

// PIDFD returns a pidfd of the calling thread (of its thread group on
// kernels before 6.9, whose descriptor table a thread shares unless it was
// made with clone(2) without CLONE_FILES). It fails with [ErrGone] if the
// call is no longer valid.
func (c *Caller) PIDFD() (int, error) {
	if c.pidfd >= 0 {
		return c.pidfd, nil
	}
	tid := int(c.n.Pid)
	fd, err := unix.PidfdOpen(tid, pidfdThread)
	if errors.Is(err, unix.EINVAL) {
		// Before Linux 6.9: only thread-group leaders have pidfds.
		var tgid int
		if tgid, err = threadGroup(tid); err == nil {
			fd, err = unix.PidfdOpen(tgid, 0)
		}
	}
	if err != nil {
		if !c.Valid() {
			return -1, ErrGone
		}
		return -1, fmt.Errorf("unotify: pidfd of thread %d: %w", tid, err)
	}
	if !c.Valid() { // pidfds are close-on-exec
		unix.Close(fd)
		return -1, ErrGone
	}
	c.pidfd = fd
	return fd, nil
}

// threadGroup reads the thread group id of tid from /proc.
func threadGroup(tid int) (int, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(tid) + "/status")
	if err != nil {
		return 0, err
	}
	for _, line := range bytes.Split(b, []byte("\n")) {
		if v, ok := bytes.CutPrefix(line, []byte("Tgid:")); ok {
			return strconv.Atoi(string(bytes.TrimSpace(v)))
		}
	}
	return 0, fmt.Errorf("no Tgid in /proc/%d/status", tid)
}

// GetFD duplicates the caller's descriptor fd into this process
// (pidfd_getfd, close-on-exec). fd is the call's argument truncated to
// int32, as the kernel truncates it. It fails with [ErrGone] when the call
// is no longer valid and otherwise with the errno of pidfd_getfd (EBADF
// for a descriptor the caller does not have).
func (c *Caller) GetFD(fd int32) (int, error) {
	p, err := c.PIDFD()
	if err != nil {
		return -1, err
	}
	if fd < 0 {
		return -1, unix.EBADF
	}
	nfd, err := unix.PidfdGetfd(p, int(fd), 0)
	if err != nil {
		if !c.Valid() {
			return -1, ErrGone
		}
		return -1, err
	}
	return nfd, nil
}

// openMem opens the caller's memory and memory map and checks that the
// call is still valid, which binds them to the caller's address space.
func (c *Caller) openMem() error {
	if c.mem != nil {
		return nil
	}
	dir := "/proc/" + strconv.Itoa(int(c.n.Pid))
	mem, err := os.OpenFile(dir+"/mem", os.O_RDWR, 0)
	if err != nil {
		if !c.Valid() {
			return ErrGone
		}
		return fmt.Errorf("unotify: open the caller's memory: %w", err)
	}
	maps, err := os.Open(dir + "/maps")
	if err != nil {
		mem.Close()
		if !c.Valid() {
			return ErrGone
		}
		return fmt.Errorf("unotify: open the caller's memory map: %w", err)
	}
	if !c.Valid() {
		mem.Close()
		maps.Close()
		return ErrGone
	}
	c.mem, c.maps = mem, maps
	return nil
}

// errFault is the error of an access the kernel's copy_from_user or
// copy_to_user would refuse (EFAULT).
var errFault = fmt.Errorf("unotify: bad address in the caller: %w", unix.EFAULT)

// ReadAt reads len(p) bytes of the caller's memory at addr. It fails with
// an error wrapping EFAULT where the kernel's copy_from_user would (any
// byte not in a readable mapping), and with [ErrGone] when the call is no
// longer valid after the read. It implements nsmdev.Memory.
//
// The read is process_vm_readv(2) on the caller's thread id, which honours
// page protections as copy_from_user does. The thread id could name
// another process only if the caller had died and the id been reused; the
// check that the call is still valid, after the read, rules that out (a
// waiting caller is alive), so bytes read from anyone else are never used.
func (c *Caller) ReadAt(p []byte, addr uint64) error {
	if len(p) == 0 {
		return nil
	}
	if end := addr + uint64(len(p)); end < addr || end > maxUserAddr {
		return errFault
	}
	local := []unix.Iovec{{Base: &p[0]}}
	local[0].SetLen(len(p))
	remote := []unix.RemoteIovec{{Base: uintptr(addr), Len: len(p)}}
	n, err := unix.ProcessVMReadv(int(c.n.Pid), local, remote, 0)
	if !c.Valid() {
		return ErrGone
	}
	if err != nil || n != len(p) {
		if errors.Is(err, unix.EPERM) {
			// The supervisor may not read the sandbox (not root?).
			return fmt.Errorf("unotify: read the caller's memory: %v", err)
		}
		return errFault
	}
	return nil
}

// WriteAt writes p to the caller's memory at addr, failing with an error
// wrapping EFAULT where copy_to_user would (a byte not in a writable
// mapping). It implements nsmdev.Memory.
//
// A write by thread id could land in another process if the caller died
// between a validity check and the write, so writes go through the
// caller's /proc/<tid>/mem, opened and then checked valid (the open file
// is bound to the caller's address space), after a check of the mapping's
// permissions (writes through that file ignore them).
func (c *Caller) WriteAt(p []byte, addr uint64) error {
	if len(p) == 0 {
		return nil
	}
	if err := c.openMem(); err != nil {
		return err
	}
	// copy_to_user writes what it can up to the first byte it cannot,
	// then fails: so does this (nsmprobe's response_straddles_unmapped).
	n, err := c.accessible(addr, uint64(len(p)), procmapWritable)
	if n > 0 && (err == nil || errors.Is(err, errFault)) {
		if werr := fullAt(c.mem.WriteAt, p[:n], addr); werr != nil {
			return werr
		}
	}
	if err != nil {
		return err
	}
	return nil
}

// fullAt runs a whole ReadAt or WriteAt on /proc/<tid>/mem; any failure
// or short transfer is a fault.
func fullAt(f func([]byte, int64) (int, error), p []byte, addr uint64) error {
	if addr > 1<<63-1 {
		return errFault
	}
	n, err := f(p, int64(addr))
	if err != nil || n != len(p) {
		return errFault
	}
	return nil
}

// maxUserAddr bounds user addresses (x86_64's 5-level paging, arm64's
// 52-bit VA): anything above is kernel space, where copy_*_user fail.
const maxUserAddr = 1 << 56

// PROCMAP_QUERY (Linux 6.11): ask /proc/<pid>/maps for the mapping that
// covers an address (include/uapi/linux/fs.h).
const (
	procmapQuery    = 0xc0686611 // _IOWR('f', 17, struct procmap_query)
	procmapReadable = 0x01
	procmapWritable = 0x02
)

type procmapQueryArg struct {
	Size        uint64
	QueryFlags  uint64
	QueryAddr   uint64
	VMAStart    uint64
	VMAEnd      uint64
	VMAFlags    uint64
	VMAPageSize uint64
	VMAOffset   uint64
	Inode       uint64
	DevMajor    uint32
	DevMinor    uint32
	VMANameSize uint32
	BuildIDSize uint32
	VMANameAddr uint64
	BuildIDAddr uint64
}

// accessible reports how many bytes from addr lie in mappings that all
// have the permission want (procmapReadable or procmapWritable), as the
// kernel's user copies require, up to n, and errFault when that is fewer
// than n (or the range wraps or reaches kernel space, then 0). The check
// and the access that follows are not atomic, which only matters to a
// caller that changes its own mappings meanwhile (and can only hurt
// itself).
func (c *Caller) accessible(addr, n uint64, want uint64) (int, error) {
	end := addr + n
	if end < addr || end > maxUserAddr {
		return 0, errFault
	}
	for cur := addr; cur < end; {
		start, stop, flags, err := c.mapping(cur)
		if err != nil {
			return int(cur - addr), err
		}
		if cur < start || flags&want == 0 {
			return int(cur - addr), errFault
		}
		cur = stop
	}
	return int(n), nil
}

// mapping returns the mapping covering addr: its bounds and permissions
// (procmap flags). PROCMAP_QUERY is used where the kernel has it, else
// /proc/<tid>/maps is parsed.
func (c *Caller) mapping(addr uint64) (start, end, flags uint64, err error) {
	q := procmapQueryArg{Size: uint64(unsafe.Sizeof(procmapQueryArg{})), QueryAddr: addr}
	_, _, e := unix.Syscall(unix.SYS_IOCTL, c.maps.Fd(), procmapQuery, uintptr(unsafe.Pointer(&q)))
	switch e {
	case 0:
		return q.VMAStart, q.VMAEnd, q.VMAFlags, nil
	case unix.ENOENT:
		return 0, 0, 0, errFault
	case unix.ENOTTY, unix.EINVAL:
		return c.mappingFromText(addr)
	}
	if !c.Valid() {
		return 0, 0, 0, ErrGone
	}
	return 0, 0, 0, fmt.Errorf("unotify: PROCMAP_QUERY: %w", e)
}

// maxMapsText bounds the text of /proc/<tid>/maps read by the fallback.
const maxMapsText = 16 << 20

// mapsLineBuf is the fallback's read buffer: longer than any line of
// /proc/<tid>/maps (a path is at most PATH_MAX; newlines in it are
// escaped).
const mapsLineBuf = 16 << 10

// mappingFromText finds addr's mapping in the text of /proc/<tid>/maps,
// reading it line by line: the text of a caller with tens of thousands
// of mappings is megabytes, and many handlers may look at once, so it is
// never held whole.
func (c *Caller) mappingFromText(addr uint64) (start, end, flags uint64, err error) {
	r := bufio.NewReaderSize(io.NewSectionReader(c.maps, 0, maxMapsText), mapsLineBuf)
	for {
		line, rerr := r.ReadSlice('\n')
		if errors.Is(rerr, bufio.ErrBufferFull) {
			// Not a line of the format: skip the rest of it.
			for errors.Is(rerr, bufio.ErrBufferFull) {
				_, rerr = r.ReadSlice('\n')
			}
			line = nil
		}
		if start, end, flags, ok := FindMapping(line, addr); ok {
			return start, end, flags, nil
		}
		if rerr != nil {
			return 0, 0, 0, errFault
		}
	}
}

// FindMapping returns the mapping of the /proc/<pid>/maps text maps that
// covers addr: its bounds and its permissions as PROCMAP_QUERY flags
// (readable 1, writable 2, executable 4, shared 8). Malformed lines are
// skipped.
func FindMapping(maps []byte, addr uint64) (start, end, flags uint64, ok bool) {
	for len(maps) > 0 {
		line := maps
		if i := bytes.IndexByte(maps, '\n'); i >= 0 {
			line, maps = maps[:i], maps[i+1:]
		} else {
			maps = nil
		}
		rng, rest, found := bytes.Cut(line, []byte(" "))
		if !found {
			continue
		}
		lo, hi, found := bytes.Cut(rng, []byte("-"))
		if !found {
			continue
		}
		s, err1 := strconv.ParseUint(string(lo), 16, 64)
		e, err2 := strconv.ParseUint(string(hi), 16, 64)
		if err1 != nil || err2 != nil || s >= e || addr < s || addr >= e {
			continue
		}
		if len(rest) < 4 {
			continue
		}
		var f uint64
		for i, bit := range []uint64{procmapReadable, procmapWritable, 0x04, 0x08} {
			if ch := rest[i]; ch != '-' && ch != 'p' {
				f |= bit
			}
		}
		return s, e, f, true
	}
	return 0, 0, 0, false
}

// Close releases the pidfd and memory descriptors opened for the call.
func (c *Caller) Close() {
	if c.pidfd >= 0 {
		unix.Close(c.pidfd)
		c.pidfd = -1
	}
	if c.mem != nil {
		c.mem.Close()
		c.maps.Close()
		c.mem, c.maps = nil, nil
	}
}
