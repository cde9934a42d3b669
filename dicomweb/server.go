package dicomweb

import (
	"context"
	"log/slog"
	"net/http"
	"net/netip"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/dicom-gateway/gateway/gateway"
)

// Limits bound what one request may send. The bound on one instance is the
// Ingester's MaxInstanceBytes, which every path that stores applies.
type Limits struct {
	MaxRequestBytes int64 // whole STOW body; 0 = unlimited
	// MaxParts bounds the parts (instances) of one STOW-RS request; 0 means
	// DefaultMaxStowParts. Each part costs a FailedSOPSequence or
	// ReferencedSOPSequence item held until the answer, so a body of empty
	// parts must not be able to cost without bound.
	MaxParts int
}

// DefaultMaxStowParts is well above what real senders put in one request
// (a 3,000-slice CT; this gateway's own client sends 1,000 at most).
const DefaultMaxStowParts = 10_000

func (l Limits) maxParts() int {
	if l.MaxParts <= 0 {
		return DefaultMaxStowParts
	}
	return l.MaxParts
}

// Config is what the HTTP layer is built from: the use cases it serves and
// how it serves them. Zero fields take defaults.
type Config struct {
	// Services are the gateway's use cases (gateway.NewServices), built
	// once and shared with the other front ends; nil serves none of them
	// (every DICOMweb and admin route answers 503), for tests of the HTTP
	// layer alone.
	Services *gateway.Services

	// Auth authenticates requests; nil means no auth (loopback only), every
	// request acting as the local principal with all roles.
	Auth *Authenticator
	// RateLimit limits requests per client on every route that needs a role;
	// nil limits failed authentications only, as NewRateLimiter of a zero
	// RateLimitConfig does.
	RateLimit *RateLimiter
	// Ready lists the backends /readyz pings, by name.
	Ready map[string]gateway.Pinger
	// PublicBaseURL, when set (e.g. https://pacs.example.nhs.uk), is the base
	// of every RetrieveURL and BulkDataURI instead of the request's host.
	PublicBaseURL string
	// TrustedProxies are the reverse proxies (addresses or CIDRs) whose
	// X-Forwarded-For gives the client address (audit actor address); nil
	// trusts none. When set, the forwarded scheme, host and prefix that
	// public URLs are built from (baseURL) are believed only from them.
	TrustedProxies []string
	Limits         Limits
	// MaxConcurrentStow and MaxConcurrentRetrieve bound the STOW-RS and
	// WADO-RS requests served at once; beyond them a request is answered
	// 503 with Retry-After at once (backpressure.go). 0 = no bound.
	MaxConcurrentStow     int
	MaxConcurrentRetrieve int
	Logger                *slog.Logger
	Registerer            prometheus.Registerer
	Gatherer              prometheus.Gatherer

	// CORSOrigins lists the origins (e.g. https://viewer.example.nhs.uk) whose
	// browser pages may call DICOMweb, such as an OHIF viewer served
	// elsewhere (cors.go). "*" lets any origin read (GET, HEAD) without
	// credentials. Empty: no CORS headers, same-origin only.
	CORSOrigins []string
	// Timeouts bound slow and stalled clients; zero fields take defaults
	// (conn_limits.go).
	Timeouts Timeouts
	// MaxConnections caps the client connections LimitListener lets in at
	// once; 0 = no cap.
	MaxConnections int
	// Mounts are routes other packages serve (the FHIR facade at /fhir).
	Mounts []Mount
}

// serverConfig is Config embedded in Server under a name other packages
// cannot set: a Server is built by New.
type serverConfig = Config

// Server serves the gateway's HTTP surface: parse a request, call one use
// case of Services, encode the answer. Build it with New, then call Handler
// once.
type Server struct {
	serverConfig
	svc *gateway.Services

	metrics *httpMetrics
	// trustedProxies are TrustedProxies parsed (forwardedTrusted), and what
	// gin is given, so that both judge a peer alike.
	trustedProxies []netip.Prefix
	// forwardIgnoredLogged: the warning that forwarded headers from a peer
	// not listed were ignored has been logged (once per process).
	forwardIgnoredLogged atomic.Bool
}

// New returns the server for cfg: the one constructor the gateway's serve
// command and every test use.
func New(cfg Config) *Server {
	s := &Server{serverConfig: cfg, svc: cfg.Services}
	if s.svc == nil {
		s.svc = gateway.NewServices(gateway.ServiceDeps{Logger: cfg.Logger})
	}
	s.defaults()
	return s
}

