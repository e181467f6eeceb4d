package daemon

import (
	"strings"
	"testing"
)

func TestConfigCgroupParentAndMetricsAddr(t *testing.T) {
	for _, tc := range []struct {
		yaml, err string
	}{
		{"cgroup_parent: auto\n", ""},
		{"cgroup_parent: cloister\n", ""},
		{"cgroup_parent: system.slice/x.service/enclaves\n", ""},
		{"cgroup_parent: /abs\n", "cgroup_parent"},
		{"cgroup_parent: a/../../b\n", "cgroup_parent"},
		{"cgroup_parent: ../x\n", "cgroup_parent"},
		{"metrics_addr: 127.0.0.1:9464\n", ""},
		{"metrics_addr: 9464\n", "metrics_addr"},
	} {
		_, err := ParseConfig([]byte(tc.yaml))
		if (tc.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("ParseConfig(%q) = %v, want error containing %q", tc.yaml, err, tc.err)
		}
	}
}

func TestResolveCgroupParentLeavesOtherValues(t *testing.T) {
	for _, p := range []string{"", "cloister", "a/b"} {
		if got := ResolveCgroupParent(Config{CgroupParent: p}, nil).CgroupParent; got != p {
			t.Errorf("ResolveCgroupParent(%q) = %q", p, got)
		}
	}
	// "auto" always resolves to something concrete (delegated or the default).
	if got := ResolveCgroupParent(Config{CgroupParent: CgroupParentAuto}, nil).CgroupParent; got == CgroupParentAuto {
		t.Error("auto was not resolved")
	}
}
