package dicomweb

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/dicom-gateway/gateway/gateway"
)

// TokenConfig is one bearer token credential from the --config YAML. Only the
// SHA-256 of the token is configured, never the token itself.
type TokenConfig struct {
	Name   string         `yaml:"name"`
	SHA256 string         `yaml:"sha256"`
	Roles  []gateway.Role `yaml:"roles"`
	Peer   string         `yaml:"peer"` // the centre a peer gateway's token speaks for (peerauth.go)
}

// AuthConfig is the auth: section of the --config YAML. Every method is
// optional; configuring any of them turns auth on for every route except
// /healthz and /readyz.
type AuthConfig struct {
	Tokens []TokenConfig `yaml:"tokens"`
	Basic  []BasicConfig `yaml:"basic"` // HTTP basic for legacy PACS (basic.go)
	OIDC   *OIDCConfig   `yaml:"oidc"`  // JWT bearer tokens verified with a JWKS (oidc.go)
	MTLS   *MTLSConfig   `yaml:"mtls"`  // client certificates, e.g. peer gateways (mtls.go)
}

// Enabled reports whether any credential method is configured. A present but
// incomplete oidc: or mtls: section counts as configured, so that
// NewAuthenticator reports what is missing instead of the server silently
// running without auth.
func (a AuthConfig) Enabled() bool {
	return len(a.Tokens) > 0 || len(a.Basic) > 0 || a.OIDC != nil || a.MTLS != nil
}

// Authenticator checks request credentials against the configured ones. It is
// safe for concurrent use.
type Authenticator struct {
	tokens []tokenEntry
	basic  *basicAuth // nil: basic not configured
	oidc   *oidcAuth  // nil: OIDC not configured
	mtls   *mtlsAuth  // nil: mTLS not configured
	peers  map[peerKey]string
}

type tokenEntry struct {
	name  string
	hash  [sha256.Size]byte
	roles []gateway.Role
}

// NewAuthenticator validates cfg and returns an Authenticator, or nil when
// cfg configures no credentials (auth off, loopback only). Files named by
// cfg (the mTLS client CA, the JWKS CA) are read here, so a bad path fails at
// start-up, not on the first request.
func NewAuthenticator(cfg AuthConfig) (*Authenticator, error) {
	if !cfg.Enabled() {
		return nil, nil
	}
	a := &Authenticator{}
	var errs []error
	for i, t := range cfg.Tokens {
		raw, err := hex.DecodeString(strings.TrimSpace(t.SHA256))
		if err != nil || len(raw) != sha256.Size {
			errs = append(errs, fmt.Errorf("auth.tokens[%d] (%s): sha256 must be 64 hex digits", i, t.Name))
			continue
		}
		if t.Name == "" {
			errs = append(errs, fmt.Errorf("auth.tokens[%d]: name is empty", i))
		}
		if err := checkRoles(t.Roles); err != nil {
			errs = append(errs, fmt.Errorf("auth.tokens[%d] (%s): %w", i, t.Name, err))
		}
		e := tokenEntry{name: t.Name, roles: t.Roles}
		copy(e.hash[:], raw)
		a.tokens = append(a.tokens, e)
	}
	var err error
	if len(cfg.Basic) > 0 {
		if a.basic, err = newBasicAuth(cfg.Basic); err != nil {
			errs = append(errs, err)
		}
	}
	if cfg.OIDC != nil {
		if a.oidc, err = newOIDCAuth(*cfg.OIDC); err != nil {
			errs = append(errs, err)
		}
	}
	if cfg.MTLS != nil {
		if a.mtls, err = newMTLSAuth(*cfg.MTLS); err != nil {
			errs = append(errs, err)
		}
	}
	if a.peers, err = peerMap(cfg); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return a, nil
}

// checkRoles refuses role names the gateway does not know, so a typo in the
// config is an error rather than a credential that can do nothing.
func checkRoles(roles []gateway.Role) error {
	for _, r := range roles {
		if !knownRole(r) {
			return fmt.Errorf("unknown role %q (store, read, transfer, admin)", r)
		}
	}
	return nil
}

func knownRole(r gateway.Role) bool {
	switch r {
	case gateway.RoleStore, gateway.RoleRead, gateway.RoleTransfer, gateway.RoleAdmin:
		return true
	}
	return false
}

