// Package cusetest simulates the kernel side of CUSE for tests of
// cuse.Server and its handlers: it sends the requests Linux's cuse.ko
// sends, over a SOCK_SEQPACKET socket pair (one message per request and per
// answer, like /dev/cuse), and plays fs/fuse/ioctl.c's fuse_do_ioctl
// retry loop against a fake caller memory.
package cusetest

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/cloister/cloister/internal/cuse"
)

// Protocol numbers the simulator sends (include/uapi/linux/fuse.h).
const (
	OpOpen        = 14
	OpRead        = 15
	OpWrite       = 16
	OpRelease     = 18
	OpFlush       = 25
	OpInterrupt   = 36
	OpIoctl       = 39
	OpPoll        = 40
	OpBatchForget = 42
	OpCuseInit    = 4096

	ioctlRetry       = 1 << 2
	ioctlUnrestrict  = 1 << 1
	ioctlMaxIOV      = 256
	maxPages         = 32 // FUSE_DEFAULT_MAX_PAGES_PER_REQ
	pageSize         = 4096
	inHeaderSize     = 40
	outHeaderSize    = 16
	ioctlOutSize     = 16
	ioctlIOVSize     = 16
	cuseInitOutSize  = 72
	defaultMaxMinor  = 38
	cuseUnrestricted = 1
)

// Memory is the calling process's memory (nsmdevtest.Memory fits).
type Memory interface {
	ReadAt(p []byte, addr uint64) error
	WriteAt(p []byte, addr uint64) error
}

// Pair returns the server's end of a new channel (give it to cuse.Init)
// and the simulated kernel holding the other end.
func Pair() (*os.File, *Kernel, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0) // non-blocking: Close interrupts reads
	if err != nil {
		return nil, nil, fmt.Errorf("cusetest: socketpair: %w", err)
	}
	k := &Kernel{f: os.NewFile(uintptr(fds[1]), "cusetest-kernel"), waiting: map[uint64]chan []byte{}}
	return os.NewFile(uintptr(fds[0]), "cusetest-channel"), k, nil
}

// Kernel is the simulated kernel. Its methods may be called concurrently
// once Start has run.
type Kernel struct {
	f      *os.File
	unique atomic.Uint64

	mu      sync.Mutex
	waiting map[uint64]chan []byte
	stray   [][]byte // answers to nobody
	// Init is the server's answer to CUSE_INIT.
	Init InitOut
}

// InitOut is the decoded struct cuse_init_out and device info.
type InitOut struct {
	Major, Minor, Flags, MaxRead, MaxWrite, DevMajor, DevMinor uint32
	Info                                                       string
}

// Close closes the kernel's end; the server's Serve then fails.
func (k *Kernel) Close() error { return k.f.Close() }

// header builds struct fuse_in_header for a body of n bytes.
func (k *Kernel) header(op uint32, n int, pid uint32) ([]byte, uint64) {
	u := k.unique.Add(2) // even, as the kernel's (the low bit marks interrupts)
	b := make([]byte, 0, inHeaderSize+n)
	le := binary.LittleEndian
	b = le.AppendUint32(b, uint32(inHeaderSize+n))
	b = le.AppendUint32(b, op)
	b = le.AppendUint64(b, u)
	b = le.AppendUint64(b, 0)    // nodeid
	b = le.AppendUint32(b, 1000) // uid
	b = le.AppendUint32(b, 1000) // gid
	b = le.AppendUint32(b, pid)
	b = le.AppendUint32(b, 0) // total_extlen, padding
	return b, u
}

