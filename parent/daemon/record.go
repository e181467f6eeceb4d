package daemon

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cloister/cloister/parent"
)

// record is what the daemon persists about an enclave in
// <state>/enclaves/<slot>/record.json. It is enough to find the enclave again
// after a daemon restart.
type record struct {
	// FormatVersion is the layout of this file (formatVersion when
	// written; 0, today's layout without the field, is read too).
	FormatVersion int                 `json:"format_version"`
	ID            string              `json:"id"`
	Slot          string              `json:"slot"`
	Name          string              `json:"name"`
	CID           uint32              `json:"cid"`
	CPUs          []int               `json:"cpus"`
	MemoryMiB     int                 `json:"memory_mib"`
	Debug         bool                `json:"debug"`
	EIFPath       string              `json:"eif_path"`
	EIFSize       int64               `json:"eif_size"`
	Measurements  parent.Measurements `json:"measurements"`
	ImageName     string              `json:"image_name,omitempty"`
	ImageVersion  string              `json:"image_version,omitempty"`
	Metadata      json.RawMessage     `json:"metadata,omitempty"`
	Backend       string              `json:"backend"`
	StartTime     time.Time           `json:"start_time"`
	MonitorPID    int                 `json:"monitor_pid"`
	EnclavePID    int                 `json:"enclave_pid"`
	// Egress is the enclave's own egress allowlist (format version 2;
	// nil: the daemon's allowlist alone).
	Egress *parent.EgressPolicy `json:"egress,omitempty"`
}

// newSlot returns a random 64-bit slot id in hex, used for the EnclaveID
// suffix and the private directory name.
func newSlot() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("daemon: random slot id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// instanceID returns the host's identity for EnclaveIDs: the EC2 instance id
// from the DMI board asset tag (as nitro-cli does) or nitro-cli's fallback.
func instanceID() string {
	if b, err := os.ReadFile("/sys/devices/virtual/dmi/id/board_asset_tag"); err == nil {
		if s := strings.TrimSpace(string(b)); strings.HasPrefix(s, "i-") {
			return s
		}
	}
	return "i-0000000000000000"
}

// writeJSONAtomic writes v as JSON to path through a temporary file and a
// rename, so a crash of the daemon never leaves a half-written file. There
// is no fsync: these files describe running enclaves, which a power loss
// ends anyway, and a daemon crash leaves the page cache intact.
func writeJSONAtomic(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
