package server

import (
	"bytes"
	"fmt"
	"net/netip"
	"strings"

	"github.com/valyala/fasthttp"
)

// proxySet is --trusted-proxies: the addresses of load balancers (nginx)
// whose traffic carries many clients. A nil set trusts nobody. Read-only
// after New, so safe for concurrent use.
type proxySet struct{ prefixes []netip.Prefix }

// parseProxySet reads a comma-separated list of IP addresses and CIDR
// prefixes ("10.0.0.5, 192.168.0.0/24, ::1").
func parseProxySet(s string) (*proxySet, error) {
	var ps proxySet
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if strings.Contains(f, "/") {
			p, err := netip.ParsePrefix(f)
			if err != nil {
				return nil, fmt.Errorf("--trusted-proxies: %q is not an IP or CIDR: %w", f, err)
			}
			ps.prefixes = append(ps.prefixes, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(f)
		if err != nil {
			return nil, fmt.Errorf("--trusted-proxies: %q is not an IP or CIDR: %w", f, err)
		}
		a = a.Unmap()
		ps.prefixes = append(ps.prefixes, netip.PrefixFrom(a, a.BitLen()))
	}
	if len(ps.prefixes) == 0 {
		return nil, nil
	}
	return &ps, nil
}

// contains reports whether ip is a trusted proxy. It does not allocate.
func (ps *proxySet) contains(ip netip.Addr) bool {
	if ps == nil || !ip.IsValid() {
		return false
	}
	ip = ip.Unmap()
	for _, p := range ps.prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// httpClientIP is the address the per-source limit charges for an HTTP
// request: its peer, or, when the peer is a trusted proxy, the client the
// proxy names: the rightmost X-Forwarded-For address that is not itself a
// trusted proxy (addresses further left are whatever the client sent), else
// X-Real-IP, else the peer. From any other peer both headers are ignored,
// so a client cannot choose the address it is charged to.
func (s *Server) httpClientIP(ctx *fasthttp.RequestCtx) netip.Addr {
	peer := addrIP(ctx.RemoteAddr())
	if !s.proxies.contains(peer) {
		return peer
	}
	if xff := ctx.Request.Header.Peek("X-Forwarded-For"); len(xff) > 0 {
		rest := xff
		for len(rest) > 0 {
			i := bytes.LastIndexByte(rest, ',')
			ip, err := netip.ParseAddr(string(bytes.TrimSpace(rest[i+1:])))
			if err != nil {
				break
			}
			if ip = ip.Unmap(); !s.proxies.contains(ip) {
				return ip
			}
			if i < 0 {
				break
			}
			rest = rest[:i]
		}
	}
	if xr := ctx.Request.Header.Peek("X-Real-IP"); len(xr) > 0 {
		if ip, err := netip.ParseAddr(string(bytes.TrimSpace(xr))); err == nil {
			return ip.Unmap()
		}
	}
	return peer
}
