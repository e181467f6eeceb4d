package nedev

import "unsafe"

// DevicePath is where the nitro_enclaves misc device lives.
const DevicePath = "/dev/nitro_enclaves"

// CPUPoolPath is the nitro_enclaves module parameter holding the CPU pool
// (cpu-list syntax).
const CPUPoolPath = "/sys/module/nitro_enclaves/parameters/ne_cpus"

// ioctl numbers (magic 0xAE), as _IOR/_IOW/_IOWR encode them on Linux.
const (
	// IoctlCreateVM is NE_CREATE_VM = _IOR(0xAE, 0x20, __u64): issued on the
	// device fd, it writes the slot uid and returns a new enclave fd.
	IoctlCreateVM = 0x8008AE20
	// IoctlAddVCPU is NE_ADD_VCPU = _IOWR(0xAE, 0x21, __u32): in/out vCPU id,
	// 0 asks the driver to pick one from the pool.
	IoctlAddVCPU = 0xC004AE21
	// IoctlGetImageLoadInfo is NE_GET_IMAGE_LOAD_INFO =
	// _IOWR(0xAE, 0x22, struct ne_image_load_info).
	IoctlGetImageLoadInfo = 0xC010AE22
	// IoctlSetUserMemoryRegion is NE_SET_USER_MEMORY_REGION =
	// _IOW(0xAE, 0x23, struct ne_user_memory_region).
	IoctlSetUserMemoryRegion = 0x4018AE23
	// IoctlStartEnclave is NE_START_ENCLAVE =
	// _IOWR(0xAE, 0x24, struct ne_enclave_start_info).
	IoctlStartEnclave = 0xC010AE24
)

// Flag values of the ioctl arguments.
const (
	// EIFImage (NE_EIF_IMAGE) is the only image type of NE_GET_IMAGE_LOAD_INFO.
	EIFImage = 0x01
	// DefaultMemoryRegion (NE_DEFAULT_MEMORY_REGION) is the only memory
	// region flag value.
	DefaultMemoryRegion = 0x00
	// EnclaveDebugMode (NE_ENCLAVE_DEBUG_MODE) starts the enclave with its
	// console readable (and all PCRs reported as zero).
	EnclaveDebugMode = 0x01
	// EnclaveProductionMode is the start flag value without debug mode.
	EnclaveProductionMode = 0x00
)

// Driver constants.
const (
	// EIFLoadOffset (NE_EIF_LOAD_OFFSET) is the memory offset, 8 MiB, at
	// which the driver expects the EIF.
	EIFLoadOffset = 8 << 20
	// MinEnclaveMemory (NE_MIN_ENCLAVE_MEM_SIZE) is 64 MiB.
	MinEnclaveMemory = 64 << 20
	// MemRegionAlign is the required size multiple and address alignment
	// of memory regions (2 MiB).
	MemRegionAlign = 2 << 20
	// MinEnclaveCID and MaxEnclaveCID bound explicit enclave CIDs.
	MinEnclaveCID = 4
	MaxEnclaveCID = 0xFFFFFFFE
	// ConsolePortOffset is added to the enclave CID to get the hypervisor
	// (CID 0) vsock port of a debug enclave's console.
	ConsolePortOffset = 10000
)

// ImageLoadInfo is struct ne_image_load_info.
type ImageLoadInfo struct {
	Flags        uint64 // in: EIFImage
	MemoryOffset uint64 // out
}

// UserMemoryRegion is struct ne_user_memory_region.
type UserMemoryRegion struct {
	Flags         uint64 // DefaultMemoryRegion
	MemorySize    uint64 // multiple of 2 MiB
	UserspaceAddr uint64 // 2 MiB aligned, hugetlb-backed
}

// EnclaveStartInfo is struct ne_enclave_start_info.
type EnclaveStartInfo struct {
	Flags      uint64 // in: EnclaveDebugMode or 0
	EnclaveCID uint64 // in: 0 = auto; out: the CID in use
}

// Compile-time checks that the structs have the driver's sizes.
var (
	_ [16 - unsafe.Sizeof(ImageLoadInfo{})]byte
	_ [unsafe.Sizeof(ImageLoadInfo{}) - 16]byte
	_ [24 - unsafe.Sizeof(UserMemoryRegion{})]byte
	_ [unsafe.Sizeof(UserMemoryRegion{}) - 24]byte
	_ [16 - unsafe.Sizeof(EnclaveStartInfo{})]byte
	_ [unsafe.Sizeof(EnclaveStartInfo{}) - 16]byte
)
