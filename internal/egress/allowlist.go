// Package egress is the enclave's only way to the outside network: a proxy
// in the spirit of AWS's vsock-proxy that runs on the parent, accepts
// connections the enclave opens to a parent vsock port, and forwards them to
// TCP destinations on an allowlist.
//
// Two modes share one allowlist:
//
//   - fixed: like vsock-proxy, each proxy port forwards to one remote
//     host:port, checked against the allowlist when the proxy is created
//     (Proxy.Validate) and again for every connection;
//   - connect: the enclave names its destination per connection with an
//     HTTP CONNECT request ("CONNECT host:port HTTP/1.1"), which is checked
//     against the allowlist before anything is dialled. HTTP clients that
//     support proxies (the AWS SDK, net/http) use it unchanged.
//
// The allowlist file uses vsock-proxy's YAML format:
//
//	allowlist:
//	- {address: kms.us-east-1.amazonaws.com, port: 443}
//	- {address: 127.0.0.1, port: 8443}
//
// An entry's address is a host name, an IP address or a CIDR prefix. Every
// connection resolves its destination exactly once, keeps the addresses the
// entries for its port permit, and dials only those (see
// [Allowlist.Resolve]): a name whose answer mixes listed and unlisted
// addresses, or changes between two lookups (DNS rebinding), reaches no
// address the list does not permit.
package egress

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Sentinel errors.
var (
	// ErrNotAllowed means the destination is not on the allowlist.
	ErrNotAllowed = errors.New("egress: destination not on the allowlist")
	// ErrConfig means the allowlist or a proxy definition is invalid.
	ErrConfig = errors.New("egress: invalid configuration")
	// ErrResolve means the destination's name could not be resolved.
	ErrResolve = errors.New("egress: cannot resolve the destination")
)

// Entry is one allowlisted destination: Address is a host name
// (kms.us-east-1.amazonaws.com), an IP address (127.0.0.1, ::1) or a CIDR
// prefix (10.0.0.0/8, fd00::/8); Port is the TCP port.
type Entry struct {
	Address string `yaml:"address"`
	Port    int    `yaml:"port"`
}

// Allowlist is a parsed allowlist. The zero value allows nothing.
type Allowlist struct {
	Entries []Entry
	// Resolver resolves names; nil uses net.DefaultResolver.
	Resolver interface {
		LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
	}
}

// maxAllowlistSize bounds the allowlist file read from disk.
const maxAllowlistSize = 1 << 20

// LoadAllowlist reads an allowlist file in vsock-proxy's format.
func LoadAllowlist(path string) (*Allowlist, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("egress: read allowlist: %w", err)
	}
	if len(b) > maxAllowlistSize {
		return nil, fmt.Errorf("%w: allowlist %s is larger than %d bytes", ErrConfig, path, maxAllowlistSize)
	}
	return ParseAllowlist(b)
}

