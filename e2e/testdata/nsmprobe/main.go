// Command nsmprobe runs named edge cases of the NSM_IOCTL_RAW ioctl against
// /dev/nsm and prints what the device did, as one JSON object on stdout.
//
// It is deliberately independent of Cloister (standard library and
// golang.org/x/sys/unix only) so that the same binary can run against the
// real Linux nsm driver (QEMU's nitro-enclave machine, or a Nitro enclave) and
// against every emulation of /dev/nsm, and the outputs can be compared.
//
// Every case passes raw addresses to unix.Syscall, so a bad address is
// reported as an errno and never crashes the probe: "unmapped" memory is a
// PROT_NONE page of a mapping the probe owns. The buffers live in anonymous
// shared mappings, never in the Go heap, so a forked child writes where the
// parent can read.
//
// Usage:
//
//	nsmprobe [-device /dev/nsm]
//
// The flag -child is internal: the probe re-executes itself to test a
// descriptor inherited across exec or received over a Unix socket.
package main

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The Linux NSM ABI (include/uapi/linux/nsm.h).
const (
	nsmMagic           = 0x0A
	nsmRawSize         = 32 // struct nsm_raw: two struct nsm_iovec {__u64 addr; __u64 len;}
	requestMaxSize     = 0x1000
	responseMaxSize    = 0x3000
	concurrentWorkers  = 8
	concurrentPerGorou = 25
)

// ioc builds an ioctl command number as the kernel's _IOC macro does.
func ioc(dir, typ, nr, size uintptr) uintptr {
	return dir<<30 | size<<16 | typ<<8 | nr
}

const (
	iocWrite = 1
	iocRead  = 2
)

var ioctlRaw = ioc(iocRead|iocWrite, nsmMagic, 0, nsmRawSize) // 0xc0200a00

// Report is the probe's output.
type Report struct {
	Device      string       `json:"device"`
	IoctlRaw    string       `json:"ioctl_raw"`
	DescribeNSM *DescribeNSM `json:"describe_nsm,omitempty"`
	PCRs        []PCR        `json:"pcrs"`
	Cases       []Case       `json:"cases"`
	Error       string       `json:"error,omitempty"`
}

// DescribeNSM is what the module says about itself.
type DescribeNSM struct {
	Digest     string   `json:"digest"`
	MaxPCRs    uint64   `json:"max_pcrs"`
	ModuleID   string   `json:"module_id"`
	Version    string   `json:"version"`
	LockedPCRs []uint64 `json:"locked_pcrs"`
}

// PCR is one DescribePCR answer.
type PCR struct {
	Index uint64 `json:"index"`
	Lock  bool   `json:"lock"`
	Data  string `json:"data"`
}

// Case is the outcome of one named edge case.
type Case struct {
	Name      string `json:"name"`
	Errno     int    `json:"errno"`
	ErrnoName string `json:"errno_name,omitempty"`
	// ResponseLen is response.len as the caller reads it back after the call.
	ResponseLen *uint64 `json:"response_len,omitempty"`
	// Response names the answer: its operation ("DescribeNSM"), "Error:<code>"
	// for an NSM error, "undecodable" when the bytes are not one CBOR map.
	Response string `json:"response,omitempty"`
	// ResponseWritten says whether any byte of the response buffer changed.
	ResponseWritten *bool `json:"response_written,omitempty"`
	// WrittenBeyondLen says whether a byte after response.len changed.
	WrittenBeyondLen *bool `json:"written_beyond_len,omitempty"`
	// Calls, Failures and Consistent describe the repeated cases: how many
	// ioctls, how many did not return 0, whether every answer was the same.
	Calls      int    `json:"calls,omitempty"`
	Failures   *int   `json:"failures,omitempty"`
	Consistent *bool  `json:"consistent,omitempty"`
	Note       string `json:"note,omitempty"`
}

// childResult is what a re-executed child prints.
type childResult struct {
	Errno       int    `json:"errno"`
	ResponseLen uint64 `json:"response_len"`
	Response    string `json:"response"`
	Error       string `json:"error,omitempty"`
}

func main() {
	device := flag.String("device", "/dev/nsm", "the NSM device")
	child := flag.String("child", "", "internal: exec|scm")
	flag.Parse()
	if *child != "" {
		os.Exit(runChild(*child))
	}
	r := run(*device)
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		fmt.Fprintln(os.Stderr, "nsmprobe:", err)
		os.Exit(1)
	}
	if r.Error != "" {
		os.Exit(1)
	}
}

// Requests, encoded by hand.
var (
	reqDescribeNSM = textHead("DescribeNSM")
)

func textHead(s string) []byte {
	return append(head(3, uint64(len(s))), s...)
}

func head(major byte, n uint64) []byte {
	m := major << 5
	switch {
	case n < 24:
		return []byte{m | byte(n)}
	case n <= 0xff:
		return []byte{m | 24, byte(n)}
	case n <= 0xffff:
		return []byte{m | 25, byte(n >> 8), byte(n)}
	case n <= 0xffffffff:
		return binary.BigEndian.AppendUint32([]byte{m | 26}, uint32(n))
	default:
		return binary.BigEndian.AppendUint64([]byte{m | 27}, n)
	}
}

