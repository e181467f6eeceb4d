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
	for i, e := range doc.Allowlist {
		if _, err := parseEntry(e); err != nil {
			return nil, fmt.Errorf("%w: allowlist entry %d: %v", ErrConfig, i, err)
		}
	}
	return &Allowlist{Entries: doc.Allowlist}, nil
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
	dest := net.JoinHostPort(host, strconv.Itoa(port))
	if a == nil {
		return nil, fmt.Errorf("%w: %s (no allowlist configured)", ErrNotAllowed, dest)
	}
	name, ip, err := parseHost(host)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrNotAllowed, dest, err)
	}
	// An entry naming host permits all its addresses: no other entry
	// matters. name is a valid host name, so an entry equal to it is one.
	byName := false
	for _, e := range a.Entries {
		if e.Port == port && name != "" && strings.EqualFold(strings.TrimSuffix(strings.TrimSpace(e.Address), "."), name) {
			byName = true
			break
		}
	}
	var rules []rule
	if !byName {
		rules = make([]rule, 0, len(a.Entries))
	}
	for _, e := range a.Entries {
		if byName || e.Port != port {
			continue
		}
		r, err := parseEntry(e)
		if err != nil {
			continue // only reachable when Entries was built by hand
		}
		rules = append(rules, r)
	}
	if !byName && len(rules) == 0 {
		// Not even resolved: the proxy is no DNS oracle for other ports.
		return nil, fmt.Errorf("%w: %s (no entry for port %d)", ErrNotAllowed, dest, port)
	}

	addrs := []netip.Addr{ip}
	if name != "" {
		if addrs, err = a.lookup(ctx, host); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrResolve, host, err)
		}
	}
	// permitted[i] says whether addrs[i] may be dialled; pending counts the
	// dialable addresses no entry has permitted yet.
	permitted := make([]bool, len(addrs))
	pending := 0
	for i, ad := range addrs {
		if !dialable(ad) {
			continue
		}
		permitted[i] = byName
		for _, r := range rules {
			if r.prefix.IsValid() && r.prefix.Contains(ad) {
				permitted[i] = true
				break
			}
		}
		if !permitted[i] {
			pending++
		}
	}
	for _, r := range rules {
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
			if !permitted[i] && dialable(ad) && slices.Contains(entryAddrs, ad) {
				permitted[i] = true
				pending--
			}
		}
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
