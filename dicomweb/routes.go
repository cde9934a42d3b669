package dicomweb

import (
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/dicom-gateway/gateway/gateway"
)

// route is one entry of the routing table: what a request must look like,
// the role it needs ("" only for the public operational endpoints) and who
// handles it.
type route struct {
	method  string
	path    string
	role    gateway.Role
	handler gin.HandlerFunc
}

// publicPaths may be served without credentials even when auth is on.
// The admin page's shell and static assets (/ui, /ui/*filepath) are public
// so that its sign-in form loads without a token; they hold no data, which
// always comes from the authenticated APIs. "/" only redirects to the page.
var publicPaths = map[string]bool{
	"/healthz": true, "/readyz": true,
	"/": true, "/ui": true, "/ui/*filepath": true,
}

// routes is the one table of every route the gateway serves. A test walks it
// and fails if a route other than publicPaths declares no role.
func (s *Server) routes() []route {
	const dw = "/dicomweb"
	r := []route{
		{http.MethodGet, "/healthz", "", s.handleHealthz},
		{http.MethodGet, "/readyz", "", s.handleReadyz},
		{http.MethodGet, "/metrics", gateway.RoleAdmin, s.handleMetrics},
	}
	r = append(r, s.stowRoutes(dw)...)
	r = append(r, s.qidoRoutes(dw)...)
	r = append(r, s.wadoRoutes(dw)...)
	r = append(r, s.capabilityRoutes(dw, r)...)
	r = append(r, s.transferRoutes("/api/v1")...)
	r = append(r, s.auditRoutes("/api/v1")...)
	r = append(r, s.retentionRoutes("/api/v1")...)
	r = append(r, s.uiRoutes("/ui")...)
	for _, m := range s.Mounts {
		r = append(r, route{m.Method, m.Path, m.Role, m.Handler})
	}
	// Someone typing the gateway's address into a browser lands on the
	// admin page rather than a 404. 302, not 301: a browser keeps a 301
	// forever, and the root may serve something else one day.
	r = append(r, route{http.MethodGet, "/", "", func(c *gin.Context) { c.Redirect(http.StatusFound, "/ui/") }})
	return r
}

// Mount is a route another package serves (the FHIR facade) through this
// server's table, middleware, authentication and rate limits. Role is
// required: a mount is never public.
type Mount struct {
	Method, Path string
	Role         gateway.Role
	Handler      gin.HandlerFunc
	// WriteError, when set, writes the errors this server answers for the
	// route before Handler runs (401, 403, 429, 503) in the mounted API's
	// own format, e.g. a FHIR OperationOutcome.
	WriteError func(c *gin.Context, status int, message string)
}

// mountErrorWriter is the gin context key under which a mount's
// WriteError waits for writeError.
const mountErrorWriter = "dicomweb.mountErrorWriter"

// mountErrorWriters returns, per "METHOD path" of a mount with a
// WriteError, the first handler of its chain, which hands the writer to
// writeError.
func (s *Server) mountErrorWriters() map[string]gin.HandlerFunc {
	out := map[string]gin.HandlerFunc{}
	for _, m := range s.Mounts {
		if m.WriteError != nil {
			write := m.WriteError
			out[m.Method+" "+m.Path] = func(c *gin.Context) { c.Set(mountErrorWriter, write) }
		}
	}
	return out
}

// DICOMwebURL is the DICOMweb root as the request's client reaches it
// (PublicBaseURL, else the request's scheme and host as trusted proxies
// forward them), for mounts that link to DICOMweb resources.
func (s *Server) DICOMwebURL(c *gin.Context) string { return s.baseURL(c) }