// describePCR is {"DescribePCR": {"index": i}}.
func describePCR(i uint64) []byte {
	b := head(5, 1)
	b = append(b, textHead("DescribePCR")...)
	b = append(b, head(5, 1)...)
	b = append(b, textHead("index")...)
	return append(b, head(0, i)...)
}

// region is an anonymous shared mapping: rw pages followed by one PROT_NONE
// guard page.
type region struct {
	mem   []byte
	rw    int // bytes before the guard page
	guard uintptr
}

var pageSize = os.Getpagesize()

func newRegion(pages int) (*region, error) {
	mem, err := unix.Mmap(-1, 0, (pages+1)*pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("nsmprobe: mmap: %w", err)
	}
	rw := pages * pageSize
	if err := unix.Mprotect(mem[rw:], unix.PROT_NONE); err != nil {
		_ = unix.Munmap(mem)
		return nil, fmt.Errorf("nsmprobe: mprotect: %w", err)
	}
	return &region{mem: mem, rw: rw, guard: addr(mem[rw:])}, nil
}

func (r *region) free() { _ = unix.Munmap(r.mem) }

func addr(b []byte) uintptr { return uintptr(unsafe.Pointer(&b[0])) }

// call is one prepared ioctl: the struct nsm_raw, the request and the
// response buffer (filled with 0xAA so writes are visible), in one region.
type call struct {
	r    *region
	raw  []byte // 32 bytes
	req  []byte
	resp []byte
	// edge is a separate one-page region for buffers that must end exactly
	// at a guard page; watch is the buffer whose writes result reports
	// (resp unless an edit points the response elsewhere).
	edge  *region
	watch []byte
}

const sentinel = 0xAA

// newCall lays out raw at offset 0, the request on page 1 and the response
// from page 2 in a fresh region.
func newCall(req []byte, respSize int) (*call, error) {
	pages := 2 + (respSize+pageSize-1)/pageSize
	if pages < 3 {
		pages = 3
	}
	r, err := newRegion(pages)
	if err != nil {
		return nil, err
	}
	edge, err := newRegion(1)
	if err != nil {
		r.free()
		return nil, err
	}
	for i := range edge.mem[:edge.rw] {
		edge.mem[i] = sentinel
	}
	c := &call{r: r, edge: edge, raw: r.mem[:nsmRawSize]}
	c.req = r.mem[pageSize : pageSize+len(req)]
	copy(c.req, req)
	c.resp = r.mem[2*pageSize : 2*pageSize+respSize]
	for i := range c.resp {
		c.resp[i] = sentinel
	}
	c.watch = c.resp
	reqAddr := uint64(0)
	if len(req) > 0 {
		reqAddr = uint64(addr(c.req))
	} else {
		reqAddr = uint64(addr(r.mem[pageSize:]))
	}
	respAddr := uint64(0)
	if respSize > 0 {
		respAddr = uint64(addr(c.resp))
	} else {
		respAddr = uint64(addr(r.mem[2*pageSize:]))
	}
	c.set(reqAddr, uint64(len(req)), respAddr, uint64(respSize))
	return c, nil
}

func (c *call) free() {
	c.r.free()
	c.edge.free()
}

// tail returns the last n bytes before the edge region's guard page.
func (c *call) tail(n int) []byte { return c.edge.mem[c.edge.rw-n : c.edge.rw] }

func (c *call) set(reqAddr, reqLen, respAddr, respLen uint64) {
	binary.LittleEndian.PutUint64(c.raw[0:], reqAddr)
	binary.LittleEndian.PutUint64(c.raw[8:], reqLen)
	binary.LittleEndian.PutUint64(c.raw[16:], respAddr)
	binary.LittleEndian.PutUint64(c.raw[24:], respLen)
}

func (c *call) respLen() uint64 { return binary.LittleEndian.Uint64(c.raw[24:]) }

func ioctl(fd int, cmd, arg uintptr) syscall.Errno {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), cmd, arg)
	return e
}

// result fills a Case from a finished call.
func (c *call) result(name string, e syscall.Errno) Case {
	cs := Case{Name: name}
	setErrno(&cs, e)
	n := c.respLen()
	cs.ResponseLen = &n
	written := false
	for _, b := range c.watch {
		if b != sentinel {
			written = true
			break
		}
	}
	cs.ResponseWritten = &written
	if n <= uint64(len(c.watch)) {
		beyond := false
		for _, b := range c.watch[n:] {
			if b != sentinel {
				beyond = true
				break
			}
		}
		cs.WrittenBeyondLen = &beyond
		if e == 0 {
			cs.Response = kind(c.watch[:n])
		}
	}
	return cs
}

