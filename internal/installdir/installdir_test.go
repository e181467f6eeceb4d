package installdir

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestCandidates(t *testing.T) {
	for _, tc := range []struct {
		exe  string
		want []string
	}{
		{"/usr/bin/cloister", []string{"/usr/bin/cloister-init", "/usr/lib/cloister/cloister-init"}},
		{"/usr/local/bin/cloister", []string{"/usr/local/bin/cloister-init", "/usr/local/lib/cloister/cloister-init"}},
		{"/tmp/build/cloister", []string{"/tmp/build/cloister-init", "/tmp/lib/cloister/cloister-init"}},
	} {
		if d := cmp.Diff(tc.want, Candidates(tc.exe, "cloister-init")); d != "" {
			t.Errorf("Candidates(%q) (-want +got):\n%s", tc.exe, d)
		}
	}
}
