// Command enclaveapp is the application the end-to-end tests put inside
// enclaves. Its first argument selects what it does; it reports on its
// console (stdout) with lines the tests look for.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cloister/cloister/enclave"
	"github.com/cloister/cloister/internal/nsm"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Println("usage: enclaveapp echo|attacks|oom|forkbomb|attest|egress HOST:PORT|@PORT...|crash N|sleep|panic|" +
			"consoleflood MIB|guestfill MIB|vsocklink PORT TARGET|nsmconns N|nsmflood LOOPS N|nsmbench")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "echo":
		echo()
	case "attacks":
		attacks()
	case "oom":
		oom()
	case "forkbomb":
		forkbomb()
	case "attest":
		attest()
	case "egress":
		egress(os.Args[2:])
	case "crash":
		n, _ := strconv.Atoi(os.Args[2])
		fmt.Println("crashing with status", n)
		os.Exit(n)
	case "sleep":
		select {}
	case "consoleflood":
		consoleFlood(atoi(os.Args[2]))
	case "guestfill":
		guestFill(atoi(os.Args[2]))
	case "vsocklink":
		vsockLink(os.Args[2], os.Args[3])
	case "nsmconns":
		nsmConns(atoi(os.Args[2]))
	case "nsmflood":
		nsmFlood(atoi(os.Args[2]), atoi(os.Args[3]))
	case "nsmbench":
		nsmBench()
	case "panic":
		// In a VM world the application runs as root in the guest: crash the
		// kernel through sysrq, as a kernel bug would.
		echoThenPanic()
	default:
		fmt.Println("unknown mode", os.Args[1])
		os.Exit(2)
	}
}

// echoThenPanic reports readiness, then crashes the guest kernel.
func echoThenPanic() {
	fmt.Println("PANICKING THE KERNEL")
	time.Sleep(200 * time.Millisecond)
	if err := os.WriteFile("/proc/sysrq-trigger", []byte("c"), 0); err != nil {
		fmt.Println("sysrq:", err)
		os.Exit(1)
	}
	select {}
}

// echo serves an echo service on vsock port 5000.
func echo() {
	l, err := enclave.Listen(5000)
	if err != nil {
		fmt.Println("listen:", err)
		os.Exit(1)
	}
	fmt.Println("ECHO READY", l.Addr())
	for {
		c, err := l.Accept()
		if err != nil {
			fmt.Println("accept:", err)
			os.Exit(1)
		}
		go func() {
			defer c.Close()
			_, _ = io.Copy(c, c)
		}()
	}
}

func report(name string, err error) {
	if err != nil {
		fmt.Printf("ATTACK %s: blocked: %v\n", name, err)
	} else {
		fmt.Printf("ATTACK %s: SUCCEEDED\n", name)
	}
}

// emulatedVsock returns an error saying so when fd is an AF_UNIX socket
// of the sandbox's network namespace (listed in /proc/net/unix), nil when
// it is anything else (a real AF_VSOCK socket).
func emulatedVsock(fd int) error {
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return err
	}
	b, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 7 && f[6] == strconv.FormatUint(st.Ino, 10) {
			return errors.New("emulated: an AF_UNIX socket of the sandbox, not a real vsock socket")
		}
	}
	return nil
}

// attacks tries to leave the sandbox in every way the tests care about.
func attacks() {
	_, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	report("af_inet", err)
	_, err = syscall.Socket(syscall.AF_INET6, syscall.SOCK_DGRAM, 0)
	report("af_inet6", err)
	fd, err := syscall.Socket(40 /* AF_VSOCK */, syscall.SOCK_STREAM, 0)
	if err == nil {
		// The sandbox emulates AF_VSOCK for programs that do not use the
		// SDK: the socket is a Unix socket of the sandbox underneath. The
		// attack is getting a real one.
		err = emulatedVsock(fd)
		syscall.Close(fd)
	}
	report("af_vsock", err)
	_, err = os.ReadFile("/etc/shadow")
	report("read_host_shadow", err)
	_, err = os.Stat("/var/lib/cloister")
	report("see_host_state", err)
	err = syscall.Mount("tmpfs", "/tmp", "tmpfs", 0, "")
	report("mount", err)
	err = syscall.PtraceAttach(1)
	report("ptrace", err)
	err = syscall.Chroot("/tmp")
	report("chroot", err)
	_, err = net.Dial("tcp", "127.0.0.1:22")
	report("tcp_dial", err)
	fmt.Println("ATTACKS DONE")
}

// oom allocates far beyond the enclave's memory.
func oom() {
	fmt.Println("OOM START")
	var keep [][]byte
	for i := 0; ; i++ {
		b := make([]byte, 16<<20)
		for j := range b {
			b[j] = byte(j)
		}
		keep = append(keep, b)
		if i%8 == 0 {
			fmt.Printf("allocated %d MiB\n", 16*(i+1))
		}
	}
}