func setErrno(cs *Case, e syscall.Errno) {
	cs.Errno = int(e)
	if e != 0 {
		cs.ErrnoName = unix.ErrnoName(e)
		if cs.ErrnoName == "" {
			cs.ErrnoName = e.Error()
		}
	}
}

// kind names a response: the key of its one-entry map, with the error code
// for {"Error": code}.
func kind(b []byte) string {
	v, rest, err := decode(b, 0)
	if err != nil || len(rest) != 0 {
		return "undecodable"
	}
	m, ok := v.(map[string]any)
	if !ok || len(m) != 1 {
		return "undecodable"
	}
	for k, val := range m {
		if k == "Error" {
			if s, ok := val.(string); ok {
				return "Error:" + s
			}
		}
		return k
	}
	return "undecodable"
}

func run(device string) *Report {
	rep := &Report{Device: device, IoctlRaw: fmt.Sprintf("%#x", ioctlRaw)}
	f, err := os.OpenFile(device, os.O_RDWR, 0)
	if err != nil {
		rep.Error = fmt.Sprintf("nsmprobe: open %s: %v", device, err)
		return rep
	}
	defer f.Close()
	fd := int(f.Fd())

	// A device that cannot answer still gets every case run: the errnos
	// are comparable even when the answers are not.
	var errs []error
	if err := describe(fd, rep); err != nil {
		errs = append(errs, err)
	}
	ref, err := roundTrip(fd, describePCR(0))
	if err != nil {
		errs = append(errs, err)
	}
	defer func() {
		if err := errors.Join(errs...); err != nil && rep.Error == "" {
			rep.Error = err.Error()
		}
	}()
	p := &prober{fd: fd, device: device, ref: ref}
	for _, tc := range p.cases() {
		cs, err := tc.run()
		if err != nil {
			rep.Error = fmt.Sprintf("nsmprobe: case %s: %v", tc.name, err)
			return rep
		}
		cs.Name = tc.name
		rep.Cases = append(rep.Cases, cs)
	}
	return rep
}

// roundTrip sends one request with a full-size response buffer.
func roundTrip(fd int, req []byte) ([]byte, error) {
	c, err := newCall(req, responseMaxSize)
	if err != nil {
		return nil, err
	}
	defer c.free()
	if e := ioctl(fd, ioctlRaw, addr(c.raw)); e != 0 {
		return nil, fmt.Errorf("nsmprobe: ioctl: %w", e)
	}
	n := c.respLen()
	if n > uint64(len(c.resp)) {
		return nil, fmt.Errorf("nsmprobe: response.len %d exceeds the buffer", n)
	}
	return bytes.Clone(c.resp[:n]), nil
}

func describe(fd int, rep *Report) error {
	b, err := roundTrip(fd, reqDescribeNSM)
	if err != nil {
		return err
	}
	body, err := answer(b, "DescribeNSM")
	if err != nil {
		return err
	}
	d := &DescribeNSM{}
	d.Digest, _ = body["digest"].(string)
	d.MaxPCRs, _ = body["max_pcrs"].(uint64)
	d.ModuleID, _ = body["module_id"].(string)
	ma, _ := body["version_major"].(uint64)
	mi, _ := body["version_minor"].(uint64)
	pa, _ := body["version_patch"].(uint64)
	d.Version = fmt.Sprintf("%d.%d.%d", ma, mi, pa)
	d.LockedPCRs = []uint64{}
	if l, ok := body["locked_pcrs"].([]any); ok {
		for _, x := range l {
			if i, ok := x.(uint64); ok {
				d.LockedPCRs = append(d.LockedPCRs, i)
			}
		}
	}
	rep.DescribeNSM = d
	for i := uint64(0); i < 3; i++ {
		b, err := roundTrip(fd, describePCR(i))
		if err != nil {
			return err
		}
		body, err := answer(b, "DescribePCR")
		if err != nil {
			return fmt.Errorf("%w (pcr %d)", err, i)
		}
		data, _ := body["data"].([]byte)
		lock, _ := body["lock"].(bool)
		rep.PCRs = append(rep.PCRs, PCR{Index: i, Lock: lock, Data: hex.EncodeToString(data)})
	}
	return nil
}

// answer returns the body of {op: {...}}.
func answer(b []byte, op string) (map[string]any, error) {
	v, rest, err := decode(b, 0)
	if err != nil {
		return nil, fmt.Errorf("nsmprobe: %s response: %w", op, err)
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("nsmprobe: %s response: %d trailing bytes", op, len(rest))
	}
	m, _ := v.(map[string]any)
	body, ok := m[op].(map[string]any)
	if !ok {
		return nil, fmt.Errorf("nsmprobe: %s response is %s", op, kind(b))
	}
	return body, nil
}

type probeCase struct {
	name string
	run  func() (Case, error)
}

type prober struct {
	fd     int
	device string
	ref    []byte // the DescribePCR 0 response
}

