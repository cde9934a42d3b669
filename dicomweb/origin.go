package dicomweb

import (
	"errors"
	"fmt"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/dicom-gateway/gateway/gateway"
)

// Browsers as attackers. A web page the user opens can make the browser send
// requests to the gateway: cross-site (a form or fetch to
// http://127.0.0.1:8080) or, after DNS rebinding, as if same-site (the page's
// own host name now resolves to 127.0.0.1, so the browser sends it in Host).
// Without auth every local request has all roles, so three checks stand
// between such a page and the gateway:
//   - loopbackHostOnly: without auth, only loopback Host values are served,
//     which defeats DNS rebinding (the page's Host is its own name), and
//     no request a proxy relayed (the proxy's clients are not local);
//   - crossOriginGuard: in every mode, a request with side effects whose
//     Origin is neither the gateway's own nor one of --cors-origins is
//     refused, which defeats cross-site forms and fetches;
//   - requireJSON: a body sent to the admin API must be application/json,
//     which a cross-site page cannot send without a CORS preflight.

// errMisdirected is a request for a host this gateway does not serve
// (421, errors.go).
var errMisdirected = errors.New("misdirected request")

// loopbackHostOnly answers 421 to a request whose Host is not a loopback
// name or address when no auth is configured. With auth, Host is not
// checked: the gateway may be reached under any name, and a rebound page has
// no credentials.
//
// Without auth it also answers 403 to a request a proxy relayed (it carries
// Forwarded, X-Forwarded-For or another header of relaying): every request
// then acts as the local admin, which is safe only for clients on this
// machine, and a reverse proxy on the same host would hand that to anyone
// who reaches the proxy. Health checks are exempt, as they are from auth.
func (s *Server) loopbackHostOnly(c *gin.Context) {
	if s.Auth != nil {
		c.Next()
		return
	}
	if !loopbackHost(c.Request.Host) {
		s.writeError(c, fmt.Errorf("host %q: without auth the gateway answers only to localhost, 127.0.0.1 or [::1]: %w",
			truncate(c.Request.Host, 100), errMisdirected))
		return
	}
	if h := relayHeader(c.Request.Header); h != "" && !healthPath(c.Request.URL.Path) {
		s.writeError(c, fmt.Errorf("a request relayed by a proxy (%s): without auth the gateway serves only clients on this machine, each of which acts as its admin; configure auth to serve through a proxy: %w",
			h, gateway.ErrForbidden))
		return
	}
	c.Next()
}

// relayHeaders are the headers by which a proxy marks a request it relays.
var relayHeaders = []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Real-Ip", "Via"}

// relayHeader returns the first relaying header h holds, "" for none.
func relayHeader(h http.Header) string {
	for _, name := range relayHeaders {
		if _, ok := h[name]; ok {
			return name
		}
	}
	return ""
}

// healthPath reports whether path is a health check (/healthz, /readyz),
// served without auth in every mode.
func healthPath(path string) bool { return path == "/healthz" || path == "/readyz" }

// loopbackHost reports whether a Host header names the local machine:
// localhost, 127.0.0.0/8 or ::1, with any port. An empty Host (HTTP/1.0) is
// accepted: browsers always send one.
func loopbackHost(hostport string) bool {
	if hostport == "" {
		return true
	}
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.Trim(host, "[]"), ".")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

// crossOriginGuard answers 403 to a request with side effects (any method
// but GET, HEAD and OPTIONS) that carries an Origin header naming another
// site than this gateway and not listed in --cors-origins ("*" does not
// count: it grants reading only; a listed origin counts for DICOMweb only,
// never the admin API). Clients that are not browsers send no Origin and
// are not affected. It also answers 403 to a read a browser marks
// cross-site (Sec-Fetch-Site) from a page no CORS rule admits, such as an
// <img> of another site pointing at a study: the read would be served and
// audited as the user's (the local admin without auth) although the user
// never asked for it.
func (s *Server) crossOriginGuard(c *gin.Context) {
	origin := c.GetHeader("Origin")
	switch c.Request.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		if c.Request.Method == http.MethodOptions || c.GetHeader("Sec-Fetch-Site") != "cross-site" || s.crossSiteReadAllowed(c, origin) {
			c.Next()
			return
		}
		s.writeError(c, fmt.Errorf("cross-site %s refused: a viewer of another origin must be listed in --cors-origins: %w",
			c.Request.Method, gateway.ErrForbidden))
		return
	}
	if origin == "" || s.ownOrigin(c, origin) || (s.corsListed(origin) && dicomwebPath(c.Request.URL.Path)) {
		c.Next()
		return
	}
	c.Header("Connection", "close") // the body stays unread (writeError stops reading it)
	s.writeError(c, fmt.Errorf("cross-origin %s from %q refused: add the origin to --cors-origins if it is a trusted viewer: %w",
		c.Request.Method, truncate(origin, 100), gateway.ErrForbidden))
}

