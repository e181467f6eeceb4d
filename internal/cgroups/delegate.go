package cgroups

import (
	"bytes"
	"fmt"
	"path"
	"strings"
)

// Names of the groups beneath a delegated cgroup (systemd's "supervisor
// plus payload siblings" layout for delegation, docs/CGROUP_DELEGATION.md
// in systemd).
const (
	// SupervisorGroup is the leaf the daemon runs in on cgroup v2, where
	// a cgroup that distributes controllers to children cannot hold
	// processes itself. systemd ≥ 254 puts the service there with
	// DelegateSubgroup=supervisor.
	SupervisorGroup = "supervisor"
	// EnclavesGroup holds one group per enclave.
	EnclavesGroup = "enclaves"
)

// maxProcCgroup bounds /proc/<pid>/cgroup.
const maxProcCgroup = 64 << 10

// OwnGroup returns the cgroup of a process from the content of its
// /proc/<pid>/cgroup: the path in the hierarchy the service manager tracks
// processes in, which is the "name=systemd" hierarchy when there is one
// (legacy and hybrid layouts) and the unified "0::" one otherwise. The
// path is absolute ("/system.slice/cloister-daemon.service").
func OwnGroup(procCgroup []byte) (string, error) {
	if len(procCgroup) > maxProcCgroup {
		return "", fmt.Errorf("%w: /proc/self/cgroup is larger than %d bytes", ErrInvalid, maxProcCgroup)
	}
	var named, unified string
	for _, line := range bytes.Split(procCgroup, []byte{'\n'}) {
		if len(line) == 0 {
			continue
		}
		// hierarchy-ID:controller-list:cgroup-path (the path may hold ':').
		f := strings.SplitN(string(line), ":", 3)
		if len(f) != 3 {
			return "", fmt.Errorf("%w: malformed /proc/self/cgroup line %q", ErrInvalid, line)
		}
		switch {
		case f[1] == "name=systemd":
			named = f[2]
		case f[0] == "0" && f[1] == "":
			unified = f[2]
		}
	}
	p := named
	if p == "" {
		p = unified
	}
	if p == "" || !strings.HasPrefix(p, "/") || path.Clean(p) != p {
		return "", fmt.Errorf("%w: /proc/self/cgroup names no process-tracking hierarchy (name=systemd or 0::) with an absolute path", ErrUnavailable)
	}
	// A path (deleted) after removal, or a namespace root shown as "/..":
	// neither is a group one can create children in.
	if strings.HasSuffix(p, " (deleted)") || strings.HasPrefix(p, "/..") {
		return "", fmt.Errorf("%w: this process's cgroup %q is not usable", ErrUnavailable, p)
	}
	return p, nil
}

// DelegatedParent returns the parent (a [Config.Parent]: relative, the
// same in every hierarchy) for enclave groups beneath the delegated cgroup
// own of the daemon (from [OwnGroup]) on a host of layout mode, or an
// error wrapping [ErrUnavailable] saying why delegation cannot be used:
//
//   - v1 and hybrid: the hierarchies replicate the path, and a v1 group
//     may hold processes and children alike, so the enclaves go to
//     own/enclaves.
//   - v2: the daemon must run in the leaf own = D/supervisor, where D is
//     the delegated cgroup: D then distributes controllers to supervisor
//     and enclaves and holds no process, and a service manager restarting
//     the daemon puts it straight back into supervisor (systemd's
//     DelegateSubgroup=supervisor). A daemon directly in D cannot use it:
//     D would have controllers enabled while holding a process, which the
//     kernel refuses, and a restart could not place the new daemon in D.
//
// The root cgroup ("/") is never delegated.
func DelegatedParent(mode Mode, own string) (string, error) {
	if own == "/" || own == "" {
		return "", fmt.Errorf("%w: this process runs in the root cgroup, which no service manager delegated to it", ErrUnavailable)
	}
	rel := strings.TrimPrefix(own, "/")
	switch mode {
	case ModeV1, ModeHybrid:
		return path.Join(rel, EnclavesGroup), nil
	case ModeV2:
		if path.Base(rel) != SupervisorGroup || path.Dir(rel) == "." {
			return "", fmt.Errorf("%w: on cgroup v2 the daemon must run in a %q subgroup of its delegated cgroup (systemd ≥ 254: DelegateSubgroup=%s), not in %s itself", ErrUnavailable, SupervisorGroup, SupervisorGroup, own)
		}
		return path.Join(path.Dir(rel), EnclavesGroup), nil
	}
	return "", fmt.Errorf("%w: no cgroup layout", ErrUnavailable)
}
