package dicomweb

import (
	"net/http"
	"slices"
	"strings"

	"github.com/gin-gonic/gin"
)

// corsAllowHeaders are the request headers a viewer page may send: the
// bearer token, content negotiation, conditional requests and STOW bodies.
const corsAllowHeaders = "Authorization, Accept, Accept-Encoding, Content-Type, If-None-Match, X-Request-ID"

// corsExposeHeaders are the response headers a viewer page may read.
const corsExposeHeaders = "ETag, Content-Type, Content-Length, Content-Location, Content-Encoding, Location, Warning, Retry-After, X-Request-ID"

// cors answers cross-origin requests to DICOMweb (/dicomweb) from the
// origins in Server.CORSOrigins, so that a viewer served from another origin
// (OHIF) can call DICOMweb with its bearer token:
//   - an origin listed by name may use every DICOMweb method, with
//     credentials (its origin is echoed and Access-Control-Allow-Credentials
//     is true);
//   - "*" lets any other origin read (GET, HEAD) without credentials: the
//     answer is "Access-Control-Allow-Origin: *", never the echoed origin
//     with credentials, which would hand every site the user's session.
//     Only with auth configured: without it every loopback request acts as
//     the local admin, so "*" would let any web page the user opens read
//     every study (the configuration refuses it; this holds if it got
//     here anyway).
//
// A preflight (OPTIONS with Access-Control-Request-Method) is answered here
// with 204, before authentication: browsers never send credentials on a
// preflight. The admin API and page get no CORS headers: only same-origin
// pages use them. Requests from other origins get no CORS headers and the
// browser refuses them; crossOriginGuard (origin.go) refuses their side
// effects on the server too.
func (s *Server) cors(c *gin.Context) {
	origin := c.GetHeader("Origin")
	path := c.Request.URL.Path
	if origin == "" || len(s.CORSOrigins) == 0 || !dicomwebPath(path) {
		c.Next()
		return
	}
	h := c.Writer.Header()
	h.Add("Vary", "Origin")
	preflight := c.Request.Method == http.MethodOptions && c.GetHeader("Access-Control-Request-Method") != ""
	method := c.Request.Method
	if preflight {
		method = c.GetHeader("Access-Control-Request-Method")
	}
	switch {
	case s.corsListed(origin):
		h.Set("Access-Control-Allow-Origin", origin)
		h.Set("Access-Control-Allow-Credentials", "true")
		h.Set("Access-Control-Allow-Methods", "GET, HEAD, POST, DELETE, OPTIONS")
	case s.Auth != nil && slices.Contains(s.CORSOrigins, "*") && (method == http.MethodGet || method == http.MethodHead):
		h.Set("Access-Control-Allow-Origin", "*")
		h.Set("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
	default:
		c.Next()
		return
	}
	if preflight {
		h.Set("Access-Control-Allow-Headers", corsAllowHeaders)
		h.Set("Access-Control-Max-Age", "600")
		c.AbortWithStatus(http.StatusNoContent)
		return
	}
	h.Del("Access-Control-Allow-Methods")
	h.Set("Access-Control-Expose-Headers", corsExposeHeaders)
	c.Next()
}

// dicomwebPath reports whether path is under /dicomweb, the only part of
// the gateway other origins (viewers) are let into.
func dicomwebPath(path string) bool {
	return path == "/dicomweb" || strings.HasPrefix(path, "/dicomweb/")
}

// corsListed reports whether origin is named in Server.CORSOrigins
// (case-insensitively, ignoring a trailing slash). "*" names no origin.
func (s *Server) corsListed(origin string) bool {
	return slices.ContainsFunc(s.CORSOrigins, func(o string) bool {
		return o != "*" && strings.EqualFold(strings.TrimRight(o, "/"), origin)
	})
}