// Handler builds the gin engine with every route of routes().
func (s *Server) Handler() http.Handler {
	s.metrics = newHTTPMetrics(s.Registerer)
	r := gin.New()
	r.ContextWithFallback = true
	if err := r.SetTrustedProxies(prefixStrings(s.trustedProxies)); err != nil {
		s.Logger.Error("trusted_proxies ignored", gateway.LogKeyError, err.Error())
		_ = r.SetTrustedProxies(nil)
	}
	stow := map[string]bool{}
	for _, rt := range s.stowRoutes("/dicomweb") {
		stow[rt.method+" "+rt.path] = true
	}
	r.Use(s.deadlines(stow), s.requestID, s.recoverPanic, s.observe, s.loopbackHostOnly, s.cors, s.crossOriginGuard)
	r.HandleMethodNotAllowed = true
	limits := s.concurrencyLimits("/dicomweb")
	mountErrors := s.mountErrorWriters()
	for _, rt := range s.routes() {
		handlers := []gin.HandlerFunc{}
		if h := mountErrors[rt.method+" "+rt.path]; h != nil {
			handlers = append(handlers, h)
		}
		if rt.role != "" {
			handlers = append(handlers, s.authorize(rt.role))
		}
		if rt.method == http.MethodPost && strings.HasPrefix(rt.path, "/api/") {
			handlers = append(handlers, s.requireJSON)
		}
		if lim := limits[rt.method+" "+rt.path]; lim != nil {
			handlers = append(handlers, lim)
		}
		handlers = append(handlers, rt.handler)
		r.Handle(rt.method, rt.path, handlers...)
	}
	r.NoRoute(func(c *gin.Context) { c.JSON(http.StatusNotFound, gin.H{"error": "no such resource"}) })
	return r
}

// defaults fills the optional fields Handler and LimitListener need.
func (s *Server) defaults() {
	if s.Logger == nil {
		s.Logger = slog.New(slog.DiscardHandler)
	}
	if s.Registerer == nil {
		reg := prometheus.NewRegistry()
		s.Registerer, s.Gatherer = reg, reg
	}
	if s.RateLimit == nil {
		s.RateLimit, _ = NewRateLimiter(RateLimitConfig{}) // a zero config is valid
	}
	// Entries that do not parse are dropped here and trust nothing;
	// gateway serve refuses them at start-up (ParseTrustedProxies).
	s.trustedProxies, _ = ParseTrustedProxies(s.TrustedProxies)
}

func (s *Server) handleHealthz(c *gin.Context) {
	c.JSON(http.StatusOK, gin.H{"status": "ok", "name": s.svc.Name})
}

// handleReadyz pings every backend with a short deadline and names the ones
// that fail. The backends' error texts (addresses, paths, driver messages)
// go to the log and to admins only: an anonymous caller, such as a load
// balancer, learns "ready" or "not ready" and which component fails. A
// caller that sends an Authorization header is authenticated as on any route (failures
// counted and audited), and sees the errors when it has role admin; without
// auth every (loopback) caller is the local admin.
func (s *Server) handleReadyz(c *gin.Context) {
	admin := s.Auth == nil
	if s.Auth != nil && hasCredentials(c.Request) {
		p, ok := s.authenticate(c)
		if !ok {
			return
		}
		admin = p.Has(gateway.RoleAdmin)
	}
	ctx, cancel := context.WithTimeout(c.Request.Context(), 2*time.Second)
	defer cancel()
	names := make([]string, 0, len(s.Ready))
	for name := range s.Ready {
		names = append(names, name)
	}
	sort.Strings(names)
	failing := map[string]string{} // name → "unavailable", or the error for admins
	for _, name := range names {
		if err := s.Ready[name].Ping(ctx); err != nil {
			failing[name] = "unavailable"
			if admin {
				failing[name] = err.Error()
			}
			s.Logger.WarnContext(ctx, "readiness check failed", gateway.LogKeyBackend, name, gateway.LogKeyError, err.Error())
		}
	}
	if len(failing) > 0 {
		c.Header("Retry-After", "5")
		c.JSON(http.StatusServiceUnavailable, gin.H{"status": "not ready", "failing": failing, "checked": names})
		return
	}
	c.JSON(http.StatusOK, gin.H{"status": "ready", "checked": names})
}

// hasCredentials reports whether r carries an Authorization header. A
// client certificate alone does not count: a load balancer's probe may
// present one that is not mapped to any principal, and must not get 401.
func hasCredentials(r *http.Request) bool {
	return r.Header.Get("Authorization") != ""
}

func (s *Server) handleMetrics(c *gin.Context) {
	promhttp.HandlerFor(s.Gatherer, promhttp.HandlerOpts{}).ServeHTTP(c.Writer, c.Request)
}
