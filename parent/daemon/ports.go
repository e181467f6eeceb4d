package daemon

import "github.com/cloister/cloister/internal/wellknown"

// Reserved parent ports the daemon serves to every enclave.
const (
	HeartbeatPort = wellknown.HeartbeatPort
	NSMPort       = wellknown.NSMPort
)