// Authenticate returns the principal of r's credentials, or an error wrapping
// gateway.ErrUnauthenticated (gateway.ErrUnavailable when the OIDC key set
// cannot be fetched). An Authorization header wins over a client
// certificate: Bearer is checked against the static tokens (every one
// compared in constant time, so timing does not reveal which nearly matched)
// and then, when it has the shape of a JWT, against OIDC; Basic against the
// basic users. Without an Authorization header a verified client certificate
// mapped in auth.mtls authenticates. Error messages never contain the
// credential: they are audited and returned to the client.
//
// The principal's Peer is set when its credential is mapped to a peer centre.
func (a *Authenticator) Authenticate(r *http.Request) (gateway.Principal, error) {
	p, err := a.authenticate(r)
	if err == nil {
		p.Peer = a.peers[peerKey{p.Method, p.Name}]
	}
	return p, err
}

func (a *Authenticator) authenticate(r *http.Request) (gateway.Principal, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		if a.mtls != nil && r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			return a.mtls.authenticate(r.TLS.PeerCertificates)
		}
		return gateway.Principal{}, fmt.Errorf("no credentials: %w", gateway.ErrUnauthenticated)
	}
	scheme, cred, _ := strings.Cut(h, " ")
	cred = strings.TrimSpace(cred)
	switch {
	case strings.EqualFold(scheme, "Bearer"):
		if cred == "" {
			return gateway.Principal{}, fmt.Errorf("empty bearer token: %w", gateway.ErrUnauthenticated)
		}
		if p, ok := a.staticToken(cred); ok {
			return p, nil
		}
		if a.oidc != nil && strings.Count(cred, ".") == 2 {
			return a.oidc.authenticate(r.Context(), cred)
		}
		return gateway.Principal{}, fmt.Errorf("unknown bearer token: %w", gateway.ErrUnauthenticated)
	case strings.EqualFold(scheme, "Basic") && a.basic != nil:
		return a.basic.authenticate(r.Context(), cred)
	}
	return gateway.Principal{}, fmt.Errorf("unsupported authorization scheme: %w", gateway.ErrUnauthenticated)
}

// staticToken looks token up among the configured SHA-256 hashes.
func (a *Authenticator) staticToken(token string) (gateway.Principal, bool) {
	sum := sha256.Sum256([]byte(token))
	found := -1
	for i := range a.tokens {
		if subtle.ConstantTimeCompare(sum[:], a.tokens[i].hash[:]) == 1 {
			found = i
		}
	}
	if found < 0 {
		return gateway.Principal{}, false
	}
	t := a.tokens[found]
	return gateway.Principal{Name: t.name, Roles: t.roles, Method: "token"}, true
}

// challenges are the WWW-Authenticate values of a 401: one per accepted
// header scheme. mTLS has no challenge; a client that should use a
// certificate is told nothing it does not know.
func (a *Authenticator) challenges() []string {
	const bearer, basic = `Bearer realm="dicom-gateway"`, `Basic realm="dicom-gateway", charset="UTF-8"`
	switch {
	case a == nil:
		return []string{bearer}
	case a.basic != nil && len(a.tokens) == 0 && a.oidc == nil:
		return []string{basic}
	case a.basic != nil:
		return []string{bearer, basic}
	}
	return []string{bearer} // tokens, OIDC, or mTLS alone (which has no scheme of its own)
}

// setChallenges puts one WWW-Authenticate header per accepted scheme on a
// 401 answer (errors.go calls it).
func (s *Server) setChallenges(c *gin.Context) {
	h := c.Writer.Header()
	h.Del("WWW-Authenticate")
	for _, v := range s.Auth.challenges() {
		h.Add("WWW-Authenticate", v)
	}
}

// localPrincipal acts for every request when no auth is configured; the
// server then listens on loopback only.
var localPrincipal = gateway.Principal{
	Name:   "local",
	Roles:  []gateway.Role{gateway.RoleAdmin},
	Method: "none",
}

