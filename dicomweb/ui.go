package dicomweb

import (
	"embed"
	"io/fs"
	"net/http"
	"path"
	"strings"

	"github.com/gin-gonic/gin"
)

// uiFiles is the admin page: plain HTML, CSS and JavaScript with no build
// step, embedded so that the page works on closed hospital networks (no CDN,
// no external fonts).
//
//go:embed ui
var uiFiles embed.FS

// uiCSP allows the page to load only its own assets and to talk only to this
// gateway: no inline script or style, no framing.
const uiCSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// uiContentTypes names the media type of every kind of asset under ui/, so
// that the answer does not depend on the host's /etc/mime.types.
var uiContentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".svg":  "image/svg+xml",
	".png":  "image/png",
	".ico":  "image/x-icon",
}

// uiRoutes serves the admin page. The page and its assets carry no data and
// are public (publicPaths), so that the sign-in form loads without a token;
// every figure on the page comes from the authenticated APIs.
func (s *Server) uiRoutes(base string) []route {
	assets, err := fs.Sub(uiFiles, "ui")
	if err != nil {
		panic(err) // the directory is embedded at build time
	}
	return []route{
		{http.MethodGet, base, "", func(c *gin.Context) { c.Redirect(http.StatusMovedPermanently, base+"/") }},
		{http.MethodGet, base + "/*filepath", "", serveUI(assets)},
	}
}

// serveUI answers one embedded asset; "/" is index.html.
func serveUI(assets fs.FS) gin.HandlerFunc {
	return func(c *gin.Context) {
		name := strings.TrimPrefix(path.Clean("/"+c.Param("filepath")), "/")
		if name == "" {
			name = "index.html"
		}
		ctype, ok := uiContentTypes[path.Ext(name)]
		if !ok {
			c.JSON(http.StatusNotFound, gin.H{"error": "no such resource"})
			return
		}
		body, err := fs.ReadFile(assets, name)
		if err != nil {
			c.JSON(http.StatusNotFound, gin.H{"error": "no such resource"})
			return
		}
		h := c.Writer.Header()
		h.Set("Content-Security-Policy", uiCSP)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("X-Frame-Options", "DENY")
		// Revalidate every time: a new binary must not leave an old page in
		// the admin's cache.
		h.Set("Cache-Control", "no-cache")
		c.Data(http.StatusOK, ctype, body)
	}
}