// simple runs one ioctl on a fresh call after letting edit adjust it, and
// returns the case. edit may return another arg address and another cmd.
func (p *prober) simple(req []byte, respSize int, edit func(c *call) (cmd, arg uintptr)) func() (Case, error) {
	return func() (Case, error) {
		c, err := newCall(req, respSize)
		if err != nil {
			return Case{}, err
		}
		defer c.free()
		cmd, arg := ioctlRaw, addr(c.raw)
		if edit != nil {
			cmd, arg = edit(c)
		}
		e := ioctl(p.fd, cmd, arg)
		return c.result("", e), nil
	}
}

func (p *prober) cases() []probeCase {
	full := responseMaxSize
	reqAt := func(c *call) uint64 { return binary.LittleEndian.Uint64(c.raw[0:]) }
	respAt := func(c *call) uint64 { return binary.LittleEndian.Uint64(c.raw[16:]) }
	const kernelAddr = 0xffff800000000000
	big4096 := textHead(string(bytes.Repeat([]byte{'A'}, requestMaxSize-3)))
	big4097 := textHead(string(bytes.Repeat([]byte{'A'}, requestMaxSize-2)))
	unknownMap := append(head(5, 1), textHead("NoSuchOperation")...)
	unknownMap = append(unknownMap, head(5, 0)...)
	return []probeCase{
		{"ok_describe_nsm", p.simple(reqDescribeNSM, full, nil)},
		{"ok_describe_pcr0", p.simple(describePCR(0), full, nil)},
		{"ok_response_len_huge", p.simple(reqDescribeNSM, full, func(c *call) (uintptr, uintptr) {
			c.set(reqAt(c), uint64(len(reqDescribeNSM)), respAt(c), 1<<40)
			return ioctlRaw, addr(c.raw)
		})},
		{"cmd_other_nr", p.simple(reqDescribeNSM, full, func(c *call) (uintptr, uintptr) {
			return ioc(iocRead|iocWrite, nsmMagic, 1, nsmRawSize), addr(c.raw)
		})},
		{"cmd_other_size", p.simple(reqDescribeNSM, full, func(c *call) (uintptr, uintptr) {
			return ioc(iocRead|iocWrite, nsmMagic, 0, 16), addr(c.raw)
		})},
		{"cmd_other_type", p.simple(reqDescribeNSM, full, func(c *call) (uintptr, uintptr) {
			return ioc(iocRead|iocWrite, 0x0B, 0, nsmRawSize), addr(c.raw)
		})},
		{"cmd_other_dir_read", p.simple(reqDescribeNSM, full, func(c *call) (uintptr, uintptr) {
			return ioc(iocRead, nsmMagic, 0, nsmRawSize), addr(c.raw)
		})},
		{"cmd_other_dir_none", p.simple(reqDescribeNSM, full, func(c *call) (uintptr, uintptr) {
			return ioc(0, nsmMagic, 0, nsmRawSize), addr(c.raw)
		})},
		{"cmd_tcgets", p.simple(reqDescribeNSM, full, func(c *call) (uintptr, uintptr) {
			return unix.TCGETS, addr(c.raw)
		})},
		{"cmd_fionread", p.simple(reqDescribeNSM, full, func(c *call) (uintptr, uintptr) {
			return 0x541B, addr(c.raw) // FIONREAD
		})},
		{"cmd_high_bits", p.simple(reqDescribeNSM, full, func(c *call) (uintptr, uintptr) {
			// The kernel takes cmd as unsigned int: bits above 31 are dropped.
			return ioctlRaw | 1<<32, addr(c.raw)
		})},
		{"arg_null", p.simple(reqDescribeNSM, full, func(c *call) (uintptr, uintptr) {
			return ioctlRaw, 0
		})},
		{"arg_unmapped", p.simple(reqDescribeNSM, full, func(c *call) (uintptr, uintptr) {
			return ioctlRaw, c.edge.guard
		})},
		{"arg_kernel_address", p.simple(reqDescribeNSM, full, func(c *call) (uintptr, uintptr) {
			return ioctlRaw, kernelAddr
		})},
		{"arg_straddles_unmapped", p.simple(reqDescribeNSM, full, func(c *call) (uintptr, uintptr) {
			// The first 16 bytes (request) readable, the rest in the guard page.
			tail := c.tail(16)
			copy(tail, c.raw[:16])
			return ioctlRaw, addr(tail)
		})},
		{"arg_readonly", p.simple(reqDescribeNSM, full, func(c *call) (uintptr, uintptr) {
			// The driver reads the struct, runs the request, writes the
			// response buffer, then fails to write response.len back.
			_ = unix.Mprotect(c.r.mem[:pageSize], unix.PROT_READ)
			return ioctlRaw, addr(c.raw)
		})},
		{"request_addr_null", p.simple(reqDescribeNSM, full, func(c *call) (uintptr, uintptr) {
			c.set(0, uint64(len(reqDescribeNSM)), respAt(c), uint64(full))
			return ioctlRaw, addr(c.raw)
		})},
		{"request_addr_unmapped", p.simple(reqDescribeNSM, full, func(c *call) (uintptr, uintptr) {
			c.set(uint64(c.edge.guard), uint64(len(reqDescribeNSM)), respAt(c), uint64(full))
			return ioctlRaw, addr(c.raw)
		})},
		{"request_straddles_unmapped", p.simple(reqDescribeNSM, full, func(c *call) (uintptr, uintptr) {
			tail := c.tail(4)
			copy(tail, reqDescribeNSM)
			c.set(uint64(addr(tail)), uint64(len(reqDescribeNSM)), respAt(c), uint64(full))
			return ioctlRaw, addr(c.raw)
		})},
		{"request_ends_at_unmapped", p.simple(reqDescribeNSM, full, func(c *call) (uintptr, uintptr) {
			// Exactly len bytes readable: the driver must not read past them.
			tail := c.tail(len(reqDescribeNSM))
			copy(tail, reqDescribeNSM)
			c.set(uint64(addr(tail)), uint64(len(reqDescribeNSM)), respAt(c), uint64(full))
			return ioctlRaw, addr(c.raw)
		})},
		{"request_addr_kernel", p.simple(reqDescribeNSM, full, func(c *call) (uintptr, uintptr) {
			c.set(kernelAddr, uint64(len(reqDescribeNSM)), respAt(c), uint64(full))
			return ioctlRaw, addr(c.raw)
		})},
		{"response_addr_null", p.simple(reqDescribeNSM, full, func(c *call) (uintptr, uintptr) {
			c.set(reqAt(c), uint64(len(reqDescribeNSM)), 0, uint64(full))
			return ioctlRaw, addr(c.raw)
		})},
		{"response_addr_unmapped", p.simple(reqDescribeNSM, full, func(c *call) (uintptr, uintptr) {
			c.set(reqAt(c), uint64(len(reqDescribeNSM)), uint64(c.edge.guard), uint64(full))
			return ioctlRaw, addr(c.raw)
		})},
		{"response_straddles_unmapped", p.simple(reqDescribeNSM, full, func(c *call) (uintptr, uintptr) {
			// 16 writable bytes before the guard page, response.len full.
			c.watch = c.tail(16)
			c.set(reqAt(c), uint64(len(reqDescribeNSM)), uint64(addr(c.watch)), uint64(full))
			return ioctlRaw, addr(c.raw)
		})},
		{"response_addr_readonly", p.simple(reqDescribeNSM, full, func(c *call) (uintptr, uintptr) {
			_ = unix.Mprotect(c.r.mem[pageSize:2*pageSize], unix.PROT_READ)
			c.set(reqAt(c), uint64(len(reqDescribeNSM)), reqAt(c), uint64(full))
			return ioctlRaw, addr(c.raw)
		})},
		{"request_len_0", p.simple(nil, full, nil)},
		{"request_len_0_addr_null", p.simple(nil, full, func(c *call) (uintptr, uintptr) {
			c.set(0, 0, respAt(c), uint64(full))
			return ioctlRaw, addr(c.raw)
		})},
		{"request_len_4096", p.simple(big4096, full, nil)},
		{"request_len_4097", p.simple(big4097, full, nil)},
		{"request_len_4097_addr_unmapped", p.simple(big4097, full, func(c *call) (uintptr, uintptr) {
			c.set(uint64(c.edge.guard), uint64(len(big4097)), respAt(c), uint64(full))
			return ioctlRaw, addr(c.raw)
		})},
		{"request_len_huge", p.simple(reqDescribeNSM, full, func(c *call) (uintptr, uintptr) {
			c.set(reqAt(c), 1<<63, respAt(c), uint64(full))
			return ioctlRaw, addr(c.raw)
		})},
		{"request_len_longer_than_cbor", p.simple(append(bytes.Clone(reqDescribeNSM), 0, 0, 0, 0), full, nil)},
		{"response_len_0", p.simple(reqDescribeNSM, full, func(c *call) (uintptr, uintptr) {
			c.set(reqAt(c), uint64(len(reqDescribeNSM)), respAt(c), 0)
			return ioctlRaw, addr(c.raw)
		})},
		{"response_len_0_addr_null", p.simple(reqDescribeNSM, full, func(c *call) (uintptr, uintptr) {
			c.set(reqAt(c), uint64(len(reqDescribeNSM)), 0, 0)
			return ioctlRaw, addr(c.raw)
		})},
		{"response_len_0_addr_unmapped", p.simple(reqDescribeNSM, full, func(c *call) (uintptr, uintptr) {
			c.set(reqAt(c), uint64(len(reqDescribeNSM)), uint64(c.edge.guard), 0)
			return ioctlRaw, addr(c.raw)
		})},
		{"response_len_10", p.simple(reqDescribeNSM, full, func(c *call) (uintptr, uintptr) {
			c.set(reqAt(c), uint64(len(reqDescribeNSM)), respAt(c), 10)
			return ioctlRaw, addr(c.raw)
		})},
		{"response_len_10_then_unmapped", p.simple(reqDescribeNSM, full, func(c *call) (uintptr, uintptr) {
			// Ten writable bytes end at the guard page: a driver that writes
			// only response.len bytes succeeds.
			c.watch = c.tail(10)
			c.set(reqAt(c), uint64(len(reqDescribeNSM)), uint64(addr(c.watch)), 10)
			return ioctlRaw, addr(c.raw)
		})},
		{"request_not_cbor", p.simple([]byte{0xff, 0xff, 0xff, 0xff}, full, nil)},
		{"request_text_not_cbor", p.simple([]byte("hello, nsm"), full, nil)},
		{"request_truncated_cbor", p.simple(reqDescribeNSM[:5], full, nil)},
		{"request_unknown_operation", p.simple(textHead("NoSuchOperation"), full, nil)},
		{"request_unknown_operation_map", p.simple(unknownMap, full, nil)},
		{"request_describe_pcr_out_of_range", p.simple(describePCR(4096), full, nil)},
		{"concurrent_one_fd", func() (Case, error) { return p.concurrent(false) }},
		{"concurrent_eight_fds", func() (Case, error) { return p.concurrent(true) }},
		{"dup_fd_after_close", p.dupAfterClose},
		{"open_rdonly", func() (Case, error) { return p.openMode(os.O_RDONLY) }},
		{"open_wronly", func() (Case, error) { return p.openMode(os.O_WRONLY) }},
		{"open_path_fd", func() (Case, error) { return p.openMode(unix.O_PATH) }},
		{"read_fd", p.read},
		{"write_fd", p.write},
		{"fork_child_inherited_fd", p.forkChild},
		{"exec_child_inherited_fd", p.execChild},
		{"scm_rights_same_process", p.scmSameProcess},
		{"scm_rights_child_process", p.scmChild},
	}
}