// Handshake sends CUSE_INIT with protocol 7.minor and reads the answer
// into k.Init, then starts the reader that routes answers. It returns the
// answer's error field (0 on success).
func (k *Kernel) Handshake(minor uint32) (int32, error) {
	b, u := k.header(OpCuseInit, 16, 0)
	le := binary.LittleEndian
	b = le.AppendUint32(b, 7)
	b = le.AppendUint32(b, minor)
	b = le.AppendUint32(b, 0)
	b = le.AppendUint32(b, cuseUnrestricted)
	if _, err := k.f.Write(b); err != nil {
		return 0, err
	}
	buf := make([]byte, 8192)
	n, err := k.f.Read(buf)
	if err != nil {
		return 0, err
	}
	ans, errno, err := parseAnswer(buf[:n], u)
	if err != nil || errno != 0 {
		return errno, err
	}
	if len(ans) < cuseInitOutSize {
		return 0, fmt.Errorf("cusetest: CUSE_INIT answer of %d bytes", len(ans))
	}
	k.Init = InitOut{
		Major: le.Uint32(ans[0:]), Minor: le.Uint32(ans[4:]), Flags: le.Uint32(ans[12:]),
		MaxRead: le.Uint32(ans[16:]), MaxWrite: le.Uint32(ans[20:]), DevMajor: le.Uint32(ans[24:]), DevMinor: le.Uint32(ans[28:]),
		Info: string(ans[cuseInitOutSize:]),
	}
	go k.readLoop()
	return 0, nil
}

// First sends a request in place of CUSE_INIT and reads its answer (to
// test a server that gets something else first).
func (k *Kernel) First(op uint32, body []byte) ([]byte, int32, error) {
	b, u := k.header(op, len(body), 1)
	if _, err := k.f.Write(append(b, body...)); err != nil {
		return nil, 0, err
	}
	buf := make([]byte, 8192)
	n, err := k.f.Read(buf)
	if err != nil {
		return nil, 0, err
	}
	return parseAnswer(buf[:n], u)
}

// parseAnswer checks struct fuse_out_header and returns the body.
func parseAnswer(b []byte, unique uint64) ([]byte, int32, error) {
	if len(b) < outHeaderSize {
		return nil, 0, fmt.Errorf("cusetest: answer of %d bytes", len(b))
	}
	le := binary.LittleEndian
	if int(le.Uint32(b)) != len(b) {
		return nil, 0, fmt.Errorf("cusetest: answer says %d bytes, got %d", le.Uint32(b), len(b))
	}
	if u := le.Uint64(b[8:]); u != unique {
		return nil, 0, fmt.Errorf("cusetest: answer for request %d, want %d", u, unique)
	}
	errno := int32(le.Uint32(b[4:]))
	if errno > 0 || errno < -4095 {
		return nil, 0, fmt.Errorf("cusetest: answer with error %d", errno)
	}
	if errno != 0 && len(b) != outHeaderSize {
		return nil, 0, fmt.Errorf("cusetest: error answer with a %d-byte body", len(b)-outHeaderSize)
	}
	return b[outHeaderSize:], errno, nil
}

func (k *Kernel) readLoop() {
	buf := make([]byte, 1<<20)
	for {
		n, err := k.f.Read(buf)
		if err != nil || n == 0 {
			k.mu.Lock()
			for _, ch := range k.waiting {
				close(ch)
			}
			k.waiting = map[uint64]chan []byte{}
			k.mu.Unlock()
			return
		}
		msg := append([]byte(nil), buf[:n]...)
		var u uint64
		if n >= outHeaderSize {
			u = binary.LittleEndian.Uint64(msg[8:])
		}
		k.mu.Lock()
		ch, ok := k.waiting[u]
		delete(k.waiting, u)
		if !ok {
			k.stray = append(k.stray, msg)
		}
		k.mu.Unlock()
		if ok {
			ch <- msg
		}
	}
}

// ErrNoAnswer means the server closed the channel before answering.
var ErrNoAnswer = errors.New("cusetest: no answer")

// Call sends one request (op with body, from thread pid) and returns the
// answer's body and error field.
func (k *Kernel) Call(op uint32, body []byte, pid uint32) ([]byte, int32, error) {
	b, u := k.header(op, len(body), pid)
	b = append(b, body...)
	ch := make(chan []byte, 1)
	k.mu.Lock()
	k.waiting[u] = ch
	k.mu.Unlock()
	if _, err := k.f.Write(b); err != nil {
		return nil, 0, err
	}
	msg, ok := <-ch
	if !ok {
		return nil, 0, ErrNoAnswer
	}
	return parseAnswer(msg, u)
}