// ParseAllowlist parses an allowlist document. Every entry needs a port in
// 1..65535 and an address that is a canonical IP address (a.b.c.d, or IPv6
// without a zone), a CIDR prefix without host bits, or a host name (letters,
// digits, '-', '_', dot-separated labels); unknown keys are rejected so typos
// do not silently open or close access. Refused as ambiguous: unspecified
// addresses (0.0.0.0, ::: they would mean this host) and IPv4 spelled other
// than as four decimal numbers (127.1, 2130706433, 0177.0.0.1, 0x7f.0.0.1).
func ParseAllowlist(b []byte) (*Allowlist, error) {
	var doc struct {
		Allowlist []Entry `yaml:"allowlist"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	// An empty document is an empty allowlist.
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: allowlist: %v", ErrConfig, err)
	}
	return NewAllowlist(doc.Allowlist)
}

// NewAllowlist checks entries as ParseAllowlist does and returns them as
// an allowlist.
func NewAllowlist(entries []Entry) (*Allowlist, error) {
	for i, e := range entries {
		if _, err := parseEntry(e); err != nil {
			return nil, fmt.Errorf("%w: allowlist entry %d: %v", ErrConfig, i, err)
		}
	}
	return &Allowlist{Entries: entries}, nil
}

// ParseEntry parses one entry written HOST:PORT, as in the flag or
// annotation form of an allowlist: kms.us-east-1.amazonaws.com:443,
// 10.0.0.5:5432, 10.0.0.0/8:5432, [::1]:443, [fd00::/8]:443. The address
// is checked as ParseAllowlist checks an entry's; the port is decimal,
// 1..65535.
func ParseEntry(s string) (Entry, error) {
	s = strings.TrimSpace(s)
	host, ps, err := net.SplitHostPort(s)
	if err != nil {
		return Entry{}, fmt.Errorf("%w: %q is not HOST:PORT (an IPv6 address or prefix goes in brackets, [fd00::/8]:443): %v", ErrConfig, s, err)
	}
	if host != strings.TrimSpace(host) {
		return Entry{}, fmt.Errorf("%w: %q has blank space inside", ErrConfig, s)
	}
	port, err := strconv.ParseUint(ps, 10, 16)
	if err != nil || port == 0 {
		return Entry{}, fmt.Errorf("%w: %q: port %q is not a number in 1..65535", ErrConfig, s, ps)
	}
	e := Entry{Address: host, Port: int(port)}
	if _, err := parseEntry(e); err != nil {
		return Entry{}, fmt.Errorf("%w: %q: %v", ErrConfig, s, err)
	}
	return e, nil
}

// String is the entry written HOST:PORT, as ParseEntry reads it.
func (e Entry) String() string {
	return net.JoinHostPort(strings.TrimSpace(e.Address), strconv.Itoa(e.Port))
}

// Outside returns the entries of a that are not within outer: those
// that could permit a destination outer does not. Checked without DNS, an
// entry is within outer when outer has an entry for the same port that
//
//   - names the same host (case-insensitive, ignoring a trailing dot), for
//     an entry naming a host; or, as a name may resolve to any address,
//     outer lists both 0.0.0.0/0 and ::/0 for the port;
//   - is an IP address or prefix containing the entry's address or whole
//     prefix, for an IP or prefix entry (an address that a name of outer
//     resolves to is not within it: DNS may change).
//
// A nil outer permits nothing, so every entry is outside it; an invalid
// entry is outside any list. Outside tells at launch that an entry would
// widen outer; it does not replace checking every connection against both
// lists with ResolveAll.
func (a *Allowlist) Outside(outer *Allowlist) []Entry {
	var out []Entry
	for _, e := range a.Entries {
		r, err := parseEntry(e)
		if err != nil || !outer.covers(r, e.Port) {
			out = append(out, e)
		}
	}
	return out
}

// covers reports whether the rule r of an entry for port is within a.
func (a *Allowlist) covers(r rule, port int) bool {
	if a == nil {
		return false
	}
	all4, all6 := false, false
	for _, e := range a.Entries {
		if e.Port != port {
			continue
		}
		o, err := parseEntry(e)
		if err != nil {
			continue // only reachable when Entries was built by hand
		}
		switch {
		case r.name != "" && o.name == r.name:
			return true
		case r.name == "" && o.prefix.IsValid() && o.prefix.Bits() <= r.prefix.Bits() && o.prefix.Contains(r.prefix.Addr()):
			return true
		case o.prefix.IsValid() && o.prefix.Bits() == 0:
			all4 = all4 || o.prefix.Addr().Is4()
			all6 = all6 || o.prefix.Addr().Is6()
		}
	}
	return r.name != "" && all4 && all6
}

// Resolve decides where host:port may be reached. It resolves host once (an
// IP address is taken as it is) and returns the addresses, in the resolver's
// order, that the entries for port permit. Connect to exactly these
// addresses and never look host up again: a second lookup may answer
// differently.
//
// An address of host is permitted when an entry for port
//
//   - names host (case-insensitive, ignoring a trailing dot): allowing a
//     name trusts its DNS, so every address this one lookup returned;
//   - is an IP address equal to it, or a CIDR prefix containing it: only
//     those; the other addresses of a name are dropped;
//   - names another host that resolves, now, to that address (vsock-proxy's
//     rule, so an entry's name also permits its addresses under other
//     names).
//
// IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) are compared and dialled as
// IPv4. Never permitted: unspecified addresses (0.0.0.0/8, ::), which
// connect to this host, and zoned IPv6 addresses; host must be a canonical
// IP address or a host name (IPv4 written other than as a.b.c.d, such as
// 2130706433 or 0177.0.0.1, is refused). Resolve returns an error wrapping
// ErrNotAllowed when nothing is permitted, or ErrResolve when host's lookup
// fails.
func (a *Allowlist) Resolve(ctx context.Context, host string, port int) ([]netip.Addr, error) {
	return ResolveAll(ctx, host, port, a)
}

// ResolveAll is [Allowlist.Resolve] for the intersection of lists (an
// operator's allowlist and an enclave's own, narrower one): host is looked
// up once, with the first list's resolver, and an address of that one
// answer is returned only when every list permits it by Resolve's rules.
// A list that is nil, or has no entry for port, permits nothing, and then
// host is not even looked up. With no list at all nothing is permitted.
func ResolveAll(ctx context.Context, host string, port int, lists ...*Allowlist) ([]netip.Addr, error) {
	dest := net.JoinHostPort(host, strconv.Itoa(port))
	if len(lists) == 0 || slices.Contains(lists, nil) {
		return nil, fmt.Errorf("%w: %s (no allowlist configured)", ErrNotAllowed, dest)
	}
	name, ip, err := parseHost(host)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrNotAllowed, dest, err)
	}
	var buf [2]portRules // an operator's list and an enclave's
	checks := buf[:0]
	for _, a := range lists {
		checks = append(checks, a.rulesFor(name, port))
	}
	for i := range lists {
		if !checks[i].byName && len(checks[i].rules) == 0 {
			// Not even resolved: the proxy is no DNS oracle for other ports.
			return nil, fmt.Errorf("%w: %s (no entry for port %d)", ErrNotAllowed, dest, port)
		}
	}

	addrs := []netip.Addr{ip}
	if name != "" {
		if addrs, err = lists[0].lookup(ctx, host); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrResolve, host, err)
		}
	}
	// permitted[i] says whether addrs[i] may be dialled: every list
	// narrows it in turn.
	flags := make([]bool, 2*len(addrs))
	permitted, scratch := flags[:len(addrs)], flags[len(addrs):]
	for i, ad := range addrs {
		permitted[i] = dialable(ad)
	}
	for i, a := range lists {
		a.narrow(ctx, checks[i], addrs, permitted, scratch)
	}

	var ok []netip.Addr
	for i, ad := range addrs {
		if permitted[i] {
			ok = append(ok, ad)
		}
	}
	switch {
	case len(ok) > 0:
		return ok, nil
	case name == "":
		return nil, fmt.Errorf("%w: %s", ErrNotAllowed, dest)
	default:
		return nil, fmt.Errorf("%w: %s (it resolves to %v; none is allowed on port %d)", ErrNotAllowed, dest, addrs, port)
	}
}

// portRules are the entries of one allowlist for one destination's port:
// byName when an entry names the destination itself (then every address
// of its lookup is permitted and no other entry matters), else the rules
// of the port's entries.
type portRules struct {
	byName bool
	rules  []rule
}

// rulesFor collects the entries for port, for the destination host name
// (canonical; "" for an IP address).
func (a *Allowlist) rulesFor(name string, port int) portRules {
	// An entry naming host permits all its addresses: no other entry
	// matters. name is a valid host name, so an entry equal to it is one.
	for _, e := range a.Entries {
		if e.Port == port && name != "" && strings.EqualFold(strings.TrimSuffix(strings.TrimSpace(e.Address), "."), name) {
			return portRules{byName: true}
		}
	}
	pr := portRules{rules: make([]rule, 0, len(a.Entries))}
	for _, e := range a.Entries {
		if e.Port != port {
			continue
		}
		r, err := parseEntry(e)
		if err != nil {
			continue // only reachable when Entries was built by hand
		}
		pr.rules = append(pr.rules, r)
	}
	return pr
}

// narrow clears permitted[i] for every address addrs[i] the rules pr (of
// this list) do not permit. Entry names are looked up (vsock-proxy's rule)
// only while a still-permitted address is left undecided. ok is scratch
// space of len(addrs).
func (a *Allowlist) narrow(ctx context.Context, pr portRules, addrs []netip.Addr, permitted, ok []bool) {
	if pr.byName {
		return
	}
	clear(ok)
	pending := 0
	for i, ad := range addrs {
		if !permitted[i] {
			continue
		}
		for _, r := range pr.rules {
			if r.prefix.IsValid() && r.prefix.Contains(ad) {
				ok[i] = true
				break
			}
		}
		if !ok[i] {
			pending++
		}
	}
	for _, r := range pr.rules {
		if pending == 0 {
			break
		}
		if r.name == "" {
			continue
		}
		entryAddrs, err := a.lookup(ctx, r.name)
		if err != nil {
			continue // an entry that does not resolve permits nothing
		}
		for i, ad := range addrs {
			if permitted[i] && !ok[i] && slices.Contains(entryAddrs, ad) {
				ok[i] = true
				pending--
			}
		}
	}
	for i := range permitted {
		permitted[i] = permitted[i] && ok[i]
	}
}

// lookup resolves a host name once. Addresses come back in the resolver's
// order, IPv4-mapped ones as IPv4, without duplicates or zones.
func (a *Allowlist) lookup(ctx context.Context, host string) ([]netip.Addr, error) {
	r := a.Resolver
	if r == nil {
		r = net.DefaultResolver
	}
	ips, err := r.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, err
	}
	out := make([]netip.Addr, 0, len(ips))
	for _, ip := range ips {
		ip = ip.Unmap()
		if ip.Zone() == "" && !slices.Contains(out, ip) {
			out = append(out, ip)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no addresses")
	}
	return out, nil
}

// rule is an Entry in the form Resolve checks: either a canonical host name
// or a prefix (a single address for an IP entry).
type rule struct {
	name   string
	prefix netip.Prefix
}

// parseEntry checks an entry and returns its rule.
func parseEntry(e Entry) (rule, error) {
	s := strings.TrimSpace(e.Address)
	switch {
	case s == "":
		return rule{}, errors.New("no address")
	case e.Port < 1 || e.Port > 65535:
		return rule{}, fmt.Errorf("%s has port %d; want 1..65535", s, e.Port)
	}
	if ip, ok := parseIP(s); ok {
		if ip.Zone() != "" {
			return rule{}, fmt.Errorf("%s has an IPv6 zone; list the address without it", s)
		}
		ip = ip.Unmap()
		if !dialable(ip) {
			return rule{}, fmt.Errorf("%s is an unspecified address, which would mean this host; list 127.0.0.1 or ::1", s)
		}
		return rule{prefix: netip.PrefixFrom(ip, ip.BitLen())}, nil
	}
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return rule{}, fmt.Errorf("%s is not a CIDR prefix: %v", s, err)
		}
		if p != p.Masked() {
			return rule{}, fmt.Errorf("%s has bits set past its prefix length; write %s", s, p.Masked())
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			// Addresses are compared as IPv4: so is an IPv4-mapped prefix.
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		return rule{prefix: p}, nil
	}
	name, _, err := parseHost(s)
	if err != nil {
		return rule{}, err
	}
	return rule{name: name}, nil
}

// parseHost classifies a destination host: a canonical IP address (returned
// unmapped, so ::ffff:127.0.0.1 is 127.0.0.1) or a host name (returned in
// canonical form: lower-case, no trailing dot; labels of letters, digits,
// '-' and '_', not starting or ending with '-'). Anything else is an error:
// zoned IPv6 addresses, IPv4 in a non-canonical spelling (127.1, 2130706433,
// 0177.0.0.1, 0x7f.0.0.1, 127.0.0.01; C's inet_aton and some resolvers
// accept them), and strings that are not host names.
func parseHost(host string) (name string, ip netip.Addr, err error) {
	if ip, ok := parseIP(host); ok {
		if ip.Zone() != "" {
			return "", netip.Addr{}, fmt.Errorf("%q has an IPv6 zone", host)
		}
		return "", ip.Unmap(), nil
	}
	h := strings.TrimSuffix(host, ".")
	if len(h) == 0 || len(h) > 253 {
		return "", netip.Addr{}, fmt.Errorf("%q is not a host name", host)
	}
	last := ""
	for rest := h; ; {
		label, more, found := strings.Cut(rest, ".")
		if !validLabel(label) {
			return "", netip.Addr{}, fmt.Errorf("%q is not a host name", host)
		}
		if !found {
			last = label
			break
		}
		rest = more
	}
	// A last label that is a number makes the whole an IPv4 address to
	// inet_aton-style parsers (and never a DNS name: top-level labels are
	// not numeric); only the canonical form, handled above, is accepted.
	hex, isHex := strings.CutPrefix(strings.ToLower(last), "0x")
	if isDigits(last, false) || isHex && isDigits(hex, true) {
		return "", netip.Addr{}, fmt.Errorf("%q is not a canonical IP address; write IPv4 as four decimal numbers, a.b.c.d", host)
	}
	return strings.ToLower(h), netip.Addr{}, nil
}

// parseIP parses a canonical IP address. It skips netip.ParseAddr (and its
// error allocation) for strings that are plainly names: the check runs for
// every entry on every connection.
func parseIP(s string) (netip.Addr, bool) {
	if !strings.ContainsRune(s, ':') && strings.ContainsFunc(s, func(r rune) bool { return r != '.' && (r < '0' || r > '9') }) {
		return netip.Addr{}, false
	}
	ip, err := netip.ParseAddr(s)
	return ip, err == nil
}

// validLabel reports whether l is a host name label: 1 to 63 letters,
// digits, '-' and '_', not starting or ending with '-'.
func validLabel(l string) bool {
	if len(l) == 0 || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
		return false
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func isDigits(s string, hex bool) bool {
	for _, r := range s {
		if !('0' <= r && r <= '9' || hex && 'a' <= r && r <= 'f') {
			return false
		}
	}
	return true
}

// dialable reports whether an (unmapped) address may ever be dialled: not
// 0.0.0.0/8 ("this network", where 0.0.0.0 connects to this host) nor ::,
// and without a zone.
func dialable(a netip.Addr) bool {
	if a.Is4() {
		return a.As4()[0] != 0
	}
	return a.IsValid() && !a.IsUnspecified() && a.Zone() == ""
}