// crossSiteReadAllowed reports whether a read the browser marks cross-site
// may be served: a navigation to the admin page (a link to it from another
// site), or a read of DICOMweb from a page of an origin --cors-origins
// admits (its Origin, or for an <img> or a link its Referer).
func (s *Server) crossSiteReadAllowed(c *gin.Context, origin string) bool {
	path := c.Request.URL.Path
	if !dicomwebPath(path) && !strings.HasPrefix(path, "/api/") && !strings.HasPrefix(path, "/fhir") {
		return true // the page, health checks and metrics: no patient data
	}
	if origin == "" {
		// An <img>, <video> or link sends no Origin: a listed viewer's
		// page is known by its Referer (sent cross-site by default).
		if ref, err := url.Parse(c.GetHeader("Referer")); err == nil && ref.Scheme != "" && ref.Host != "" {
			origin = ref.Scheme + "://" + ref.Host
		}
	}
	return origin != "" && dicomwebPath(path) && (s.corsListed(origin) || (s.Auth != nil && slices.Contains(s.CORSOrigins, "*")))
}

// ownOrigin reports whether origin is this gateway as the browser reached
// it: the host and port of the request's Host, of X-Forwarded-Host (a
// browser page cannot set it cross-site without a preflight) or of
// --public-base-url. The scheme is not compared: behind a proxy that
// terminates TLS the gateway cannot know it, and one host and port serve one
// scheme. "null" (a sandboxed or file: page) is never own.
func (s *Server) ownOrigin(c *gin.Context, origin string) bool {
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return false
	}
	want := authority(u.Scheme, u.Host)
	candidates := []string{c.Request.Host}
	if b, err := url.Parse(s.baseURL(c)); err == nil {
		candidates = append(candidates, authority(b.Scheme, b.Host))
	}
	for _, h := range candidates {
		if h != "" && (authority("http", h) == want || authority("https", h) == want) {
			return true
		}
	}
	return false
}

// authority is host[:port] in lower case without the scheme's default port.
func authority(scheme, hostport string) string {
	hostport = strings.ToLower(hostport)
	if scheme == "http" {
		return strings.TrimSuffix(hostport, ":80")
	}
	return strings.TrimSuffix(hostport, ":443")
}

// requireJSON answers 415 to an admin API POST whose body is not
// application/json. A POST without a body and without Content-Type (cancel,
// retry from curl) is let through: it carries nothing a form could forge,
// and a cross-site one is stopped by crossOriginGuard.
func (s *Server) requireJSON(c *gin.Context) {
	ct := c.GetHeader("Content-Type")
	if ct == "" && c.Request.ContentLength == 0 {
		c.Next()
		return
	}
	if mt, _, err := mime.ParseMediaType(ct); err == nil && mt == "application/json" {
		c.Next()
		return
	}
	c.Header("Connection", "close") // the body stays unread (writeError stops reading it)
	s.writeError(c, fmt.Errorf("Content-Type %q: the admin API takes application/json: %w", truncate(ct, 100), errUnsupportedMediaType))
}

// ValidateCORSOrigins checks --cors-origins: each entry is "*" or an origin,
// scheme://host[:port] with http or https and nothing after it.
func ValidateCORSOrigins(origins []string) error {
	var errs []error
	for _, o := range origins {
		if o == "*" {
			continue
		}
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil ||
			(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
			errs = append(errs, fmt.Errorf("--cors-origins: %q is not an origin such as https://viewer.example.nhs.uk", o))
		}
	}
	return errors.Join(errs...)
}