// forkbomb starts processes until the pid limit stops it.
func forkbomb() {
	var started int
	var last error
	for i := 0; i < 100000; i++ {
		cmd := exec.Command("/proc/self/exe", "sleep")
		if err := cmd.Start(); err != nil {
			last = err
			break
		}
		started++
	}
	if last != nil {
		fmt.Printf("FORKBOMB stopped after %d processes: %v\n", started, last)
	} else {
		fmt.Printf("FORKBOMB SUCCEEDED with %d processes\n", started)
	}
	os.Exit(0)
}

// attest fetches an attestation document and serves it on port 5001.
func attest() {
	ctx := context.Background()
	s, err := enclave.OpenSession(ctx, nil)
	if err != nil {
		fmt.Println("session:", err)
		os.Exit(1)
	}
	doc, err := s.Attest(ctx, enclave.AttestOptions{Nonce: []byte("e2e-nonce"), UserData: []byte("e2e-user-data")})
	if err != nil {
		fmt.Println("attest:", err)
		os.Exit(1)
	}
	pcr0, _ := s.DescribePCR(ctx, 0)
	fmt.Println("PCR0", hex.EncodeToString(pcr0.Value))
	// Further arguments are a marker that tells which image booted.
	fmt.Println("ARGS", os.Args[2:])
	l, err := enclave.Listen(5001)
	if err != nil {
		fmt.Println("listen:", err)
		os.Exit(1)
	}
	fmt.Println("ATTEST READY")
	for {
		c, err := l.Accept()
		if err != nil {
			os.Exit(1)
		}
		_, _ = c.Write(doc)
		c.Close()
	}
}

// egress fetches http://HOST:PORT/ through the parent's CONNECT proxy on
// port 8000, for each target given, and reports the outcome. A target
// "@PORT" fetches / through the fixed proxy on parent port PORT instead
// (vsock-proxy style: the connection goes to the proxy's one destination).
func egress(targets []string) {
	for _, target := range targets {
		body, err := fetchVia(target)
		if err != nil {
			fmt.Printf("EGRESS %s: refused: %v\n", target, err)
		} else {
			fmt.Printf("EGRESS %s: ok: %s\n", target, body)
		}
	}
	fmt.Println("EGRESS DONE")
}

func fetchVia(target string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	port, fixed := uint32(8000), false
	if p, ok := strings.CutPrefix(target, "@"); ok {
		n, err := strconv.ParseUint(p, 10, 32)
		if err != nil {
			return "", err
		}
		port, fixed = uint32(n), true
	}
	c, err := enclave.DialParent(ctx, port)
	if err != nil {
		return "", err
	}
	defer c.Close()
	br := bufio.NewReader(c)
	if !fixed {
		fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return "", err
		}
		if resp.StatusCode != http.StatusOK {
			return "", errors.New(resp.Status)
		}
	}
	host := target
	if fixed {
		host = "fixed-proxy" // the proxy alone knows its destination
	}
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", host)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func atoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		fmt.Println("bad number", s)
		os.Exit(2)
	}
	return n
}

// consoleFlood writes mib MiB of numbered lines to the console as fast as
// it can, then a last line, and exits.
func consoleFlood(mib int) {
	w := bufio.NewWriterSize(os.Stdout, 64<<10)
	line := bytes.Repeat([]byte("x"), 100)
	start := time.Now()
	var n int64
	for i := 0; n < int64(mib)<<20; i++ {
		k, _ := fmt.Fprintf(w, "CONSOLEFLOOD %09d %s\n", i, line)
		n += int64(k)
	}
	fmt.Fprintf(w, "CONSOLEFLOOD DONE %d bytes in %s\n", n, time.Since(start))
	_ = w.Flush()
}

// guestFill writes up to mib MiB into a file of the guest vsock directory
// (the enclave's listener directory) and reports how much it could write.
func guestFill(mib int) {
	p := filepath.Join(os.Getenv("CLOISTER_VSOCK_DIR"), "guest", "fill")
	f, err := os.Create(p)
	if err != nil {
		fmt.Printf("GUESTFILL wrote 0 bytes: %v\n", err)
		return
	}
	buf := bytes.Repeat([]byte("g"), 1<<20)
	var n int64
	for i := 0; i < mib; i++ {
		k, err := f.Write(buf)
		n += int64(k)
		if err != nil {
			break
		}
	}
	err = f.Close()
	fmt.Printf("GUESTFILL wrote %d bytes: %v\n", n, err)
	// A listener must still be possible next to the filled file.
	l, err := enclave.Listen(5000)
	if err != nil {
		fmt.Println("GUESTFILL listen:", err)
		return
	}
	fmt.Println("GUESTFILL LISTENING")
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		_, _ = io.WriteString(c, "still here")
		c.Close()
	}
}

