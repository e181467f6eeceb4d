package daemon

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"strings"

	"github.com/cloister/cloister/internal/cgroups"
)

// CgroupParentAuto is the cgroup_parent value that places enclave groups
// beneath the daemon's delegated cgroup when there is one.
const CgroupParentAuto = "auto"

func validCgroupParent(p string) error {
	if p == "" || p == CgroupParentAuto {
		return nil
	}
	if strings.HasPrefix(p, "/") || path.Clean(p) != p || p == ".." || strings.HasPrefix(p, "../") || strings.ContainsRune(p, 0) {
		return fmt.Errorf("cgroup_parent %q is neither %q nor a clean relative cgroup path such as cloister", p, CgroupParentAuto)
	}
	return nil
}

// procSelfCgroup names this process's cgroups.
const procSelfCgroup = "/proc/self/cgroup"

// ResolveCgroupParent returns cfg with cgroup_parent "auto" replaced by a
// concrete parent, and logs the choice: beneath the cgroup a service
// manager delegated to this process (systemd's Delegate=yes, see
// [cgroups.DelegatedParent]) as <delegated>/enclaves, with this process in
// <delegated>/supervisor on cgroup v2; otherwise the default "cloister",
// with the reason. Call it before creating the backend, which takes the
// parent from the configuration; other values are returned unchanged.
func ResolveCgroupParent(cfg Config, logger *slog.Logger) Config {
	if cfg.CgroupParent != CgroupParentAuto {
		return cfg
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	parent, why := delegatedParent("/sys/fs/cgroup")
	if why != nil {
		logger.Info("enclave cgroups go under the default parent: no delegated cgroup to use", "cgroup_parent", "cloister", "why", why.Error())
		cfg.CgroupParent = ""
		return cfg
	}
	logger.Info("enclave cgroups go beneath the daemon's delegated cgroup", "cgroup_parent", parent)
	cfg.CgroupParent = parent
	return cfg
}

func delegatedParent(root string) (string, error) {
	mode, err := cgroups.DetectMode(root)
	if err != nil {
		return "", err
	}
	f, err := os.Open(procSelfCgroup)
	if err != nil {
		return "", fmt.Errorf("daemon: read own cgroup: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return "", fmt.Errorf("daemon: read own cgroup: %w", err)
	}
	own, err := cgroups.OwnGroup(b)
	if err != nil {
		return "", err
	}
	return cgroups.DelegatedParent(mode, own)
}
