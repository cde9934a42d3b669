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

// cors answers cross-origin requests from the origins in Server.CORSOrigins,
// so that a viewer served from another origin (OHIF) can call DICOMweb with
// its bearer token. A preflight (OPTIONS with Access-Control-Request-Method)
// is answered here with 204, before authentication: browsers never send
// credentials on a preflight. Requests from other origins get no CORS headers
// and the browser refuses them; the server itself does not.
func (s *Server) cors(c *gin.Context) {
	origin := c.GetHeader("Origin")
	if origin == "" || len(s.CORSOrigins) == 0 {
		c.Next()
		return
	}
	c.Writer.Header().Add("Vary", "Origin")
	if !s.corsAllowed(origin) {
		c.Next()
		return
	}
	h := c.Writer.Header()
	h.Set("Access-Control-Allow-Origin", origin)
	h.Set("Access-Control-Allow-Credentials", "true")
	if c.Request.Method == http.MethodOptions && c.GetHeader("Access-Control-Request-Method") != "" {
		h.Set("Access-Control-Allow-Methods", "GET, HEAD, POST, PUT, DELETE, OPTIONS")
		h.Set("Access-Control-Allow-Headers", corsAllowHeaders)
		h.Set("Access-Control-Max-Age", "600")
		c.AbortWithStatus(http.StatusNoContent)
		return
	}
	h.Set("Access-Control-Expose-Headers", corsExposeHeaders)
	c.Next()
}

// corsAllowed reports whether origin is configured (case-insensitively; "*"
// allows every origin).
func (s *Server) corsAllowed(origin string) bool {
	return slices.ContainsFunc(s.CORSOrigins, func(o string) bool {
		return o == "*" || strings.EqualFold(strings.TrimRight(o, "/"), origin)
	})
}
