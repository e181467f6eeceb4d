// Command enclaveapp is the application the end-to-end tests put inside
// enclaves. Its first argument selects what it does; it reports on its
// console (stdout) with lines the tests look for.
package main

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cloister/cloister/enclave"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Println("usage: enclaveapp echo|attacks|oom|forkbomb|attest|egress HOST:PORT|@PORT...|crash N|sleep|panic")
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

// attacks tries to leave the sandbox in every way the tests care about.
func attacks() {
	_, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	report("af_inet", err)
	_, err = syscall.Socket(syscall.AF_INET6, syscall.SOCK_DGRAM, 0)
	report("af_inet6", err)
	_, err = syscall.Socket(40 /* AF_VSOCK */, syscall.SOCK_STREAM, 0)
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
