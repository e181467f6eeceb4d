package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/cloister/cloister/parent/backend"
)

// formatVersion is the layout version of record.json, monitor.json and
// exit.json this daemon writes. Version 0 is the layout before the field
// existed (the same fields, no format_version); a daemon reads every
// version up to its own, so a new daemon adopts the enclaves an older one
// started (e2e TestUpgradeAdoptsEnclaves). Bump it, and convert on read,
// when a field changes meaning, or when a daemon that ignored a new field
// would be less safe than one refusing the file.
//
// Version 2 adds the enclave's own egress allowlist ("egress" in
// record.json and monitor.json), which narrows the daemon's: a daemon of
// version 1 would silently drop it, so it must refuse these files instead.
// Versions 0 and 1 have no such field and are read as they are.
const formatVersion = 2

// maxStateFile bounds the state files read back (they are a few KiB).
const maxStateFile = 4 << 20

// errStateVersion means a state file was written by a newer daemon.
var errStateVersion = errors.New("daemon: state file from a newer daemon")

// writeRecord writes the enclave's record.json.
func writeRecord(dir backend.Dir, rec record) error {
	rec.FormatVersion = formatVersion
	return writeJSONAtomic(dir.Record(), rec)
}

// readRecord reads the enclave's record.json (any known version).
func readRecord(dir backend.Dir) (record, error) {
	var rec record
	err := readState(dir.Record(), &rec)
	return rec, err
}

// writeMonitorSpec writes the monitor's job, monitor.json.
func writeMonitorSpec(dir backend.Dir, ms monitorSpec) error {
	ms.FormatVersion = formatVersion
	return writeJSONAtomic(dir.MonitorSpec(), ms)
}

// readMonitorSpec reads monitor.json (any known version).
func readMonitorSpec(dir backend.Dir) (monitorSpec, error) {
	var ms monitorSpec
	err := readState(dir.MonitorSpec(), &ms)
	return ms, err
}

// writeExit records how the enclave ended, exit.json.
func writeExit(dir backend.Dir, st monitorStatus) error {
	st.FormatVersion = formatVersion
	return writeJSONAtomic(dir.Exit(), st)
}

// readExit reads exit.json (any known version).
func readExit(dir backend.Dir) (monitorStatus, error) {
	var st monitorStatus
	err := readState(dir.Exit(), &st)
	return st, err
}

// readState decodes the state file at path into v after checking its
// format_version: 0 (absent) up to formatVersion.
func readState(path string, v any) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxStateFile+1))
	if err != nil {
		return err
	}
	return decodeState(path, b, v)
}

func decodeState(path string, b []byte, v any) error {
	if len(b) > maxStateFile {
		return fmt.Errorf("daemon: %s is larger than %d bytes; it is not a state file of this daemon: move it away", path, maxStateFile)
	}
	var ver struct {
		FormatVersion int `json:"format_version"`
	}
	if err := json.Unmarshal(b, &ver); err != nil {
		return fmt.Errorf("daemon: decode %s: %w", path, err)
	}
	if ver.FormatVersion < 0 || ver.FormatVersion > formatVersion {
		return fmt.Errorf("%w: %s has format_version %d and this daemon reads versions 0 to %d: run the newer daemon",
			errStateVersion, path, ver.FormatVersion, formatVersion)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("daemon: decode %s: %w", path, err)
	}
	return nil
}
