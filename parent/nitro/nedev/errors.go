package nedev

import (
	"errors"
	"fmt"
	"syscall"
)

// Errno is one of the nitro_enclaves driver's own error codes (256–275),
// returned by its ioctls as -errno. Each value is a sentinel: test for it
// with errors.Is(err, nedev.ErrFullCoresNotUsed).
type Errno uint16

// The driver's error codes (include/uapi/linux/nitro_enclaves.h).
const (
	ErrVCPUAlreadyUsed      Errno = 256 // NE_ERR_VCPU_ALREADY_USED
	ErrVCPUNotInCPUPool     Errno = 257 // NE_ERR_VCPU_NOT_IN_CPU_POOL
	ErrVCPUInvalidCPUCore   Errno = 258 // NE_ERR_VCPU_INVALID_CPU_CORE
	ErrInvalidMemRegionSize Errno = 259 // NE_ERR_INVALID_MEM_REGION_SIZE
	ErrInvalidMemRegionAddr Errno = 260 // NE_ERR_INVALID_MEM_REGION_ADDR
	ErrUnalignedMemRegion   Errno = 261 // NE_ERR_UNALIGNED_MEM_REGION_ADDR
	ErrMemRegionAlreadyUsed Errno = 262 // NE_ERR_MEM_REGION_ALREADY_USED
	ErrMemNotHugePage       Errno = 263 // NE_ERR_MEM_NOT_HUGE_PAGE
	ErrMemDifferentNUMANode Errno = 264 // NE_ERR_MEM_DIFFERENT_NUMA_NODE
	ErrMemMaxRegions        Errno = 265 // NE_ERR_MEM_MAX_REGIONS
	ErrNoMemRegionsAdded    Errno = 266 // NE_ERR_NO_MEM_REGIONS_ADDED
	ErrNoVCPUsAdded         Errno = 267 // NE_ERR_NO_VCPUS_ADDED
	ErrEnclaveMemMinSize    Errno = 268 // NE_ERR_ENCLAVE_MEM_MIN_SIZE
	ErrFullCoresNotUsed     Errno = 269 // NE_ERR_FULL_CORES_NOT_USED
	ErrNotInInitState       Errno = 270 // NE_ERR_NOT_IN_INIT_STATE
	ErrInvalidVCPU          Errno = 271 // NE_ERR_INVALID_VCPU
	ErrNoCPUsAvailInPool    Errno = 272 // NE_ERR_NO_CPUS_AVAIL_IN_POOL
	ErrInvalidPageSize      Errno = 273 // NE_ERR_INVALID_PAGE_SIZE
	ErrInvalidFlagValue     Errno = 274 // NE_ERR_INVALID_FLAG_VALUE
	ErrInvalidEnclaveCID    Errno = 275 // NE_ERR_INVALID_ENCLAVE_CID
)

// FirstErrno and LastErrno bound the driver's own error codes.
const (
	FirstErrno = ErrVCPUAlreadyUsed
	LastErrno  = ErrInvalidEnclaveCID
)

type errnoInfo struct{ name, msg, fix string }

