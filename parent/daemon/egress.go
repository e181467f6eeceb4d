package daemon

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/cloister/cloister/internal/egress"
	"github.com/cloister/cloister/parent"
)

// An enclave's egress goes through its monitor's proxies, which check each
// destination against the daemon's allowlist (egress.allowlist) and, when
// the enclave was launched with one, against its own allowlist too: the
// intersection, with the destination resolved once (egress.ResolveAll).
// At launch the daemon refuses an own allowlist with an entry the daemon's
// does not cover, so that a launcher learns at once that an entry could
// never be used and cannot believe it widened the operator's policy.

// egressAllowlist loads the daemon's egress allowlist, resolving names
// with the configured nameserver. It returns nil (nothing is allowed)
// when none is configured.
func (c Config) egressAllowlist() (*egress.Allowlist, error) {
	if c.Egress.Allowlist == "" {
		return nil, nil
	}
	al, err := egress.LoadAllowlist(c.Egress.Allowlist)
	if err != nil {
		return nil, err
	}
	if err := c.setResolver(al); err != nil {
		return nil, err
	}
	return al, nil
}

// setResolver makes al resolve names with the configured nameserver (the
// host's resolver when none is).
func (c Config) setResolver(al *egress.Allowlist) error {
	if ns := c.Egress.Nameserver; ns != "" {
		ap, err := netip.ParseAddrPort(ns)
		if err != nil {
			return fmt.Errorf("egress nameserver %q: %w", ns, err)
		}
		al.Resolver = egress.NewResolver(ap)
	}
	return nil
}

// enclaveAllowlist is an enclave's own egress allowlist p as its proxies
// check it, names resolved as the daemon's are; nil when p is nil (the
// daemon's allowlist alone applies).
func (c Config) enclaveAllowlist(p *parent.EgressPolicy) (*egress.Allowlist, error) {
	if p == nil {
		return nil, nil
	}
	if len(p.Allowlist) > parent.MaxEgressEntries {
		return nil, fmt.Errorf("%w: %d entries; at most %d", egress.ErrConfig, len(p.Allowlist), parent.MaxEgressEntries)
	}
	al, err := egress.NewAllowlist(egressEntries(p))
	if err != nil {
		return nil, err
	}
	if err := c.setResolver(al); err != nil {
		return nil, err
	}
	return al, nil
}

// checkEgress checks an enclave's own egress allowlist at launch: every
// entry valid, and within the daemon's allowlist (egress.Allowlist.Outside).
func (d *Daemon) checkEgress(p *parent.EgressPolicy) error {
	if p == nil {
		return nil
	}
	own, err := d.cfg.enclaveAllowlist(p)
	if err != nil {
		return newErr("E03", parent.ErrInvalidArgument, "the enclave's egress allowlist is invalid: %v", err)
	}
	outer, err := d.cfg.egressAllowlist()
	if err != nil {
		return newErr("", parent.ErrInternal, "daemon: the daemon's egress allowlist %s: %v; fix egress.allowlist in the daemon's configuration", d.cfg.Egress.Allowlist, err)
	}
	outside := own.Outside(outer)
	if len(outside) == 0 {
		return nil
	}
	names := make([]string, len(outside))
	for i, e := range outside {
		names[i] = e.String()
	}
	what := "egress allowlist entry " + names[0] + " is"
	if len(names) > 1 {
		what = "egress allowlist entries " + strings.Join(names, ", ") + " are"
	}
	// The message names the refused entries only: neither the daemon's
	// entries nor its file's path reach whoever launched the enclave (a
	// pod's owner reads it in the container's status).
	if outer == nil {
		return newErr("E03", parent.ErrInvalidArgument,
			"%s not within the daemon's egress allowlist: the daemon has none (egress.allowlist in its configuration), so it allows no destination and an enclave's own allowlist can hold no entry", what)
	}
	return newErr("E03", parent.ErrInvalidArgument,
		"%s not within the daemon's egress allowlist: an enclave's own allowlist can only narrow it; "+
			"list a host name the daemon lists, or an address or prefix inside one of its addresses or prefixes, for the same port",
		what)
}
