package initproc

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/cloister/cloister/internal/nsm"
	"github.com/cloister/cloister/internal/nsm/nsmcuse"
	"github.com/cloister/cloister/internal/wellknown"
	"golang.org/x/sys/unix"
)

// DialNSM connects to the parent's emulated security module, vsock (CID 3,
// port 0x4E534D), with a raw socket like [DialVsock].
func DialNSM(ctx context.Context) (Conn, error) {
	return dialSocket(ctx, unix.AF_VSOCK, &unix.SockaddrVM{CID: ParentCID, Port: wellknown.NSMPort},
		"vsock "+strconv.Itoa(ParentCID)+":"+strconv.Itoa(wellknown.NSMPort))
}

// nsmDeviceTimeout bounds the wait for /dev/nsm to be created.
const nsmDeviceTimeout = 10 * time.Second

// startNSMDevice gives a VM without a security module device of its own (a
// microVM) a /dev/nsm: a CUSE device whose ioctls behave as the Linux nsm
// driver's (package nsmcuse) and reach the parent's emulated module over
// vsock. It returns once the device exists, or at once when there is
// nothing to do or it cannot be made, which it reports on the console:
// /dev/nsm already exists (a Nitro enclave: nsm.ko, or a kernel with the
// driver), or the kernel has no CUSE (/dev/cuse is missing; programs that
// open /dev/nsm then fail, the SDK falls back to the module over vsock).
// The device is served for the rest of init's life.
func startNSMDevice(ctx context.Context, cfg *Config, root string, log logFunc) {
	dev := filepath.Join(root, "dev")
	if fileExists(filepath.Join(dev, nsmcuse.DeviceName)) {
		log("/dev/nsm is the kernel's security module device")
		return
	}
	open := cfg.OpenCUSE
	if open == nil {
		path := filepath.Join(dev, "cuse")
		if !fileExists(path) {
			log("warning: no /dev/nsm: the kernel has no CUSE (/dev/cuse is missing; build the image with --kernel-modules-dir, which adds cuse.ko)")
			return
		}
		open = func() (io.ReadWriteCloser, error) { return os.OpenFile(path, os.O_RDWR, 0) }
	}
	dial := cfg.DialNSM
	if dial == nil {
		dial = DialNSM
	}
	var once sync.Once
	ready := make(chan error, 1)
	signal := func(err error) { once.Do(func() { ready <- err }) }
	go func() {
		err := nsmcuse.Serve(ctx, nsmcuse.Config{
			Open:   open,
			DevDir: dev,
			Module: nsm.NewStream(dial),
			Logf:   func(format string, args ...any) { log(format, args...) },
			Ready:  func() { signal(nil) },
		})
		signal(err)
		if err != nil && ctx.Err() == nil {
			log("warning: /dev/nsm stopped: %v", err)
		}
	}()
	select {
	case err := <-ready:
		if err != nil {
			log("warning: no /dev/nsm: %v", err)
			return
		}
	case <-time.After(nsmDeviceTimeout):
		// The kernel never sent CUSE_INIT: go on without the device rather
		// than hold up the application.
		log("warning: no /dev/nsm: the CUSE channel did not answer within %v", nsmDeviceTimeout)
		return
	}
	log("/dev/nsm served through CUSE, forwarded to the parent's emulated security module (vsock %d:%d)", ParentCID, wellknown.NSMPort)
}