// concurrent runs DescribePCR 0 from concurrentWorkers goroutines on one fd
// or on one fd each, and checks every answer equals the reference.
func (p *prober) concurrent(ownFD bool) (Case, error) {
	type out struct {
		calls, failures int
		consistent      bool
		firstErr        syscall.Errno
		err             error
	}
	outs := make([]out, concurrentWorkers)
	var wg sync.WaitGroup
	for w := range concurrentWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o := &outs[w]
			o.consistent = true
			fd := p.fd
			if ownFD {
				f, err := os.OpenFile(p.device, os.O_RDWR, 0)
				if err != nil {
					o.err = err
					return
				}
				defer f.Close()
				fd = int(f.Fd())
			}
			c, err := newCall(describePCR(0), responseMaxSize)
			if err != nil {
				o.err = err
				return
			}
			defer c.free()
			for range concurrentPerGorou {
				c.set(binary.LittleEndian.Uint64(c.raw[0:]), binary.LittleEndian.Uint64(c.raw[8:]),
					binary.LittleEndian.Uint64(c.raw[16:]), responseMaxSize)
				e := ioctl(fd, ioctlRaw, addr(c.raw))
				o.calls++
				if e != 0 {
					o.failures++
					if o.firstErr == 0 {
						o.firstErr = e
					}
					continue
				}
				n := c.respLen()
				if n > responseMaxSize || !bytes.Equal(c.resp[:n], p.ref) {
					o.consistent = false
				}
			}
		}()
	}
	wg.Wait()
	cs := Case{Consistent: new(bool), Failures: new(int)}
	*cs.Consistent = true
	var first syscall.Errno
	for _, o := range outs {
		if o.err != nil {
			return Case{}, o.err
		}
		cs.Calls += o.calls
		*cs.Failures += o.failures
		*cs.Consistent = *cs.Consistent && o.consistent
		if first == 0 {
			first = o.firstErr
		}
	}
	setErrno(&cs, first)
	return cs, nil
}

