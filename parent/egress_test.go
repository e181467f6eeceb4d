package parent

import (
	"strings"
	"testing"
)

func FuzzParseEgressPolicy(f *testing.F) {
	for _, s := range []string{"kms.us-east-1.amazonaws.com:443,10.0.0.5:5432", "", " ", "[fd00::/8]:443", "a:1,,b:2", "0.0.0.0:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseEgressPolicy(s)
		if err != nil {
			if p != nil {
				t.Fatalf("ParseEgressPolicy(%q) returned %+v with error %v", s, p, err)
			}
			return
		}
		if p.Allowlist == nil || len(p.Allowlist) > MaxEgressEntries {
			t.Fatalf("ParseEgressPolicy(%q) = %+v", s, p)
		}
		if strings.TrimSpace(s) == "" && len(p.Allowlist) != 0 {
			t.Fatalf("ParseEgressPolicy(%q) = %+v, want no entry", s, p)
		}
		for _, e := range p.Allowlist {
			if again, err := ParseEgressEntry(e.String()); err != nil || again != e {
				t.Fatalf("entry %+v of %q: ParseEgressEntry(%q) = %+v, %v", e, s, e.String(), again, err)
			}
		}
	})
}
