package initproc

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/cloister/cloister/internal/cuse/cusetest"
	"github.com/cloister/cloister/internal/nsm"
	"github.com/cloister/cloister/internal/nsm/nsmdev"
	"github.com/cloister/cloister/internal/nsm/nsmdev/nsmdevtest"
)

// consoleLog collects init's console lines.
type consoleLog struct {
	mu    sync.Mutex
	lines []string
}

func (c *consoleLog) log(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lines = append(c.lines, fmt.Sprintf(format, args...))
}

func (c *consoleLog) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.lines, "\n")
}

// TestNSMDeviceServed: in a VM without /dev/nsm, init creates it through
// CUSE (mode 0666) and an ioctl on it reaches the parent's module as the
// exact request bytes, over the framed stream, and its answer comes back
// into the caller's buffer.
func TestNSMDeviceServed(t *testing.T) {
	root := t.TempDir()
	dev := filepath.Join(root, "dev")
	if err := os.MkdirAll(dev, 0o755); err != nil {
		t.Fatal(err)
	}
	ch, k, err := cusetest.Pair()
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	var got [][]byte
	var mu sync.Mutex
	cfg := &Config{
		OpenCUSE: func() (io.ReadWriteCloser, error) { return ch, nil },
		DialNSM: func(ctx context.Context) (Conn, error) {
			a, b := net.Pipe()
			go func() { // the parent's emulated module
				defer b.Close()
				for {
					req, err := nsm.ReadFrame(b, nsm.MaxRequestSize)
					if err != nil {
						return
					}
					mu.Lock()
					got = append(got, req)
					mu.Unlock()
					if err := nsm.WriteFrame(b, append([]byte("answer to "), req...)); err != nil {
						return
					}
				}
			}()
			return a, nil
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The kernel: answers come back on the channel; it makes the node once
	// it has the CUSE_INIT answer.
	kerr := make(chan error, 1)
	go func() {
		if _, err := k.Handshake(38); err != nil {
			kerr <- err
			return
		}
		kerr <- os.WriteFile(filepath.Join(dev, "nsm"), nil, 0o600)
	}()
	var console consoleLog
	startNSMDevice(ctx, cfg, root, console.log)
	if err := <-kerr; err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(console.String(), "/dev/nsm served through CUSE") {
		t.Errorf("console:\n%s", console.String())
	}
	fi, err := os.Stat(filepath.Join(dev, "nsm"))
	if err != nil || fi.Mode().Perm() != 0o666 {
		t.Errorf("node: %v, %v; want mode 0666", fi, err)
	}

	mem := nsmdevtest.NewMemory()
	arg := mem.Map(0x1000, nsmdev.RawSize, nsmdevtest.RW)
	copy(mem.Map(0x2000, 11, nsmdevtest.Read), "DescribeNSM")
	out := mem.Map(0x3000, 100, nsmdevtest.RW)
	rb := nsmdev.Raw{RequestAddr: 0x2000, RequestLen: 11, ResponseAddr: 0x3000, ResponseLen: 100}.Bytes()
	copy(arg, rb[:])
	fh, err := k.Open(uint32(os.O_RDWR))
	if err != nil {
		t.Fatal(err)
	}
	if _, errno, _, err := k.Ioctl(fh, nsmdev.IoctlRaw, 0x1000, mem, 7, 5); err != nil || errno != 0 {
		t.Fatalf("ioctl: %v %v", errno, err)
	}
	if want := "answer to DescribeNSM"; !bytes.HasPrefix(out, []byte(want)) {
		t.Errorf("response buffer %q, want %q", out[:30], want)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 || string(got[0]) != "DescribeNSM" {
		t.Errorf("the module got %q", got)
	}
}

func TestNSMDeviceSkipped(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		want  string
	}{
		{"nitro: the kernel's device", map[string]string{"dev/nsm": ""}, "/dev/nsm is the kernel's security module device"},
		{"no CUSE", map[string]string{"dev/null": ""}, "warning: no /dev/nsm: the kernel has no CUSE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			writeFiles(t, root, tt.files)
			var console consoleLog
			dialled := false
			cfg := &Config{DialNSM: func(ctx context.Context) (Conn, error) { dialled = true; return nil, io.EOF }}
			startNSMDevice(context.Background(), cfg, root, console.log)
			if !strings.HasPrefix(console.String(), tt.want) {
				t.Errorf("console %q, want %q", console.String(), tt.want)
			}
			if dialled {
				t.Error("dialled the module")
			}
		})
	}
}

// TestNSMDeviceRefused: a CUSE channel that fails the handshake leaves the
// VM without /dev/nsm, reported, and init goes on.
func TestNSMDeviceRefused(t *testing.T) {
	root := t.TempDir()
	ch, k, err := cusetest.Pair()
	if err != nil {
		t.Fatal(err)
	}
	go func() { _, _ = k.Handshake(10) }() // a kernel too old
	defer k.Close()
	var console consoleLog
	startNSMDevice(context.Background(), &Config{OpenCUSE: func() (io.ReadWriteCloser, error) { return ch, nil }}, root, console.log)
	if !strings.Contains(console.String(), "warning: no /dev/nsm: nsmcuse: creating /dev/nsm: cuse: kernel speaks FUSE 7.10") {
		t.Errorf("console:\n%s", console.String())
	}
}