// onFD runs DescribePCR 0 on fd and compares the answer with the reference.
func (p *prober) onFD(fd int) (Case, error) {
	c, err := newCall(describePCR(0), responseMaxSize)
	if err != nil {
		return Case{}, err
	}
	defer c.free()
	e := ioctl(fd, ioctlRaw, addr(c.raw))
	cs := c.result("", e)
	if e == 0 {
		ok := bytes.Equal(c.resp[:c.respLen()], p.ref)
		cs.Consistent = &ok
	}
	cs.ResponseWritten, cs.WrittenBeyondLen = nil, nil
	return cs, nil
}

func (p *prober) dupAfterClose() (Case, error) {
	f, err := os.OpenFile(p.device, os.O_RDWR, 0)
	if err != nil {
		return Case{}, err
	}
	d, err := unix.Dup(int(f.Fd()))
	f.Close()
	if err != nil {
		return Case{}, fmt.Errorf("dup: %w", err)
	}
	defer unix.Close(d)
	return p.onFD(d)
}

func (p *prober) openMode(flags int) (Case, error) {
	fd, err := unix.Open(p.device, flags|unix.O_CLOEXEC, 0)
	if err != nil {
		cs := Case{Note: "open failed"}
		var e syscall.Errno
		if errors.As(err, &e) {
			setErrno(&cs, e)
			return cs, nil
		}
		return Case{}, err
	}
	defer unix.Close(fd)
	return p.onFD(fd)
}