// authorize returns the middleware that authenticates the request, applies
// the per-client rate limit and checks that its principal carries role.
// Failures are audited: 401 with WWW-Authenticate for missing or bad
// credentials, 403 for a missing role. Failed passwords are counted per
// client network (clientNet: the address, or its /64 for IPv6) and username
// (basic), with a higher ceiling per network over all usernames; a check
// under way counts as a failure until it ends (reserveFailure). Once a
// bucket is used up, a password for that username, or any password once
// the network's ceiling is reached, gets 429 before it is checked, so
// passwords cannot be guessed at speed; another user's good password from
// the same network still works until the ceiling. Other failures (bearer
// tokens, JWTs, client certificates, no credentials) cannot be guessed and
// never hold passwords back: they have a bucket of their own per network,
// past which a failure is still 401 but neither counted nor audited, so a
// flood of them cannot flood the audit log.
//
// bcrypt work is bounded separately (bcryptSlots), rate limit or not.
func (s *Server) authorize(role gateway.Role) gin.HandlerFunc {
	return func(c *gin.Context) {
		p, ok := s.authenticate(c)
		if !ok {
			return
		}
		if !p.Has(role) {
			s.recordAuthFailure(c, gateway.ActionAccessDenied, p, "role "+string(role)+" required")
			s.writeError(c, fmt.Errorf("%s needs role %s: %w", c.FullPath(), role, gateway.ErrForbidden))
			return
		}
		c.Next()
	}
}

// authenticate is the first half of authorize: it authenticates the
// request (the local principal without auth), counts and audits failures,
// applies the per-client rate limit and puts the principal in the request's
// context. ok false means the answer (401, 429, 503) has been written.
func (s *Server) authenticate(c *gin.Context) (p gateway.Principal, ok bool) {
	addr := clientNet(remoteIP(c.Request))
	p = localPrincipal
	if s.Auth != nil {
		username, password := basicUsername(c.Request)
		var finish func(failed bool)
		if password {
			var (
				wait    float64
				limited bool
			)
			if finish, wait, limited = s.RateLimit.reserveFailure(addr, username); limited {
				s.tooManyRequests(c, wait)
				return p, false
			}
		}
		var err error
		p, err = s.Auth.Authenticate(c.Request)
		// A refused or abandoned password check is not a wrong password.
		attempt := err != nil && !errors.Is(err, errPasswordChecksBusy) && !errors.Is(err, context.Canceled)
		if finish != nil {
			finish(attempt)
		}
		if attempt && !password && s.RateLimit.tokenFailuresExhausted(addr) {
			// Tokens, JWTs and certificates cannot be guessed: past the
			// limit a failure is still 401 (a viewer then refreshes its
			// expired token, a peer with a revoked one stops), only not
			// counted or audited again, so a flood of them cannot flood
			// the audit log.
			s.writeError(c, err)
			return p, false
		}
		if attempt {
			if !password {
				s.RateLimit.tokenFailure(addr)
			}
			p.Address = c.ClientIP()
			s.recordAuthFailure(c, gateway.ActionAuthFailure, p, err.Error())
		}
		if err != nil {
			s.writeError(c, err)
			return p, false
		}
	}
	p.Address = c.ClientIP()
	key := "ip:" + addr
	if s.Auth != nil {
		key = p.Method + ":" + p.Name
	}
	if wait, ok := s.RateLimit.allow(key); !ok {
		s.tooManyRequests(c, wait)
		return p, false
	}
	c.Request = c.Request.WithContext(gateway.WithPrincipal(c.Request.Context(), p))
	return p, true
}

// basicUsername returns the username of HTTP basic credentials and true
// when the request carries them (the only kind whose check is expensive,
// bcrypt, and guessable); "" and false otherwise. A malformed header gives
// "" and true: it is still a password attempt.
func basicUsername(r *http.Request) (username string, password bool) {
	scheme, cred, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	if !strings.EqualFold(scheme, "Basic") {
		return "", false
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(cred))
	if err != nil {
		return "", true
	}
	username, _, _ = strings.Cut(string(raw), ":")
	return username, true
}

// remoteIP is the address of the TCP peer, not of X-Forwarded-For: a client
// must not pick its own rate-limit bucket.
func remoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// tooManyRequests answers 429 with Retry-After in whole seconds (at least 1).
func (s *Server) tooManyRequests(c *gin.Context, wait float64) {
	secs := max(1, int(wait+0.999))
	c.Header("Retry-After", strconv.Itoa(secs))
	s.writeError(c, fmt.Errorf("rate limit exceeded, retry in %ds: %w", secs, errRateLimited))
}

func (s *Server) recordAuthFailure(c *gin.Context, action string, p gateway.Principal, reason string) {
	s.svc.RecordRefusal(c.Request.Context(), p, action, map[string]any{"method": c.Request.Method, "route": c.FullPath(), "reason": reason})
}
