package nitro

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"sync"
	"time"

	"github.com/cloister/cloister/enclave/eif"
	"github.com/cloister/cloister/parent/backend"
	"github.com/cloister/cloister/parent/nitro/hugepage"
	"github.com/cloister/cloister/parent/nitro/nedev"
)

// consoleConnectTimeout is nitro-cli's console connect timeout.
const consoleConnectTimeout = 20 * time.Second

// Launch starts the enclave of spec with nitro-cli's sequence:
//  1. open and validate the EIF (eif.Read); refuse images built without a
//     kernel (backend.ErrUnsupportedImage) and memory below 4 × the file
//     size (ErrInsufficientMemory);
//  2. open the device, NE_CREATE_VM, close the device fd;
//  3. NE_ADD_VCPU for each of spec.CPUs (the daemon chose them);
//  4. NE_GET_IMAGE_LOAD_INFO (NE_EIF_IMAGE) for the load offset;
//  5. map spec.MemoryMiB of hugepages (hugepage.Allocate) and copy the EIF
//     file byte for byte at the load offset;
//  6. NE_SET_USER_MEMORY_REGION for each page;
//  7. NE_START_ENCLAVE with the debug flag of spec.Debug and spec.CID;
//  8. for a debug enclave with spec.Console set, copy the console (vsock
//     CID 0, port CID+10000) into spec.Console in the background.
//
// A failure at any step releases everything created so far (enclave fd,
// which returns its CPUs to the pool; hugepage mappings; device fd) and
// returns a [*backend.StepError] naming the step. The returned instance watches the
// enclave fd for EPOLLHUP.
func (b *Backend) Launch(ctx context.Context, spec backend.Spec) (backend.Instance, error) {
	res := &resources{}
	inst, err := b.launch(ctx, spec, res)
	if err != nil {
		res.release()
		return nil, err
	}
	return inst, nil
}

// step is the failure of the named step: "read image", "open device",
// "NE_CREATE_VM", "close device", "NE_ADD_VCPU cpu 3",
// "NE_GET_IMAGE_LOAD_INFO", "allocate hugepages", "copy image",
// "NE_SET_USER_MEMORY_REGION 2/5", "NE_START_ENCLAVE". Launch releases what
// the earlier steps created through resources, not backend.RunSteps: the
// driver wants them freed in its own order.
func step(name string, err error) error {
	return &backend.StepError{Backend: backend.KindNitro, Step: name, Err: err}
}

