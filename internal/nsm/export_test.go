package nsm

// Test hooks for the external test package.

// RawMsg is struct nsm_raw.
type RawMsg = nsmRaw

// IoctlRaw is NSM_IOCTL_RAW.
const IoctlRaw = ioctlRaw

// RawLayoutOK reports whether RawMsg has the kernel layout.
var RawLayoutOK = rawLayoutOK
