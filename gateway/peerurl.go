package gateway

import (
	"fmt"
	"net/netip"
	"net/url"
	"strings"
)

// RedactURL returns s for logs, errors and the admin API: a password in its
// userinfo is replaced by "xxxxx" (url.URL.Redacted). A string that does not
// parse as a URL is not shown at all, since it may hold a secret nobody can
// find in it.
func RedactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparseable URL)"
	}
	return u.Redacted()
}

// checkPeerURL refuses what a peer URL must not be: userinfo (a password in
// a URL ends up in logs, API answers and shell history; the username,
// password and token fields are Secrets that never print), and plain http
// to anything but loopback unless the peer says allow_insecure.
func (p Peer) checkPeerURL(key, raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("peer %s: %s %q is not an http(s) URL", p.Name, key, RedactURL(raw))
	}
	if u.User != nil {
		return fmt.Errorf("peer %s: %s %s carries credentials: remove them from the URL and use username/password or token", p.Name, key, RedactURL(raw))
	}
	if u.Scheme == "http" && !isLoopbackHost(u.Hostname()) && !p.AllowInsecure {
		return fmt.Errorf("peer %s: %s %s is plain http to a host that is not loopback: use https (tls.ca_file for a private CA), or set allow_insecure: true on the peer if the network between the centres is protected otherwise", p.Name, key, RedactURL(raw))
	}
	return nil
}

// Insecure says why traffic to p could be read or altered on the network:
// plain http (to anything but loopback) or a TLS certificate that is not
// verified. "" when neither. The gateway logs it as a warning at start-up.
func (p Peer) Insecure() string {
	var why []string
	for _, raw := range []string{p.URL, p.AdminURL} {
		if u, err := url.Parse(raw); err == nil && u.Scheme == "http" && !isLoopbackHost(u.Hostname()) {
			why = append(why, "plain http to "+u.Host)
		}
	}
	if p.TLS.InsecureSkipVerify {
		why = append(why, "tls.insecure_skip_verify: the peer's certificate is not verified, anyone on the path can impersonate it")
	}
	return strings.Join(why, "; ")
}

// isLoopbackHost reports whether host (no port) names this machine only.
func isLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}
