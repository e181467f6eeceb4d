package egress

import (
	"context"
	"net"
	"net/netip"
)

// NewResolver returns a resolver that sends every DNS query to the server at
// nameserver (over UDP, or TCP when the answer is truncated) instead of the
// servers listed in /etc/resolv.conf. Names in /etc/hosts still resolve from
// there first. Set it as Allowlist.Resolver.
func NewResolver(nameserver netip.AddrPort) *net.Resolver {
	addr := nameserver.String()
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}
}