func (b *Backend) launch(ctx context.Context, spec backend.Spec, res *resources) (*Instance, error) {
	// 1. The image.
	var f ImageFile = spec.Image
	if b.cfg.WrapImage != nil {
		f = b.cfg.WrapImage(spec.Image)
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, step("read image", fmt.Errorf("stat %s: %w", spec.EIFPath, err))
	}
	size := fi.Size()
	if err := checkImage(f, size, spec.EIFPath); err != nil {
		return nil, step("read image", err)
	}
	mem := uint64(spec.MemoryMiB) << 20
	if need := 4 * uint64(size); mem < need {
		return nil, step("read image", fmt.Errorf("%w: %d MiB requested, at least %d MiB (4 × the %d-byte EIF) must be allocated; raise --memory",
			ErrInsufficientMemory, spec.MemoryMiB, (need+(1<<20)-1)>>20, size))
	}
	if err := ctx.Err(); err != nil {
		return nil, step("read image", err)
	}

	// 2. The enclave.
	dev, err := b.cfg.OpenDevice(b.cfg.DevicePath)
	if err != nil {
		return nil, step("open device", fmt.Errorf("%s: %w", b.cfg.DevicePath, err))
	}
	res.dev = dev
	enc, slot, err := dev.CreateVM()
	if err != nil {
		return nil, step("NE_CREATE_VM", err)
	}
	res.enc = enc
	if err := res.closeDevice(); err != nil {
		return nil, step("close device", err)
	}

	// 3. vCPUs.
	cpus := make([]int, 0, len(spec.CPUs))
	for _, c := range spec.CPUs {
		if c < 0 || int64(c) > math.MaxUint32 {
			return nil, step(fmt.Sprintf("NE_ADD_VCPU cpu %d", c), errors.New("invalid CPU id"))
		}
		got, err := enc.AddVCPU(uint32(c))
		if err != nil {
			return nil, step(fmt.Sprintf("NE_ADD_VCPU cpu %d", c), err)
		}
		cpus = append(cpus, int(got))
	}

	// 4. Where the image goes.
	offset, err := enc.GetImageLoadInfo(nedev.EIFImage)
	if err != nil {
		return nil, step("NE_GET_IMAGE_LOAD_INFO", err)
	}

	// 5. Memory and the image copy.
	regs, err := hugepage.Allocate(ctx, b.cfg.Mapper, b.cfg.PageSizes, mem)
	if err != nil {
		return nil, step("allocate hugepages", err)
	}
	res.regions = regs
	if err := regs.CopyImage(offset, io.NewSectionReader(f, 0, size), uint64(size)); err != nil {
		return nil, step("copy image", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, step("copy image", err)
	}

	// 6. Hand the memory to the driver.
	for i, m := range regs {
		r := nedev.UserMemoryRegion{Flags: nedev.DefaultMemoryRegion, MemorySize: m.Size(), UserspaceAddr: m.Addr()}
		if err := enc.SetUserMemoryRegion(r); err != nil {
			return nil, step(fmt.Sprintf("NE_SET_USER_MEMORY_REGION %d/%d", i+1, len(regs)), err)
		}
	}

	// 7. Start.
	var flags uint64 = nedev.EnclaveProductionMode
	if spec.Debug {
		flags = nedev.EnclaveDebugMode
	}
	if err := ctx.Err(); err != nil {
		return nil, step("NE_START_ENCLAVE", err)
	}
	cid, err := enc.StartEnclave(flags, uint64(spec.CID))
	if err != nil {
		return nil, step("NE_START_ENCLAVE", err)
	}

	inst := &Instance{
		b: b, spec: spec, cid: cid, slot: slot, cpus: cpus, memBytes: regs.Total(),
		res: res, done: make(chan struct{}),
	}
	// 8. Console and exit watch.
	if spec.Debug && spec.Console != nil {
		res.startConsole(b, cid, spec.Console)
	}
	wctx, cancel := context.WithCancel(context.Background())
	inst.cancelWatch = cancel
	go inst.watch(wctx)
	b.cfg.Logger.Info("enclave started", "enclave", spec.ID, "cid", cid, "slot_uid", slot, "cpus", cpus, "memory_mib", regs.Total()>>20, "debug", spec.Debug)
	return inst, nil
}

// checkImage validates the EIF (eif.Read) and refuses images without a
// kernel. The parsed image is dropped: the copy reads the file again.
func checkImage(f io.ReaderAt, size int64, path string) error {
	img, err := eif.Read(f, size, eif.ReadOptions{})
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if eif.IsNoKernel(img) {
		return fmt.Errorf("%w: %s was built without an enclave kernel, which only the sandbox backend can run; rebuild it with AWS's kernel blobs (build-enclave with /usr/share/nitro_enclaves/blobs or --kernel)",
			backend.ErrUnsupportedImage, path)
	}
	return nil
}

// resources are what one enclave holds; release frees them in the order
// the driver expects: console, enclave fd (stops the enclave, returns its
// CPUs), hugepages, device fd.
type resources struct {
	mu      sync.Mutex
	dev     nedev.Device
	enc     nedev.Enclave
	regions hugepage.Regions
	console *console
	errs    []error
}

func (r *resources) closeDevice() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.dev == nil {
		return nil
	}
	err := r.dev.Close()
	r.dev = nil
	return err
}

func (r *resources) startConsole(b *Backend, cid uint64, w io.Writer) {
	ctx, cancel := context.WithCancel(context.Background())
	c := &console{cancel: cancel, done: make(chan struct{})}
	r.mu.Lock()
	r.console = c
	r.mu.Unlock()
	port := uint32(cid + nedev.ConsolePortOffset)
	go func() {
		defer close(c.done)
		dctx, dcancel := context.WithTimeout(ctx, consoleConnectTimeout)
		conn, err := b.cfg.Vsock.Dial(dctx, 0, port)
		dcancel()
		if err != nil {
			if ctx.Err() == nil {
				b.cfg.Logger.Warn("cannot attach to the enclave console", "cid", cid, "port", port, "err", err)
			}
			return
		}
		if !c.set(conn) {
			conn.Close()
			return
		}
		_, _ = io.Copy(w, conn)
		conn.Close()
	}()
}

// release frees everything and returns the first error; it is idempotent.
func (r *resources) release() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.console != nil {
		r.console.stop()
		r.console = nil
	}
	if r.enc != nil {
		if err := r.enc.Close(); err != nil {
			r.errs = append(r.errs, fmt.Errorf("close enclave fd: %w", err))
		}
		r.enc = nil
	}
	if r.regions != nil {
		if err := r.regions.Unmap(); err != nil {
			r.errs = append(r.errs, fmt.Errorf("unmap hugepages: %w", err))
		}
		r.regions = nil
	}
	if r.dev != nil {
		if err := r.dev.Close(); err != nil {
			r.errs = append(r.errs, fmt.Errorf("close device: %w", err))
		}
		r.dev = nil
	}
	return errors.Join(r.errs...)
}

