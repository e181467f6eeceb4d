package nedev

import "context"

// Device is an open /dev/nitro_enclaves. Its only job is creating enclaves;
// it may be closed as soon as the enclave exists.
type Device interface {
	// CreateVM issues NE_CREATE_VM and returns the new enclave's handle and
	// the hypervisor's slot uid. The caller must Close the enclave.
	CreateVM() (Enclave, uint64, error)
	// Close closes the device fd.
	Close() error
}

// Enclave is one enclave fd. All calls except WaitHangup and Close are only
// allowed before StartEnclave succeeded (else ErrNotInInitState).
type Enclave interface {
	// AddVCPU issues NE_ADD_VCPU for CPU id (0 = let the driver pick one
	// from the pool) and returns the CPU actually added.
	AddVCPU(id uint32) (uint32, error)
	// GetImageLoadInfo issues NE_GET_IMAGE_LOAD_INFO with flags (EIFImage)
	// and returns the memory offset at which the image must be placed.
	GetImageLoadInfo(flags uint64) (uint64, error)
	// SetUserMemoryRegion issues NE_SET_USER_MEMORY_REGION for r.
	SetUserMemoryRegion(r UserMemoryRegion) error
	// StartEnclave issues NE_START_ENCLAVE with flags (EnclaveDebugMode or
	// 0) and cid (0 = auto) and returns the CID in use.
	StartEnclave(flags, cid uint64) (uint64, error)
	// WaitHangup blocks until poll(2) reports EPOLLHUP on the enclave fd
	// (the enclave exited or crashed) and then returns nil, or until ctx is
	// done (returns ctx.Err()).
	WaitHangup(ctx context.Context) error
	// Close closes the enclave fd; the driver then stops the enclave and
	// frees its slot and CPUs. It must not be called while WaitHangup runs.
	Close() error
}

// Opener opens the device; [Open] and nedevtest.Sim.Open are Openers.
type Opener func(path string) (Device, error)
