package gamehttp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// ErrBlockedAddress: the game server's name resolved only to addresses Deliver must not reach.
var ErrBlockedAddress = errors.New("address not allowed")

// guard dials only addresses a game server may have, checked after DNS resolution so that a DNS
// answer cannot steer Deliver to the metadata server (169.254.169.254) or another internal
// address. It refuses link-local (169.254.0.0/16, fe80::/10), unspecified and multicast
// addresses always; private ranges (10/8, 172.16/12, 192.168/16, fc00::/7) unless the game
// allows them (a game server on a private network); loopback unless the game's own URL names a
// loopback host (local runs).
type guard struct {
	allowPrivate, allowLoopback bool
	lookup                      func(ctx context.Context, host string) ([]netip.Addr, error)
	dialer                      *net.Dialer
}

func newGuard(allowPrivate, allowLoopback bool) *guard {
	return &guard{
		allowPrivate: allowPrivate, allowLoopback: allowLoopback,
		lookup: func(ctx context.Context, host string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		},
		dialer: &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second},
	}
}

// check says why ip may not be dialled, or nil.
func (g *guard) check(ip netip.Addr) error {
	ip = ip.Unmap()
	switch {
	case !ip.IsValid(), ip.IsUnspecified():
		return fmt.Errorf("%w: %s is unspecified", ErrBlockedAddress, ip)
	case ip.IsLinkLocalUnicast(), ip.IsLinkLocalMulticast():
		return fmt.Errorf("%w: %s is link-local (the metadata server's range)", ErrBlockedAddress, ip)
	case ip.IsMulticast(), ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Errorf("%w: %s is not a unicast address", ErrBlockedAddress, ip)
	case ip.IsLoopback() && !g.allowLoopback:
		return fmt.Errorf("%w: %s is loopback", ErrBlockedAddress, ip)
	case ip.IsPrivate() && !g.allowPrivate:
		return fmt.Errorf("%w: %s is private and the game does not allow private addresses", ErrBlockedAddress, ip)
	}
	return nil
}

// DialContext resolves addr, drops every address the guard refuses, and dials the rest in
// turn.
func (g *guard) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	var ips []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		ips = []netip.Addr{ip}
	} else if ips, err = g.lookup(ctx, host); err != nil {
		return nil, err
	}
	var errs []error
	for _, ip := range ips {
		if err := g.check(ip); err != nil {
			errs = append(errs, err)
			continue
		}
		c, err := g.dialer.DialContext(ctx, network, net.JoinHostPort(ip.String(), port))
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return nil, &net.DNSError{Err: "no addresses", Name: host, IsNotFound: true}
	}
	return nil, &net.OpError{Op: "dial", Net: network, Err: errors.Join(errs...)}
}