func (p *prober) read() (Case, error) {
	r, err := newRegion(1)
	if err != nil {
		return Case{}, err
	}
	defer r.free()
	_, _, e := unix.Syscall(unix.SYS_READ, uintptr(p.fd), addr(r.mem), 16)
	cs := Case{}
	setErrno(&cs, e)
	return cs, nil
}

func (p *prober) write() (Case, error) {
	r, err := newRegion(1)
	if err != nil {
		return Case{}, err
	}
	defer r.free()
	copy(r.mem, reqDescribeNSM)
	_, _, e := unix.Syscall(unix.SYS_WRITE, uintptr(p.fd), addr(r.mem), uintptr(len(reqDescribeNSM)))
	cs := Case{}
	setErrno(&cs, e)
	return cs, nil
}

// forkChild forks without exec (as os.fork in Python does) and issues the
// ioctl from the child on the inherited descriptor; the child's exit status
// is the errno and the response lands in the shared mapping.
func (p *prober) forkChild() (Case, error) {
	c, err := newCall(describePCR(0), responseMaxSize)
	if err != nil {
		return Case{}, err
	}
	defer c.free()
	pid, e := forkIoctl(p.fd, addr(c.raw))
	if e != 0 {
		return Case{}, fmt.Errorf("fork: %w", e)
	}
	var ws unix.WaitStatus
	for {
		_, err := unix.Wait4(pid, &ws, 0, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return Case{}, fmt.Errorf("wait4: %w", err)
		}
		break
	}
	if !ws.Exited() {
		return Case{}, fmt.Errorf("forked child did not exit: %v", ws)
	}
	cs := c.result("", syscall.Errno(ws.ExitStatus()))
	if cs.Errno == 0 {
		ok := bytes.Equal(c.resp[:c.respLen()], p.ref)
		cs.Consistent = &ok
	}
	cs.ResponseWritten, cs.WrittenBeyondLen = nil, nil
	return cs, nil
}

// forkIoctl forks; the child only makes raw system calls (no allocation, no
// scheduler) and exits with the ioctl's errno.
//
//go:norace
func forkIoctl(fd int, arg uintptr) (int, syscall.Errno) {
	syscall.ForkLock.Lock()
	pid, _, e := syscall.RawSyscall6(syscall.SYS_CLONE, uintptr(syscall.SIGCHLD), 0, 0, 0, 0, 0)
	if e != 0 {
		syscall.ForkLock.Unlock()
		return 0, e
	}
	if pid == 0 {
		_, _, e := syscall.RawSyscall(syscall.SYS_IOCTL, uintptr(fd), ioctlRaw, arg)
		for {
			syscall.RawSyscall(syscall.SYS_EXIT_GROUP, uintptr(e), 0, 0)
		}
	}
	syscall.ForkLock.Unlock()
	return int(pid), 0
}

func self() string {
	if p, err := os.Executable(); err == nil {
		return p
	}
	return os.Args[0]
}

// child runs the probe again with -child mode, extra descriptors from fd 3,
// and decodes its one JSON line.
func (p *prober) child(mode string, extra []*os.File, during func() error) (Case, error) {
	cmd := exec.Command(self(), "-child", mode)
	cmd.ExtraFiles = extra
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		return Case{}, fmt.Errorf("start child: %w", err)
	}
	var derr error
	if during != nil {
		derr = during()
	}
	werr := cmd.Wait()
	if derr != nil {
		return Case{}, derr
	}
	var r childResult
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		return Case{}, fmt.Errorf("child %s: %v (wait: %v, stderr: %q)", mode, err, werr, errb.String())
	}
	if r.Error != "" {
		return Case{}, fmt.Errorf("child %s: %s", mode, r.Error)
	}
	cs := Case{Response: r.Response}
	setErrno(&cs, syscall.Errno(r.Errno))
	n := r.ResponseLen
	cs.ResponseLen = &n
	if r.Errno == 0 {
		ok := r.Response == hex.EncodeToString(p.ref)
		cs.Consistent = &ok
		cs.Response = kind(p.ref)
	}
	return cs, nil
}

func (p *prober) execChild() (Case, error) {
	f, err := os.OpenFile(p.device, os.O_RDWR, 0)
	if err != nil {
		return Case{}, err
	}
	defer f.Close()
	return p.child("exec", []*os.File{f}, nil)
}

// scmPair returns a connected Unix stream socket pair as files.
func scmPair() (*os.File, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "scm0"), os.NewFile(uintptr(fds[1]), "scm1"), nil
}

func sendFD(sock *os.File, fd int) error {
	return unix.Sendmsg(int(sock.Fd()), []byte{0}, unix.UnixRights(fd), nil, 0)
}

