package parent

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/cloister/cloister/internal/egress"
)

// String is the entry written HOST:PORT, as ParseEgressEntry reads it.
func (e EgressEntry) String() string { return net.JoinHostPort(e.Address, strconv.Itoa(e.Port)) }

// ParseEgressEntry parses one egress allowlist entry written HOST:PORT
// (kms.us-east-1.amazonaws.com:443, 10.0.0.5:5432, 10.0.0.0/8:5432,
// [fd00::/8]:443) and checks it as the daemon does. Whether the daemon's
// allowlist covers it is only known at launch.
func ParseEgressEntry(s string) (EgressEntry, error) {
	e, err := egress.ParseEntry(s)
	if err != nil {
		return EgressEntry{}, err
	}
	return EgressEntry{Address: e.Address, Port: e.Port}, nil
}

// ParseEgressPolicy parses a comma-separated list of HOST:PORT entries
// (the form of the containerd annotation cloister.dev/egress-allow and of
// run-enclave --egress-allow) into an enclave's own egress allowlist.
// Blank space around entries is ignored; an empty or blank s is an empty
// allowlist, which allows no destination. At most MaxEgressEntries.
func ParseEgressPolicy(s string) (*EgressPolicy, error) {
	p := &EgressPolicy{Allowlist: []EgressEntry{}}
	if strings.TrimSpace(s) == "" {
		return p, nil
	}
	for part := range strings.SplitSeq(s, ",") {
		if len(p.Allowlist) == MaxEgressEntries {
			return nil, fmt.Errorf("parent: egress allowlist: more than %d entries", MaxEgressEntries)
		}
		e, err := ParseEgressEntry(part)
		if err != nil {
			return nil, err
		}
		p.Allowlist = append(p.Allowlist, e)
	}
	return p, nil
}