// vsockLink points the enclave's listener name for port at target, a path
// the monitor would resolve on the host, then waits.
func vsockLink(port, target string) {
	p := filepath.Join(os.Getenv("CLOISTER_VSOCK_DIR"), "guest", "vsock_"+port)
	if err := os.Symlink(target, p); err != nil {
		fmt.Println("VSOCKLINK failed:", err)
		os.Exit(1)
	}
	fmt.Println("VSOCKLINK READY", p, "->", target)
	sleepForever()
}

// nsmConns opens n connections to the security module and keeps them all
// open, sending one DescribeNSM on each; it reports how many were served.
func nsmConns(n int) {
	req, _ := nsm.EncodeRequest(nsm.DescribeNSMRequest{})
	var conns []net.Conn
	served, refused := 0, 0
	var last error
	for i := 0; i < n; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := enclave.DialParent(ctx, enclave.NSMPort)
		cancel()
		if err != nil {
			refused++
			last = err
			continue
		}
		conns = append(conns, c)
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if err := nsm.WriteFrame(c, req); err != nil {
			refused++
			last = err
			continue
		}
		if _, err := nsm.ReadFrame(c, nsm.MaxResponseSize); err != nil {
			refused++
			last = err
			continue
		}
		served++
	}
	fmt.Printf("NSMCONNS served=%d refused=%d last=%v\n", served, refused, last)
	sleepForever()
}

// nsmFlood runs loops concurrent attestation loops of n documents each and
// reports how many were issued.
func nsmFlood(loops, n int) {
	var served atomic.Int64
	var wg sync.WaitGroup
	fmt.Println("NSMFLOOD STARTED")
	start := time.Now()
	for i := 0; i < loops; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			s, err := enclave.OpenSession(ctx, nil)
			if err != nil {
				fmt.Println("NSMFLOOD session:", err)
				return
			}
			defer s.Close()
			for j := 0; j < n; j++ {
				if _, err := s.Attest(ctx, enclave.AttestOptions{Nonce: []byte("flood")}); err != nil {
					fmt.Println("NSMFLOOD attest:", err)
					return
				}
				served.Add(1)
			}
		}()
	}
	wg.Wait()
	fmt.Printf("NSMFLOOD DONE served=%d in %s\n", served.Load(), time.Since(start))
	sleepForever()
}

// nsmBench serves security-module timings on vsock port 5006: each
// connection sends "<device|stream> <attest|describe> <n>\n" and gets back
// "<nanoseconds>\n" for n attestations (a 32-byte nonce, 64 bytes of user
// data) or n DescribePCR 0 through /dev/nsm or straight over the stream to
// the emulated module, on one session opened beforehand.
func nsmBench() {
	l, err := enclave.Listen(5006)
	if err != nil {
		fmt.Println("listen:", err)
		os.Exit(1)
	}
	fmt.Println("NSMBENCH READY")
	for {
		c, err := l.Accept()
		if err != nil {
			os.Exit(1)
		}
		var how, what string
		var n int
		if _, err := fmt.Fscanf(c, "%s %s %d\n", &how, &what, &n); err != nil {
			fmt.Fprintf(c, "error %v\n", err)
			c.Close()
			continue
		}
		ns, err := benchNSM(how, what, n)
		if err != nil {
			fmt.Fprintf(c, "error %v\n", err)
		} else {
			fmt.Fprintf(c, "%d\n", ns)
		}
		c.Close()
	}
}

func benchNSM(how, what string, n int) (int64, error) {
	ctx := context.Background()
	var t enclave.NSMTransport
	switch how {
	case "device":
		d, err := nsm.OpenDevice(nsm.DevicePath)
		if err != nil {
			return 0, err
		}
		t = d
	case "stream":
		t = nsm.NewStream(func(ctx context.Context) (net.Conn, error) { return enclave.DialParent(ctx, enclave.NSMPort) })
	default:
		return 0, fmt.Errorf("unknown transport %q", how)
	}
	s, err := enclave.OpenSession(ctx, &enclave.SessionConfig{Transport: t})
	if err != nil {
		return 0, err
	}
	defer s.Close()
	opts := enclave.AttestOptions{Nonce: bytes.Repeat([]byte{1}, 32), UserData: bytes.Repeat([]byte{2}, 64)}
	if what == "einval" { // one CUSE round trip: the driver refuses the command at once
		f, err := os.Open(nsm.DevicePath)
		if err != nil {
			return 0, err
		}
		defer f.Close()
		start := time.Now()
		for i := 0; i < n; i++ {
			if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), 0x1234, 0); e != syscall.EINVAL {
				return 0, e
			}
		}
		return time.Since(start).Nanoseconds(), nil
	}
	start := time.Now()
	for i := 0; i < n; i++ {
		var err error
		if what == "attest" {
			_, err = s.Attest(ctx, opts)
		} else {
			_, err = s.DescribePCR(ctx, 0)
		}
		if err != nil {
			return 0, err
		}
	}
	return time.Since(start).Nanoseconds(), nil
}

// sleepForever keeps the enclave running (a bare select{} would end the
// program with "all goroutines are asleep").
func sleepForever() {
	for {
		time.Sleep(time.Hour)
	}
}