func recvFD(sock int) (int, error) {
	buf := make([]byte, 1)
	oob := make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := unix.Recvmsg(sock, buf, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		return -1, fmt.Errorf("recvmsg: %w", err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return -1, fmt.Errorf("recvmsg: no control message (%v)", err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		return -1, fmt.Errorf("recvmsg: no descriptor (%v)", err)
	}
	return fds[0], nil
}

func (p *prober) scmSameProcess() (Case, error) {
	a, b, err := scmPair()
	if err != nil {
		return Case{}, err
	}
	defer a.Close()
	defer b.Close()
	f, err := os.OpenFile(p.device, os.O_RDWR, 0)
	if err != nil {
		return Case{}, err
	}
	err = sendFD(a, int(f.Fd()))
	f.Close()
	if err != nil {
		return Case{}, fmt.Errorf("sendmsg: %w", err)
	}
	fd, err := recvFD(int(b.Fd()))
	if err != nil {
		return Case{}, err
	}
	defer unix.Close(fd)
	return p.onFD(fd)
}

// scmChild passes a descriptor the child never had to a running child.
func (p *prober) scmChild() (Case, error) {
	a, b, err := scmPair()
	if err != nil {
		return Case{}, err
	}
	defer a.Close()
	cs, err := p.child("scm", []*os.File{b}, func() error {
		b.Close()
		f, err := os.OpenFile(p.device, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := sendFD(a, int(f.Fd())); err != nil {
			return fmt.Errorf("sendmsg: %w", err)
		}
		return nil
	})
	return cs, err
}

// runChild is the re-executed probe: fd 3 is the device (exec) or a Unix
// socket that will carry it (scm).
func runChild(mode string) int {
	r := childResult{}
	defer func() { _ = json.NewEncoder(os.Stdout).Encode(r) }()
	fd := 3
	switch mode {
	case "exec":
	case "scm":
		got, err := recvFD(3)
		if err != nil {
			r.Error = err.Error()
			return 1
		}
		fd = got
	default:
		r.Error = "unknown child mode " + mode
		return 2
	}
	c, err := newCall(describePCR(0), responseMaxSize)
	if err != nil {
		r.Error = err.Error()
		return 1
	}
	e := ioctl(fd, ioctlRaw, addr(c.raw))
	r.Errno = int(e)
	r.ResponseLen = c.respLen()
	if e == 0 && r.ResponseLen <= responseMaxSize {
		r.Response = hex.EncodeToString(c.resp[:r.ResponseLen])
	}
	return 0
}

// decode reads one CBOR item (definite lengths; the types NSM answers use).
func decode(b []byte, depth int) (any, []byte, error) {
	if depth > 16 {
		return nil, nil, errors.New("cbor: nesting too deep")
	}
	if len(b) == 0 {
		return nil, nil, errors.New("cbor: truncated")
	}
	major, info := b[0]>>5, b[0]&0x1f
	b = b[1:]
	var n uint64
	switch {
	case info < 24:
		n = uint64(info)
	case info <= 27:
		w := 1 << (info - 24)
		if len(b) < w {
			return nil, nil, errors.New("cbor: truncated head")
		}
		for _, x := range b[:w] {
			n = n<<8 | uint64(x)
		}
		b = b[w:]
	default:
		return nil, nil, errors.New("cbor: indefinite or reserved length")
	}
	switch major {
	case 0:
		return n, b, nil
	case 1:
		return -1 - int64(n), b, nil
	case 2, 3:
		if n > uint64(len(b)) {
			return nil, nil, errors.New("cbor: truncated string")
		}
		if major == 2 {
			return bytes.Clone(b[:n]), b[n:], nil
		}
		return string(b[:n]), b[n:], nil
	case 4:
		if n > uint64(len(b)) {
			return nil, nil, errors.New("cbor: array longer than input")
		}
		a := make([]any, 0, n)
		for range n {
			v, rest, err := decode(b, depth+1)
			if err != nil {
				return nil, nil, err
			}
			a, b = append(a, v), rest
		}
		return a, b, nil
	case 5:
		if n > uint64(len(b)) {
			return nil, nil, errors.New("cbor: map longer than input")
		}
		m := make(map[string]any, n)
		for range n {
			k, rest, err := decode(b, depth+1)
			if err != nil {
				return nil, nil, err
			}
			ks, ok := k.(string)
			if !ok {
				return nil, nil, errors.New("cbor: map key is not text")
			}
			v, rest, err := decode(rest, depth+1)
			if err != nil {
				return nil, nil, err
			}
			m[ks], b = v, rest
		}
		return m, b, nil
	case 7:
		switch info {
		case 20:
			return false, b, nil
		case 21:
			return true, b, nil
		case 22, 23:
			return nil, b, nil
		}
		return nil, nil, fmt.Errorf("cbor: simple value %d", info)
	}
	return nil, nil, fmt.Errorf("cbor: major type %d", major)
}