var errnoTable = map[Errno]errnoInfo{
	ErrVCPUAlreadyUsed: {"NE_ERR_VCPU_ALREADY_USED", "the CPU is already a vCPU of this enclave",
		"list every CPU once; let the driver pick (cpu id 0, --cpu-count) or give distinct --cpu-ids"},
	ErrVCPUNotInCPUPool: {"NE_ERR_VCPU_NOT_IN_CPU_POOL", "the CPU is not (or no longer) available in the nitro_enclaves CPU pool; another enclave may hold its core",
		"use a free CPU listed in " + CPUPoolPath + " (describe-enclaves shows the CPUs in use), or add it to cpu_pool in the daemon config and restart the daemon"},
	ErrVCPUInvalidCPUCore: {"NE_ERR_VCPU_INVALID_CPU_CORE", "the CPU's core is outside the cores the driver knows for the pool",
		"rebuild the pool: set cpu_count or cpu_pool in the daemon config and restart the daemon (it rewrites " + CPUPoolPath + ")"},
	ErrInvalidMemRegionSize: {"NE_ERR_INVALID_MEM_REGION_SIZE", "the memory region size is not a non-zero multiple of 2 MiB",
		"back enclave memory with whole 2 MiB or 1 GiB hugepages"},
	ErrInvalidMemRegionAddr: {"NE_ERR_INVALID_MEM_REGION_ADDR", "the memory region address is not a valid mapping of the calling process",
		"pass the address of a live hugepage mapping made by the process that created the enclave"},
	ErrUnalignedMemRegion: {"NE_ERR_UNALIGNED_MEM_REGION_ADDR", "the memory region address is not 2 MiB aligned",
		"map enclave memory with MAP_HUGETLB so the kernel aligns it to the hugepage size"},
	ErrMemRegionAlreadyUsed: {"NE_ERR_MEM_REGION_ALREADY_USED", "the memory region overlaps memory already given to this enclave",
		"give each hugepage mapping to the enclave only once"},
	ErrMemNotHugePage: {"NE_ERR_MEM_NOT_HUGE_PAGE", "the memory region is not backed by hugetlb pages",
		"reserve hugepages (set memory_mib in the daemon config, or echo N > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages) and map them with MAP_HUGETLB"},
	ErrMemDifferentNUMANode: {"NE_ERR_MEM_DIFFERENT_NUMA_NODE", "the memory is on a different NUMA node than the enclave's CPUs",
		"reserve the hugepages on the CPU pool's node (/sys/devices/system/node/nodeN/hugepages/hugepages-*/nr_hugepages); the daemon's allocator (memory_mib with cpu_count/cpu_pool) does this"},
	ErrMemMaxRegions: {"NE_ERR_MEM_MAX_REGIONS", "the enclave would have more memory regions than the hypervisor allows",
		"reserve larger hugepages (1 GiB: hugepages-1048576kB) so fewer regions are needed, or request less memory"},
	ErrNoMemRegionsAdded: {"NE_ERR_NO_MEM_REGIONS_ADDED", "the enclave was started without memory",
		"add memory with NE_SET_USER_MEMORY_REGION before NE_START_ENCLAVE"},
	ErrNoVCPUsAdded: {"NE_ERR_NO_VCPUS_ADDED", "the enclave was started without vCPUs",
		"add vCPUs with NE_ADD_VCPU before NE_START_ENCLAVE"},
	ErrEnclaveMemMinSize: {"NE_ERR_ENCLAVE_MEM_MIN_SIZE", "the enclave has less than the minimum of 64 MiB of memory",
		"request at least 64 MiB (--memory 64) and at least 4 × the EIF size"},
	ErrFullCoresNotUsed: {"NE_ERR_FULL_CORES_NOT_USED", "the enclave does not use full CPU cores",
		"use all hyperthread siblings of each core: request a multiple of the threads per core (an even --cpu-count on hosts with 2 threads per core), or list every sibling in --cpu-ids (see /sys/devices/system/cpu/cpuN/topology/thread_siblings_list)"},
	ErrNotInInitState: {"NE_ERR_NOT_IN_INIT_STATE", "the enclave has already been started; setup ioctls are only allowed before NE_START_ENCLAVE",
		"launch a new enclave instead of changing a running one"},
	ErrInvalidVCPU: {"NE_ERR_INVALID_VCPU", "the vCPU id is beyond the parent instance's CPUs",
		"use a CPU id listed in " + CPUPoolPath},
	ErrNoCPUsAvailInPool: {"NE_ERR_NO_CPUS_AVAIL_IN_POOL", "the nitro_enclaves CPU pool is empty or all of its CPUs are in use",
		"set cpu_count or cpu_pool in the daemon config (it fills " + CPUPoolPath + "), or terminate an enclave to free its CPUs"},
	ErrInvalidPageSize: {"NE_ERR_INVALID_PAGE_SIZE", "the memory is backed by pages whose size is not a multiple of 2 MiB",
		"use 2 MiB or 1 GiB hugepages"},
	ErrInvalidFlagValue: {"NE_ERR_INVALID_FLAG_VALUE", "an ioctl flag value is not supported by this driver",
		"update the kernel's nitro_enclaves driver, or report the flag to the Cloister developers"},
	ErrInvalidEnclaveCID: {"NE_ERR_INVALID_ENCLAVE_CID", "the enclave CID is invalid or already in use",
		"use a CID in 4..4294967294 that no other enclave or VM uses, or 0 (omit --enclave-cid) to let the hypervisor pick"},
}

// Name returns the driver's name for e ("NE_ERR_FULL_CORES_NOT_USED").
func (e Errno) Name() string {
	if i, ok := errnoTable[e]; ok {
		return i.name
	}
	return fmt.Sprintf("NE_ERR_%d", uint16(e))
}

// Fix says what to do about e.
func (e Errno) Fix() string { return errnoTable[e].fix }

