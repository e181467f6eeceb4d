// Package egress is the enclave's only way to the outside network: a proxy
// in the spirit of AWS's vsock-proxy that runs on the parent, accepts
// connections the enclave opens to a parent vsock port, and forwards them to
// TCP destinations on an allowlist.
//
// Two modes share one allowlist:
//
//   - fixed: like vsock-proxy, each proxy port forwards to one remote
//     host:port, checked against the allowlist when the proxy is created;
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
// A destination matches an entry when the ports are equal and either the
// address strings are equal (case-insensitive) or one of the IP addresses the
// entry's name resolves to equals one of the destination's resolved
// addresses — vsock-proxy's rule.
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
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Sentinel errors.
var (
	// ErrNotAllowed means the destination is not on the allowlist.
	ErrNotAllowed = errors.New("egress: destination not on the allowlist")
	// ErrConfig means the allowlist or a proxy definition is invalid.
	ErrConfig = errors.New("egress: invalid configuration")
)

// Entry is one allowlisted destination.
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

// ParseAllowlist parses an allowlist document. Every entry needs a non-empty
// address and a port in 1..65535; unknown keys are rejected so typos do not
// silently open or close access.
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
		if strings.TrimSpace(e.Address) == "" {
			return nil, fmt.Errorf("%w: allowlist entry %d has no address", ErrConfig, i)
		}
		if e.Port < 1 || e.Port > 65535 {
			return nil, fmt.Errorf("%w: allowlist entry %d (%s) has port %d; want 1..65535", ErrConfig, i, e.Address, e.Port)
		}
	}
	return &Allowlist{Entries: doc.Allowlist}, nil
}

// Check reports whether host:port may be reached. It returns nil or an
// error wrapping ErrNotAllowed that names the destination.
func (a *Allowlist) Check(ctx context.Context, host string, port int) error {
	if a == nil {
		return fmt.Errorf("%w: %s (no allowlist configured)", ErrNotAllowed, net.JoinHostPort(host, strconv.Itoa(port)))
	}
	var destIPs []netip.Addr
	resolved := false
	for _, e := range a.Entries {
		if e.Port != port {
			continue
		}
		if strings.EqualFold(e.Address, host) {
			return nil
		}
		if !resolved {
			destIPs = a.lookup(ctx, host)
			resolved = true
		}
		if len(destIPs) == 0 {
			continue
		}
		for _, ip := range a.lookup(ctx, e.Address) {
			for _, d := range destIPs {
				if ip == d {
					return nil
				}
			}
		}
	}
	return fmt.Errorf("%w: %s", ErrNotAllowed, net.JoinHostPort(host, strconv.Itoa(port)))
}

func (a *Allowlist) lookup(ctx context.Context, host string) []netip.Addr {
	if ip, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{ip.Unmap()}
	}
	r := a.Resolver
	if r == nil {
		r = net.DefaultResolver
	}
	ips, err := r.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil
	}
	for i := range ips {
		ips[i] = ips[i].Unmap()
	}
	return ips
}