// Send sends a request for which no answer is expected (FUSE_FORGET) or
// awaited, and returns its unique ID.
func (k *Kernel) Send(op uint32, body []byte) (uint64, error) {
	b, u := k.header(op, len(body), 0)
	_, err := k.f.Write(append(b, body...))
	return u, err
}

// Stray returns answers that matched no waiting request.
func (k *Kernel) Stray() [][]byte {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([][]byte(nil), k.stray...)
}

// Open sends FUSE_OPEN and returns the handle.
func (k *Kernel) Open(flags uint32) (uint64, error) {
	body := binary.LittleEndian.AppendUint32(nil, flags)
	body = binary.LittleEndian.AppendUint32(body, 0)
	ans, errno, err := k.Call(OpOpen, body, 1)
	if err != nil {
		return 0, err
	}
	if errno != 0 {
		return 0, syscall.Errno(-errno)
	}
	if len(ans) != 16 {
		return 0, fmt.Errorf("cusetest: FUSE_OPEN answer of %d bytes", len(ans))
	}
	return binary.LittleEndian.Uint64(ans), nil
}

// Release sends FUSE_RELEASE for fh.
func (k *Kernel) Release(fh uint64) error {
	body := binary.LittleEndian.AppendUint64(nil, fh)
	body = append(body, make([]byte, 16)...)
	_, errno, err := k.Call(OpRelease, body, 1)
	if err == nil && errno != 0 {
		err = syscall.Errno(-errno)
	}
	return err
}

// IoctlStats counts the passes of one simulated ioctl.
type IoctlStats struct {
	Passes int
}

// Answer is one decoded answer to FUSE_IOCTL.
type Answer struct {
	Errno   syscall.Errno // non-zero: the answer carried only this error
	Result  int32
	Retry   bool
	In, Out []cuse.IOVec
	Data    []byte
	// Malformed is set when the answer's iovec array does not match its
	// counts (the kernel fails the ioctl with EIO).
	Malformed bool
}

// Ioctl plays fuse_do_ioctl for an unrestricted ioctl(fd, cmd, arg) by
// thread pid on handle fh against mem, over the channel (see [Play]).
func (k *Kernel) Ioctl(fh uint64, cmd uint32, arg uint64, mem Memory, pid uint32, maxPasses int) (int32, syscall.Errno, IoctlStats, error) {
	le := binary.LittleEndian
	return Play(mem, maxPasses, func(in []byte, outSize uint32) (Answer, error) {
		body := le.AppendUint64(nil, fh)
		body = le.AppendUint32(body, ioctlUnrestrict)
		body = le.AppendUint32(body, cmd)
		body = le.AppendUint64(body, arg)
		body = le.AppendUint32(body, uint32(len(in)))
		body = le.AppendUint32(body, outSize)
		body = append(body, in...)
		ans, errno, err := k.Call(OpIoctl, body, pid)
		if err != nil {
			return Answer{}, err
		}
		if errno != 0 {
			return Answer{Errno: syscall.Errno(-errno)}, nil
		}
		if len(ans) < ioctlOutSize {
			return Answer{}, fmt.Errorf("cusetest: FUSE_IOCTL answer of %d bytes", len(ans))
		}
		a := Answer{Result: int32(le.Uint32(ans[0:])), Retry: le.Uint32(ans[4:])&ioctlRetry != 0}
		rest := ans[ioctlOutSize:]
		if !a.Retry {
			a.Data = rest
			return a, nil
		}
		nin, nout := le.Uint32(ans[8:]), le.Uint32(ans[12:])
		if nin > ioctlMaxIOV || nout > ioctlMaxIOV || nin+nout > ioctlMaxIOV {
			a.In, a.Out = make([]cuse.IOVec, nin), make([]cuse.IOVec, nout)
			return a, nil
		}
		if uint64(len(rest)) != uint64(nin+nout)*ioctlIOVSize {
			a.Malformed = true
			return a, nil
		}
		var all []cuse.IOVec
		for i := 0; i < int(nin+nout); i++ {
			all = append(all, cuse.IOVec{Base: le.Uint64(rest[16*i:]), Len: le.Uint64(rest[16*i+8:])})
		}
		a.In, a.Out = all[:nin], all[nin:]
		return a, nil
	})
}

