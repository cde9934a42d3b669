package dicomweb

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"net/http"
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
}

// AuthConfig is the auth: section of the --config YAML.
type AuthConfig struct {
	Tokens []TokenConfig `yaml:"tokens"`
}

// Enabled reports whether any credential is configured.
func (a AuthConfig) Enabled() bool { return len(a.Tokens) > 0 }

// Authenticator checks request credentials against the configured ones.
type Authenticator struct {
	tokens []tokenEntry
}

type tokenEntry struct {
	name  string
	hash  [sha256.Size]byte
	roles []gateway.Role
}

// NewAuthenticator validates cfg and returns an Authenticator, or nil when
// cfg configures no credentials (auth off, loopback only).
func NewAuthenticator(cfg AuthConfig) (*Authenticator, error) {
	if !cfg.Enabled() {
		return nil, nil
	}
	a := &Authenticator{}
	for i, t := range cfg.Tokens {
		raw, err := hex.DecodeString(strings.TrimSpace(t.SHA256))
		if err != nil || len(raw) != sha256.Size {
			return nil, fmt.Errorf("auth.tokens[%d] (%s): sha256 must be 64 hex digits", i, t.Name)
		}
		if t.Name == "" {
			return nil, fmt.Errorf("auth.tokens[%d]: name is empty", i)
		}
		for _, r := range t.Roles {
			switch r {
			case gateway.RoleStore, gateway.RoleRead, gateway.RoleTransfer, gateway.RoleAdmin:
			default:
				return nil, fmt.Errorf("auth.tokens[%d] (%s): unknown role %q (store, read, transfer, admin)", i, t.Name, r)
			}
		}
		e := tokenEntry{name: t.Name, roles: t.Roles}
		copy(e.hash[:], raw)
		a.tokens = append(a.tokens, e)
	}
	return a, nil
}

// Authenticate returns the principal of r's credentials, or an error wrapping
// gateway.ErrUnauthenticated. Every configured token is compared in constant
// time, so timing does not reveal which one nearly matched.
func (a *Authenticator) Authenticate(r *http.Request) (gateway.Principal, error) {
	h := r.Header.Get("Authorization")
	scheme, token, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return gateway.Principal{}, fmt.Errorf("no bearer token: %w", gateway.ErrUnauthenticated)
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(token)))
	found := -1
	for i := range a.tokens {
		if subtle.ConstantTimeCompare(sum[:], a.tokens[i].hash[:]) == 1 {
			found = i
		}
	}
	if found < 0 {
		return gateway.Principal{}, fmt.Errorf("unknown token: %w", gateway.ErrUnauthenticated)
	}
	return gateway.Principal{Name: a.tokens[found].name, Roles: a.tokens[found].roles, Method: "token"}, nil
}

// localPrincipal acts for every request when no auth is configured; the
// server then listens on loopback only.
var localPrincipal = gateway.Principal{
	Name:   "local",
	Roles:  []gateway.Role{gateway.RoleAdmin},
	Method: "none",
}

// authorize returns the middleware that authenticates the request and checks
// that its principal carries role. Failures are audited: 401 with
// WWW-Authenticate for missing or bad credentials, 403 for a missing role.
func (s *Server) authorize(role gateway.Role) gin.HandlerFunc {
	return func(c *gin.Context) {
		p := localPrincipal
		if s.Auth != nil {
			var err error
			p, err = s.Auth.Authenticate(c.Request)
			if err != nil {
				p.Address = c.ClientIP()
				s.recordAuthFailure(c, gateway.ActionAuthFailure, p, err.Error())
				s.writeError(c, err)
				return
			}
		}
		p.Address = c.ClientIP()
		c.Request = c.Request.WithContext(gateway.WithPrincipal(c.Request.Context(), p))
		if !p.Has(role) {
			s.recordAuthFailure(c, gateway.ActionAccessDenied, p, "role "+string(role)+" required")
			s.writeError(c, fmt.Errorf("%s needs role %s: %w", c.FullPath(), role, gateway.ErrForbidden))
			return
		}
		c.Next()
	}
}

func (s *Server) recordAuthFailure(c *gin.Context, action string, p gateway.Principal, reason string) {
	if s.Auditor == nil {
		return
	}
	if p.Name == "" {
		p.Name = "anonymous"
	}
	ev := &gateway.AuditEvent{
		Actor:   p,
		Action:  action,
		Outcome: gateway.OutcomeFailure,
		Detail:  map[string]any{"method": c.Request.Method, "route": c.FullPath(), "reason": reason},
	}
	if err := s.Auditor.Record(c.Request.Context(), ev); err != nil {
		s.Logger.ErrorContext(c.Request.Context(), "audit of auth failure not written", gateway.LogKeyError, err.Error())
	}
}