// Error returns "nitro_enclaves: NAME (code): what happened; fix: what to do".
func (e Errno) Error() string {
	i, ok := errnoTable[e]
	if !ok {
		return fmt.Sprintf("nitro_enclaves: unknown driver error %d", uint16(e))
	}
	return fmt.Sprintf("nitro_enclaves: %s (%d): %s; fix: %s", i.name, uint16(e), i.msg, i.fix)
}

// Op names an ioctl (or the device open) for errors and error injection.
type Op string

// The operations of the device seam.
const (
	OpOpen                Op = "open"
	OpCreateVM            Op = "NE_CREATE_VM"
	OpAddVCPU             Op = "NE_ADD_VCPU"
	OpGetImageLoadInfo    Op = "NE_GET_IMAGE_LOAD_INFO"
	OpSetUserMemoryRegion Op = "NE_SET_USER_MEMORY_REGION"
	OpStartEnclave        Op = "NE_START_ENCLAVE"
	OpPoll                Op = "poll"
)

// IoctlError is a failed driver call. It unwraps to the driver's [Errno]
// when the code is one of 256–275, and always to the raw syscall.Errno, so
// both errors.Is(err, nedev.ErrFullCoresNotUsed) and
// errors.Is(err, syscall.EPERM) work.
type IoctlError struct {
	Op    Op
	Errno syscall.Errno
}

// Error says which call failed, the code's name and meaning, and the fix.
func (e *IoctlError) Error() string {
	if n := Errno(e.Errno); e.Errno >= syscall.Errno(FirstErrno) && e.Errno <= syscall.Errno(LastErrno) {
		return fmt.Sprintf("nedev: %s: %s", e.Op, n.Error())
	}
	msg, fix := genericErrno(e.Op, e.Errno)
	return fmt.Sprintf("nedev: %s: %s (errno %d): %s; fix: %s", e.Op, e.Errno.Error(), int(e.Errno), msg, fix)
}

// Unwrap returns the driver Errno (if any) and the syscall.Errno.
func (e *IoctlError) Unwrap() []error {
	if e.Errno >= syscall.Errno(FirstErrno) && e.Errno <= syscall.Errno(LastErrno) {
		return []error{Errno(e.Errno), e.Errno}
	}
	return []error{e.Errno}
}

// ErrUnsupported is returned on platforms without the driver (not Linux).
var ErrUnsupported = errors.New("nedev: nitro_enclaves is only available on Linux")

// ErrClosed is returned for calls on a closed device or enclave handle.
var ErrClosed = errors.New("nedev: file descriptor already closed")

// NewIoctlError is the one place a failed call becomes an error: the real
// device and the simulated driver (package nedevtest) both build theirs
// with it, so callers see identical errors from both.
func NewIoctlError(op Op, errno syscall.Errno) error {
	return &IoctlError{Op: op, Errno: errno}
}

// genericErrno explains the standard errnos the driver and kernel return.
func genericErrno(op Op, e syscall.Errno) (msg, fix string) {
	switch e {
	case syscall.EPERM, syscall.EACCES:
		if op == OpOpen {
			return "not allowed to open " + DevicePath, "run the daemon as root, or add its user to the ne group (usermod -aG ne $USER)"
		}
		return "the driver refused the call", "run the daemon as root"
	case syscall.ENOENT, syscall.ENODEV, syscall.ENXIO:
		return DevicePath + " is missing or has no device behind it", "use an EC2 instance launched with --enclave-options Enabled=true and load the driver: modprobe nitro_enclaves"
	case syscall.ENOMEM:
		return "the driver or the hypervisor ran out of memory or enclave slots", "free memory, terminate an enclave (at most 4 per parent instance), or check dmesg"
	case syscall.EINVAL:
		return "the driver rejected an argument", "check dmesg for the nitro_enclaves message naming the argument"
	case syscall.EFAULT:
		return "the driver could not access the argument in user memory", "this is a bug in the caller; report it"
	case syscall.EBUSY:
		return "the device or a resource is busy", "retry after the running enclave operation finishes"
	case syscall.EIO:
		return "the Nitro hypervisor did not complete the request", "check dmesg; the instance may have reached its limit of enclaves or be short of resources"
	case syscall.ENOTTY:
		return "the file does not understand nitro_enclaves ioctls", "make sure " + DevicePath + " is the nitro_enclaves misc device"
	case syscall.EINTR:
		return "the call was interrupted by a signal", "retry"
	case syscall.EBADF:
		return "the file descriptor is not open", "this is a bug in the caller; report it"
	}
	return "the call failed", "check dmesg for nitro_enclaves messages"
}