// Direct plays fuse_do_ioctl against handler h without a channel (see
// [Play]): each pass calls h.Ioctl directly.
func Direct(ctx context.Context, h cuse.IoctlHandler, cmd uint32, arg uint64, mem Memory, maxPasses int) (int32, syscall.Errno, IoctlStats, error) {
	return Play(mem, maxPasses, func(in []byte, outSize uint32) (Answer, error) {
		r := h.Ioctl(ctx, cuse.Header{PID: 1}, &cuse.IoctlIn{Flags: ioctlUnrestrict, Cmd: cmd, Arg: arg, InSize: uint32(len(in)), OutSize: outSize, In: in})
		if r.Errno != 0 {
			return Answer{Errno: r.Errno}, nil
		}
		return Answer{Result: r.Result, Retry: r.Retry, In: r.In, Out: r.Out, Data: r.Data}, nil
	})
}

// Play is fs/fuse/ioctl.c's fuse_do_ioctl for an unrestricted ioctl: it
// asks step without data; on each retry it checks the iovecs as the kernel
// does (count ≤ 256, each and all within 32 pages: else ENOMEM), copies
// the in iovecs from mem (a fault is EFAULT, without asking again) and
// asks again with the total out length; the final answer's data, at most
// that total (else EIO), is copied to the out iovecs in order (a fault is
// EFAULT after the earlier iovecs were written). It returns the ioctl's
// result or errno. maxPasses bounds the retries (the kernel has no bound;
// a test wants one).
func Play(mem Memory, maxPasses int, step func(in []byte, outSize uint32) (Answer, error)) (int32, syscall.Errno, IoctlStats, error) {
	var in, out []cuse.IOVec
	var st IoctlStats
	for {
		st.Passes++
		if st.Passes > maxPasses {
			return 0, 0, st, fmt.Errorf("cusetest: more than %d passes", maxPasses)
		}
		var data []byte
		for _, v := range in {
			p := make([]byte, v.Len)
			if v.Len > 0 {
				if err := mem.ReadAt(p, v.Base); err != nil {
					return 0, syscall.EFAULT, st, nil
				}
			}
			data = append(data, p...)
		}
		outSize := uint64(0)
		for _, v := range out {
			outSize += v.Len
		}
		a, err := step(data, uint32(outSize))
		if err != nil {
			return 0, 0, st, err
		}
		if a.Errno != 0 {
			return 0, a.Errno, st, nil
		}
		if a.Retry {
			if a.Malformed {
				return 0, syscall.EIO, st, nil
			}
			if len(a.In) > ioctlMaxIOV || len(a.Out) > ioctlMaxIOV || len(a.In)+len(a.Out) > ioctlMaxIOV {
				return 0, syscall.ENOMEM, st, nil
			}
			in, out = a.In, a.Out
			if !verify(in) || !verify(out) {
				return 0, syscall.ENOMEM, st, nil
			}
			continue
		}
		rest := a.Data
		if uint64(len(rest)) > outSize {
			return 0, syscall.EIO, st, nil
		}
		for _, v := range out {
			if len(rest) == 0 {
				break
			}
			n := min(uint64(len(rest)), v.Len)
			if err := mem.WriteAt(rest[:n], v.Base); err != nil {
				return 0, syscall.EFAULT, st, nil
			}
			rest = rest[n:]
		}
		return a.Result, 0, st, nil
	}
}

// verify is fuse_verify_ioctl_iov: the lengths must fit in the request's
// pages, together.
func verify(v []cuse.IOVec) bool {
	max := uint64(maxPages * pageSize)
	for _, x := range v {
		if x.Len > max {
			return false
		}
		max -= x.Len
	}
	return true
}
