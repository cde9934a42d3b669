package dicomweb

import (
	"fmt"
	"net/netip"

	"github.com/gin-gonic/gin"

	"github.com/dicom-gateway/gateway/gateway"
)

// ParseTrustedProxies parses trusted_proxies: IP addresses and CIDRs, an
// IPv4-mapped IPv6 form taken as the IPv4 one (a peer is compared
// unmapped), no zones (a peer is compared without its own). The same list is
// handed to gin (X-Forwarded-For, the audit address) and used by
// forwardedTrusted (the public URLs), so both judge a peer alike. Every
// entry that does not parse is named in the error; the others are
// returned.
func ParseTrustedProxies(entries []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	var bad []string
	for _, e := range entries {
		p, err := netip.ParsePrefix(e)
		if err != nil {
			addr, aerr := netip.ParseAddr(e)
			if aerr != nil || addr.Zone() != "" {
				bad = append(bad, e)
				continue
			}
			p = netip.PrefixFrom(addr, addr.BitLen())
		}
		if p.Addr().Is4In6() {
			if p.Bits() < 96 {
				bad = append(bad, e) // wider than the mapped IPv4 space
				continue
			}
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		out = append(out, p.Masked())
	}
	if len(bad) > 0 {
		return out, fmt.Errorf("trusted_proxies: %q: not an IP address or CIDR (without a zone, not an IPv4-mapped range wider than /96): %w", bad, gateway.ErrInvalid)
	}
	return out, nil
}

func prefixStrings(ps []netip.Prefix) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}

// forwardedTrusted reports whether the forwarding headers of c's request
// (Forwarded, X-Forwarded-Proto, -Host, -Prefix) are believed: from any
// client when no TrustedProxies are configured (a client then only bends
// the URLs of its own answers), else only when a listed proxy sent the
// request, so that a client reaching the gateway directly cannot set the
// host that RetrieveURLs, BulkDataURIs and the own-origin check use. (A
// listed proxy that passes a client's own header on, instead of setting
// it, still lets that client choose: the leftmost value is taken.) The
// first time such headers come from a peer that is not listed the log
// says so: a proxy missing from the list would otherwise only show as
// URLs of the gateway's inner address and refused browser writes.
func (s *Server) forwardedTrusted(c *gin.Context) bool {
	if len(s.TrustedProxies) == 0 {
		return true
	}
	if addr, err := netip.ParseAddr(c.RemoteIP()); err == nil {
		addr = addr.Unmap().WithZone("")
		for _, p := range s.trustedProxies {
			if p.Contains(addr) {
				return true
			}
		}
	}
	if h := forwardingHeader(c); h != "" && !s.forwardIgnoredLogged.Swap(true) {
		s.Logger.Warn("forwarded headers from a peer not in trusted_proxies ignored (logged once): public URLs use the request's own host",
			"header", h, "peer", c.RemoteIP())
	}
	return false
}

// forwardingHeader is the first header of c's request that baseURL would
// build on, "" for none.
func forwardingHeader(c *gin.Context) string {
	for _, name := range []string{"Forwarded", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Forwarded-Prefix"} {
		if c.GetHeader(name) != "" {
			return name
		}
	}
	return ""
}