// console is the reader of a debug enclave's console.
type console struct {
	mu      sync.Mutex
	conn    net.Conn
	stopped bool
	cancel  context.CancelFunc
	done    chan struct{}
}

// set records the connection; false when the console was stopped meanwhile.
func (c *console) set(conn net.Conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return false
	}
	c.conn = conn
	return true
}

// stop ends the copy and waits for it, so nothing is written afterwards.
func (c *console) stop() {
	c.mu.Lock()
	c.stopped = true
	if c.conn != nil {
		c.conn.Close()
	}
	c.mu.Unlock()
	c.cancel()
	<-c.done
}

// Instance is a running Nitro enclave. It implements backend.Instance.
type Instance struct {
	b        *Backend
	spec     backend.Spec
	cid      uint64
	slot     uint64
	cpus     []int
	memBytes uint64
	res      *resources

	cancelWatch context.CancelFunc
	done        chan struct{}
	mu          sync.Mutex
	exit        backend.Exit
	relErr      error
}

var _ backend.Instance = (*Instance)(nil)

// CID returns the enclave's vsock CID as the driver reported it.
func (i *Instance) CID() uint64 { return i.cid }

// SlotUID returns the hypervisor's slot uid from NE_CREATE_VM.
func (i *Instance) SlotUID() uint64 { return i.slot }

// CPUs returns the CPUs the driver added, in order.
func (i *Instance) CPUs() []int { return append([]int(nil), i.cpus...) }

// MemoryMiB returns the memory actually given to the enclave (whole
// hugepages, so possibly more than requested).
func (i *Instance) MemoryMiB() int { return int(i.memBytes >> 20) }

// Pid returns 0: a Nitro enclave has no host process.
func (i *Instance) Pid() int { return 0 }

// Done is closed once the enclave has ended and its resources are released.
func (i *Instance) Done() <-chan struct{} { return i.done }

// Exit reports how the enclave ended (valid after Done). Nitro reports no
// exit status, so Code is always -1.
func (i *Instance) Exit() backend.Exit {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.exit
}

// watch waits for EPOLLHUP (or Terminate), then releases everything.
func (i *Instance) watch(ctx context.Context) {
	err := i.res.waitHangup(ctx)
	var x backend.Exit
	switch {
	case err == nil:
		x = backend.Exit{Code: -1, Reason: "enclave exited (the driver reported EPOLLHUP: the application ended, or the enclave crashed or rebooted)"}
	case ctx.Err() != nil:
		x = backend.Exit{Code: -1, Reason: "terminated"}
	default:
		x = backend.Exit{Code: -1, Reason: "enclave lost: waiting on its fd failed: " + err.Error()}
	}
	rerr := i.res.release()
	i.mu.Lock()
	i.exit = x
	i.relErr = rerr
	i.mu.Unlock()
	i.b.cfg.Logger.Info("enclave ended", "enclave", i.spec.ID, "cid", i.cid, "reason", x.Reason)
	close(i.done)
}

func (r *resources) waitHangup(ctx context.Context) error {
	r.mu.Lock()
	enc := r.enc
	r.mu.Unlock()
	if enc == nil {
		return nedev.ErrClosed
	}
	return enc.WaitHangup(ctx)
}

// Terminate stops the enclave (closing its fd makes the driver stop it and
// free its slot and CPUs), unmaps its memory and returns when all is
// released, or when ctx ends first. It is idempotent.
func (i *Instance) Terminate(ctx context.Context) error {
	i.cancelWatch()
	select {
	case <-i.done:
	case <-ctx.Done():
		return fmt.Errorf("nitro: terminate enclave %s: %w", i.spec.ID, ctx.Err())
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.relErr != nil {
		return fmt.Errorf("nitro: terminate enclave %s: %w", i.spec.ID, i.relErr)
	}
	return nil
}

// Dial connects to port inside the enclave over vsock.
func (i *Instance) Dial(ctx context.Context, port uint32) (net.Conn, error) {
	select {
	case <-i.done:
		return nil, fmt.Errorf("nitro: dial enclave %s port %d: the enclave has ended", i.spec.ID, port)
	default:
	}
	c, err := i.b.cfg.Vsock.Dial(ctx, uint32(i.cid), port)
	if err != nil {
		return nil, fmt.Errorf("nitro: dial enclave %s (cid %d) port %d: %w", i.spec.ID, i.cid, port, err)
	}
	return c, nil
}
