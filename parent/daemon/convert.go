package daemon

import (
	"encoding/hex"
	"os"
	"time"

	"github.com/cloister/cloister/enclave/eif"
	"github.com/cloister/cloister/internal/egress"
	"github.com/cloister/cloister/parent"
	"github.com/cloister/cloister/parent/backend"
)

// The conversions of one launch, each written once. A launch is described
// by the API's parent.RunRequest, then by the daemon's record (persisted),
// the backend.Spec built from it, and the monitorSpec that carries the Spec
// to the monitor; the sandbox backend converts the Spec to its own
// sandbox.Spec. Inside the daemon a CID is a uint32 and PCRs are bytes:
// the API's uint64 CIDs and hex PCRs are converted here, at the edge.

// newRecord is the record of an enclave about to be launched from req
// (validated by Run) with the decisions the daemon made for it.
func newRecord(req parent.RunRequest, id, slot, name string, cid uint32, cpus []int, eifPath string,
	img imageInfo, kind backend.Kind, now time.Time) record {
	return record{
		ID: id, Slot: slot, Name: name, CID: cid, CPUs: cpus, MemoryMiB: req.MemoryMiB,
		Debug: req.DebugMode || req.AttachConsole, EIFPath: eifPath, EIFSize: img.size,
		Measurements: img.measurements, ImageName: img.name, ImageVersion: img.version, Metadata: img.metadata,
		Backend: kind.String(), StartTime: now.UTC(), Egress: cloneEgress(req.Egress),
	}
}

// cloneEgress copies an enclave's own egress allowlist (nil stays nil, an
// empty list stays empty: it allows nothing).
func cloneEgress(p *parent.EgressPolicy) *parent.EgressPolicy {
	if p == nil {
		return nil
	}
	return &parent.EgressPolicy{Allowlist: append([]parent.EgressEntry{}, p.Allowlist...)}
}

// egressEntries are the entries of an enclave's own egress allowlist as
// the egress proxies read them.
func egressEntries(p *parent.EgressPolicy) []egress.Entry {
	out := make([]egress.Entry, len(p.Allowlist))
	for i, e := range p.Allowlist {
		out[i] = egress.Entry{Address: e.Address, Port: e.Port}
	}
	return out
}

// spec is what the backend is told about the enclave of r in dir. image is
// the sealed copy to boot, or nil when the Spec only names what to clean
// up (backend.Cleaner).
func (r record) spec(dir backend.Dir, image *os.File) backend.Spec {
	return backend.Spec{
		ID: r.ID, Name: r.Name, CID: r.CID, CPUs: r.CPUs, MemoryMiB: r.MemoryMiB,
		Debug: r.Debug, EIFPath: r.EIFPath, Image: image, Dir: dir,
	}
}

// newMonitorSpec is the monitor's job for the enclave of r: the validated
// Spec, the daemon's configuration, the enclave's own egress allowlist,
// the heartbeat timeout, the image's PCRs for the emulated security module
// and the development root's file ("" when the backend has a real
// security module).
func (r record) newMonitorSpec(spec backend.Spec, cfg Config, heartbeat time.Duration, pcrs pcrSet, issuer issuerRef) monitorSpec {
	return monitorSpec{Spec: spec, Config: cfg, Egress: cloneEgress(r.Egress), HeartbeatTimeout: heartbeat, PCRs: pcrs, issuerRef: issuer}
}

// runResult is run-enclave's answer for the launched enclave of r.
func (r record) runResult() parent.RunResult {
	return parent.RunResult{
		EnclaveName: r.Name, EnclaveID: r.ID, ProcessID: r.EnclavePID, EnclaveCID: uint64(r.CID),
		NumberOfCPUs: len(r.CPUs), CPUIDs: append([]int(nil), r.CPUs...), MemoryMiB: r.MemoryMiB,
	}
}

// describe is describe-enclaves' entry for the enclave of r.
func (r record) describe(dir backend.Dir, st State, exit *parent.ExitStatus, caps backend.Capabilities) parent.EnclaveDescription {
	flags := parent.FlagsNone
	if r.Debug {
		flags = parent.FlagsDebug
	}
	desc := parent.EnclaveDescription{
		EnclaveName: r.Name, EnclaveID: r.ID, ProcessID: r.EnclavePID, EnclaveCID: uint64(r.CID),
		NumberOfCPUs: len(r.CPUs), CPUIDs: append([]int(nil), r.CPUs...), MemoryMiB: r.MemoryMiB,
		State: st.String(), Flags: flags, Measurements: r.Measurements,
		ImageName: r.ImageName, ImageVersion: r.ImageVersion, Metadata: r.Metadata,
		Backend: r.Backend, EIFPath: r.EIFPath, StartTime: r.StartTime,
		ConsoleLog: dir.Console(), Egress: cloneEgress(r.Egress),
	}
	if st != StateExited {
		desc.VsockSocket = dir.VsockSock()
		if caps.HostSockets {
			desc.HostListenerBase = dir.HostListenerBase()
		}
	}
	if exit != nil {
		x := *exit
		desc.ExitStatus = &x
	}
	return desc
}

// exitStatus is the API's form of a backend's exit, ended at t.
func exitStatus(x backend.Exit, t time.Time) parent.ExitStatus {
	return parent.ExitStatus{Code: x.Code, Signal: x.Signal, Reason: x.Reason, Time: t.UTC()}
}

// pcrsOf are the measured PCRs of m: 0, 1, 2, and 8 for a signed image.
func pcrsOf(m eif.Measurements) pcrSet {
	p := pcrSet{0: m.PCR0[:], 1: m.PCR1[:], 2: m.PCR2[:]}
	if m.PCR8 != nil {
		p[8] = m.PCR8[:]
	}
	return p
}

// measurementsOf is the API's (nitro-cli's) hex form of measured PCRs.
func measurementsOf(p pcrSet) parent.Measurements {
	m := parent.Measurements{
		HashAlgorithm: parent.HashAlgorithm,
		PCR0:          hex.EncodeToString(p[0]), PCR1: hex.EncodeToString(p[1]), PCR2: hex.EncodeToString(p[2]),
	}
	if b, ok := p[8]; ok {
		m.PCR8 = hex.EncodeToString(b)
	}
	return m
}
