package dicomweb

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"golang.org/x/crypto/bcrypt"
	"gopkg.in/yaml.v3"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/backendtest"
	"github.com/dicom-gateway/gateway/internal/syncbuf"
)

// authAuditRecorder is an Auditor that keeps every event in memory.
type authAuditRecorder struct {
	mu     sync.Mutex
	events []gateway.AuditEvent
}

func (r *authAuditRecorder) Record(_ context.Context, ev *gateway.AuditEvent) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, *ev)
	return nil
}

func (r *authAuditRecorder) all() []gateway.AuditEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

var allRoles = []gateway.Role{gateway.RoleStore, gateway.RoleRead, gateway.RoleTransfer, gateway.RoleAdmin}

// randomToken returns a fresh random bearer token.
func randomToken(t testing.TB) string {
	t.Helper()
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// tokenPerRole configures one static token per role and returns the
// config and the tokens by role.
func tokenPerRole(t testing.TB) (AuthConfig, map[gateway.Role]string) {
	t.Helper()
	var cfg AuthConfig
	tokens := map[gateway.Role]string{}
	for _, r := range allRoles {
		tok := randomToken(t)
		sum := sha256.Sum256([]byte(tok))
		tokens[r] = tok
		cfg.Tokens = append(cfg.Tokens, TokenConfig{Name: "tok-" + string(r), SHA256: hex.EncodeToString(sum[:]), Roles: []gateway.Role{r}})
	}
	return cfg, tokens
}

// wiring is what an internal test varies of a server: its HTTP config
// and the backends its services run on (nil unless set). serve builds it
// with the constructors gateway serve uses, gateway.NewServices and New.
type wiring struct {
	cfg  Config
	deps gateway.ServiceDeps
}

// serve builds the server w describes (named "test" unless named).
func (w wiring) serve() *Server {
	if w.deps.Name == "" {
		w.deps.Name = "test"
	}
	if w.deps.Logger == nil {
		w.deps.Logger = w.cfg.Logger
	}
	w.cfg.Services = gateway.NewServices(w.deps)
	return New(w.cfg)
}

// authTestServer is a real HTTP server around the server w describes, with
// an audit recorder (unless w has an auditor) and captured logs.
type authTestServer struct {
	*httptest.Server
	s     *Server
	audit *authAuditRecorder
	logs  *syncbuf.Buffer
}

func newAuthTestServer(t *testing.T, w wiring) *authTestServer {
	t.Helper()
	ts := &authTestServer{audit: &authAuditRecorder{}, logs: &syncbuf.Buffer{}}
	if w.deps.Auditor == nil {
		w.deps.Auditor = ts.audit
	}
	w.cfg.Logger = slog.New(slog.NewJSONHandler(ts.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ts.s = w.serve()
	ts.Server = httptest.NewServer(ts.s.Handler())
	t.Cleanup(ts.Close)
	return ts
}

// do sends method path with the given Authorization header ("" for none)
// and returns the status, headers and body.
func (ts *authTestServer) do(t *testing.T, method, path, authorization string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, ts.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	req.Header.Set("Accept", "*/*") // as curl sends: a retrieve without Accept is 406
	resp, err := ts.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, resp.Header, string(body)
}

// concretePath fills gin's :params and *wildcards with plausible values.
func concretePath(p string) string {
	parts := strings.Split(p, "/")
	for i, s := range parts {
		switch {
		case strings.HasPrefix(s, ":"):
			parts[i] = "1.2.3"
		case strings.HasPrefix(s, "*"):
			parts[i] = "x"
		}
	}
	return strings.Join(parts, "/")
}

// wrongRole is a role that does not grant want (never admin).
func wrongRole(want gateway.Role) gateway.Role {
	if want == gateway.RoleRead {
		return gateway.RoleStore
	}
	return gateway.RoleRead
}

// TestAuthEveryRouteEnforcesItsRole walks the routing table on a real server
// with one token per role: for every route, no credentials get 401, a token
// of another role 403, a token of the route's role neither. It runs twice:
// with nil backends (only the auth outcome matters; a handler that panics
// is logged) and with the embedded backends (filesystem blobs, bolt index,
// queue and audit log), where a handler panic fails the test.
func TestAuthEveryRouteEnforcesItsRole(t *testing.T) {
	cfg, tokens := tokenPerRole(t)
	auth, err := NewAuthenticator(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name        string
		server      func(t *testing.T) wiring
		panicsFatal bool
	}{
		{"nil backends", func(*testing.T) wiring { return wiring{cfg: Config{Auth: auth}} }, false},
		{"embedded backends", func(t *testing.T) wiring { return embeddedServer(t, auth) }, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ts := newAuthTestServer(t, tt.server(t))
			routes := ts.s.routes()
			if len(routes) < 3 {
				t.Fatalf("routes() has %d entries, want at least /healthz, /readyz, /metrics", len(routes))
			}
			for _, rt := range routes {
				path := concretePath(rt.path)
				t.Run(rt.method+" "+rt.path, func(t *testing.T) {
					if rt.role == "" {
						if code, _, _ := ts.do(t, rt.method, path, ""); code == http.StatusUnauthorized || code == http.StatusForbidden {
							t.Errorf("public route without credentials: got %d, want neither 401 nor 403", code)
						}
						return
					}
					code, hdr, _ := ts.do(t, rt.method, path, "")
					if code != http.StatusUnauthorized {
						t.Errorf("no credentials: got %d, want 401", code)
					}
					if !slices.Contains(hdr.Values("WWW-Authenticate"), `Bearer realm="dicom-gateway"`) {
						t.Errorf("no credentials: WWW-Authenticate = %q, want Bearer", hdr.Values("WWW-Authenticate"))
					}
					if code, _, _ := ts.do(t, rt.method, path, "Bearer "+tokens[wrongRole(rt.role)]); code != http.StatusForbidden {
						t.Errorf("role %s for a %s route: got %d, want 403", wrongRole(rt.role), rt.role, code)
					}
					logged := len(ts.logs.String())
					code, _, body := ts.do(t, rt.method, path, "Bearer "+tokens[rt.role])
					if code == http.StatusUnauthorized || code == http.StatusForbidden {
						t.Errorf("role %s: got %d, want neither 401 nor 403", rt.role, code)
					}
					if code == http.StatusInternalServerError {
						panicked := strings.Contains(ts.logs.String()[logged:], `"msg":"handler panic"`)
						switch {
						case panicked && tt.panicsFatal:
							t.Errorf("role %s: handler panicked: %s", rt.role, strings.TrimSpace(body))
						default:
							t.Logf("role %s: %d (handler panic: %v)", rt.role, code, panicked)
						}
					}
				})
			}
		})
	}
}

// embeddedServer is a server on the embedded backends in a temporary
// directory, with transfers configured but not started.
func embeddedServer(t testing.TB, auth *Authenticator) wiring {
	t.Helper()
	b := backendtest.Open(t, backendtest.Embedded, backendtest.Options{})
	return wiring{cfg: Config{Auth: auth}, deps: gateway.ServiceDeps{
		Blobs: b.Blobs, Index: b.Index, AuditLog: b.AuditLog,
		Ingester:  &gateway.Ingester{Blobs: b.Blobs, Index: b.Index},
		Transfers: &gateway.Transfers{Name: "test", Queue: b.Queue, Index: b.Index, Sender: NewClient(b.Blobs)},
	}}
}

// TestAuthFailuresAreAudited checks the audit records of a 401 and a 403
// and that neither the token nor the Authorization header reaches the
// audit detail, the logs or the error body.
func TestAuthFailuresAreAudited(t *testing.T) {
	cfg, tokens := tokenPerRole(t)
	auth, err := NewAuthenticator(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := newAuthTestServer(t, wiring{cfg: Config{Auth: auth}})
	wrong := randomToken(t)
	for _, tt := range []struct {
		name, authorization string
		wantStatus          int
		wantAction          string
		wantActor           string
		wantMethod          string
	}{
		{"no credentials", "", http.StatusUnauthorized, gateway.ActionAuthFailure, "anonymous", ""},
		{"unknown token", "Bearer " + wrong, http.StatusUnauthorized, gateway.ActionAuthFailure, "anonymous", ""},
		{"unknown scheme", "Digest " + wrong, http.StatusUnauthorized, gateway.ActionAuthFailure, "anonymous", ""},
		{"wrong role", "Bearer " + tokens[gateway.RoleRead], http.StatusForbidden, gateway.ActionAccessDenied, "tok-read", "token"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := len(ts.audit.all())
			code, _, body := ts.do(t, http.MethodGet, "/metrics", tt.authorization)
			if code != tt.wantStatus {
				t.Fatalf("status = %d, want %d", code, tt.wantStatus)
			}
			var eb struct{ Error string }
			if err := json.Unmarshal([]byte(body), &eb); err != nil || eb.Error == "" {
				t.Errorf("body %q is not {\"error\": …}", body)
			}
			evs := ts.audit.all()[before:]
			if len(evs) != 1 {
				t.Fatalf("got %d audit events, want 1", len(evs))
			}
			ev := evs[0]
			if ev.Action != tt.wantAction || ev.Outcome != gateway.OutcomeFailure || ev.Actor.Name != tt.wantActor || ev.Actor.Method != tt.wantMethod {
				t.Errorf("audit = action %q outcome %q actor %q/%q, want %q failure %q/%q",
					ev.Action, ev.Outcome, ev.Actor.Name, ev.Actor.Method, tt.wantAction, tt.wantActor, tt.wantMethod)
			}
			if ev.Detail["route"] != "/metrics" || ev.Detail["method"] != http.MethodGet || ev.Detail["reason"] == "" {
				t.Errorf("audit detail = %v, want route, method and reason", ev.Detail)
			}
			if ev.Actor.Address == "" {
				t.Errorf("audit actor has no address")
			}
		})
	}
	audit, _ := json.Marshal(ts.audit.all())
	for _, secret := range []string{wrong, tokens[gateway.RoleRead]} {
		for what, text := range map[string]string{"audit": string(audit), "logs": ts.logs.String()} {
			if strings.Contains(text, secret) {
				t.Errorf("a token appears in the %s", what)
			}
		}
	}
}

// TestAuthSecretsNeverLeak sends good and bad tokens and basic passwords and
// checks that none appears in logs, audit records or response bodies.
func TestAuthSecretsNeverLeak(t *testing.T) {
	cfg, tokens := tokenPerRole(t)
	password := "correct horse " + randomToken(t)
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Basic = []BasicConfig{{Name: "legacy-pacs", Username: "pacs", PasswordHash: string(hash), Roles: []gateway.Role{gateway.RoleStore}}}
	auth, err := NewAuthenticator(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := newAuthTestServer(t, wiring{cfg: Config{Auth: auth}})
	wrongPassword := "wrong " + randomToken(t)
	basic := func(u, p string) string { return "Basic " + base64.StdEncoding.EncodeToString([]byte(u+":"+p)) }
	secrets := []string{tokens[gateway.RoleAdmin], tokens[gateway.RoleRead], password, wrongPassword,
		basic("pacs", password), basic("pacs", wrongPassword), basic(password, password)}
	var bodies strings.Builder
	for _, authz := range []string{
		"Bearer " + tokens[gateway.RoleAdmin], "Bearer " + tokens[gateway.RoleRead], "Bearer " + tokens[gateway.RoleAdmin] + "x",
		basic("pacs", password), basic("pacs", wrongPassword), basic(password, password),
	} {
		_, hdr, body := ts.do(t, http.MethodGet, "/metrics", authz)
		bodies.WriteString(body)
		for _, v := range hdr {
			bodies.WriteString(strings.Join(v, " "))
		}
	}
	audit, _ := json.Marshal(ts.audit.all())
	if len(ts.audit.all()) < 5 {
		t.Fatalf("got %d audit events, want at least 5", len(ts.audit.all()))
	}
	if !strings.Contains(ts.logs.String(), `"route":"/metrics"`) {
		t.Fatalf("no access log captured: %s", ts.logs.String())
	}
	for i, secret := range secrets {
		for what, text := range map[string]string{"audit": string(audit), "logs": ts.logs.String(), "responses": bodies.String()} {
			if strings.Contains(text, secret) {
				t.Errorf("secret %d appears in the %s", i, what)
			}
		}
	}
}

// TestAuthBasic checks HTTP basic users with bcrypt hashes.
func TestAuthBasic(t *testing.T) {
	bc, err := bcrypt.GenerateFromPassword([]byte("pacs-pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	bcOld, err := bcrypt.GenerateFromPassword([]byte("legacy-pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	auth, err := NewAuthenticator(AuthConfig{Basic: []BasicConfig{
		{Name: "legacy-pacs", Username: "pacs", PasswordHash: string(bc), Roles: []gateway.Role{gateway.RoleStore}},
		{Name: "old-pacs", Username: "old", PasswordHash: string(bcOld), Roles: []gateway.Role{gateway.RoleAdmin}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	ts := newAuthTestServer(t, wiring{cfg: Config{Auth: auth}})
	basic := func(up string) string { return "Basic " + base64.StdEncoding.EncodeToString([]byte(up)) }
	for _, tt := range []struct {
		name, authorization string
		want                int
		wantActor           string
	}{
		{"bcrypt good", basic("pacs:pacs-pw"), http.StatusForbidden, "legacy-pacs"}, // store may not read /metrics
		{"bcrypt good again (cached)", basic("pacs:pacs-pw"), http.StatusForbidden, "legacy-pacs"},
		{"second user good", basic("old:legacy-pw"), http.StatusOK, ""},
		{"bcrypt bad password", basic("pacs:pacs-pw2"), http.StatusUnauthorized, "anonymous"},
		{"second user, first user's password", basic("old:pacs-pw"), http.StatusUnauthorized, "anonymous"},
		{"unknown user", basic("nobody:pacs-pw"), http.StatusUnauthorized, "anonymous"},
		{"no colon", basic("pacs"), http.StatusUnauthorized, "anonymous"},
		{"not base64", "Basic !!!", http.StatusUnauthorized, "anonymous"},
		{"empty", "Basic ", http.StatusUnauthorized, "anonymous"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := len(ts.audit.all())
			code, hdr, _ := ts.do(t, http.MethodGet, "/metrics", tt.authorization)
			if code != tt.want {
				t.Fatalf("status = %d, want %d", code, tt.want)
			}
			if code == http.StatusUnauthorized {
				if got := hdr.Values("WWW-Authenticate"); !slices.Equal(got, []string{`Basic realm="dicom-gateway", charset="UTF-8"`}) {
					t.Errorf("WWW-Authenticate = %q, want only Basic", got)
				}
			}
			if evs := ts.audit.all()[before:]; tt.wantActor != "" && (len(evs) != 1 || evs[0].Actor.Name != tt.wantActor) {
				t.Errorf("audit = %+v, want one event by %s", evs, tt.wantActor)
			}
		})
	}
}

// TestAuthChallengesNameEveryScheme checks that a 401 names Bearer and Basic
// when both are configured.
func TestAuthChallengesNameEveryScheme(t *testing.T) {
	cfg, _ := tokenPerRole(t)
	bc, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	cfg.Basic = []BasicConfig{{Name: "p", Username: "p", PasswordHash: string(bc)}}
	auth, err := NewAuthenticator(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := newAuthTestServer(t, wiring{cfg: Config{Auth: auth}})
	_, hdr, _ := ts.do(t, http.MethodGet, "/metrics", "")
	want := []string{`Bearer realm="dicom-gateway"`, `Basic realm="dicom-gateway", charset="UTF-8"`}
	if got := hdr.Values("WWW-Authenticate"); !slices.Equal(got, want) {
		t.Errorf("WWW-Authenticate = %q, want %q", got, want)
	}
}

// TestAuthRefusesBadConfig checks that every misconfiguration is
// an error that names the setting and never echoes a password.
func TestAuthRefusesBadConfig(t *testing.T) {
	good := strings.Repeat("ab", 32)
	for _, tt := range []struct {
		name     string
		cfg      AuthConfig
		wantText string
	}{
		{"short hash", AuthConfig{Tokens: []TokenConfig{{Name: "a", SHA256: "abc"}}}, "auth.tokens[0]"},
		{"no name", AuthConfig{Tokens: []TokenConfig{{SHA256: good}}}, "name is empty"},
		{"unknown role", AuthConfig{Tokens: []TokenConfig{{Name: "a", SHA256: good, Roles: []gateway.Role{"root"}}}}, `unknown role "root"`},
		{"plain-text password", AuthConfig{Basic: []BasicConfig{{Name: "p", Username: "u", PasswordHash: "hunter2-plain"}}}, "plain-text passwords are not accepted"},
		{"bad bcrypt", AuthConfig{Basic: []BasicConfig{{Name: "p", Username: "u", PasswordHash: "$2a$10$short"}}}, "not a valid bcrypt hash"},
		{"salted sha256 (dropped: timing and brute force)", AuthConfig{Basic: []BasicConfig{{Name: "p", Username: "u", PasswordHash: "sha256:" + strings.Repeat("00", 16) + ":" + good}}}, "gateway hash-password"},
		{"basic without username", AuthConfig{Basic: []BasicConfig{{Name: "p", PasswordHash: "sha256:00:11"}}}, "username are required"},
		{"oidc empty", AuthConfig{OIDC: &OIDCConfig{}}, "auth.oidc.issuer is required"},
		{"oidc plain http", AuthConfig{OIDC: &OIDCConfig{Issuer: "i", Audience: "a", JWKSURL: "http://idp.example/certs"}}, "must use https"},
		{"oidc skew", AuthConfig{OIDC: &OIDCConfig{Issuer: "i", Audience: "a", JWKSURL: "https://idp.example/certs", ClockSkew: 1 << 62}}, "clock_skew"},
		{"oidc role map", AuthConfig{OIDC: &OIDCConfig{Issuer: "i", Audience: "a", JWKSURL: "https://idp.example/certs", RoleMap: map[string]gateway.Role{"x": "root"}}}, "role_map[x]"},
		{"mtls empty", AuthConfig{MTLS: &MTLSConfig{}}, "auth.mtls.client_ca_file: is required"},
		{"mtls two matchers", AuthConfig{MTLS: &MTLSConfig{Clients: []MTLSClient{{Name: "a", CertificateName: gateway.CertificateName{SubjectCN: "a", SANDNS: "a"}}}}}, "exactly one of"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if !tt.cfg.Enabled() {
				t.Fatalf("Enabled() = false for a configured method")
			}
			a, err := NewAuthenticator(tt.cfg)
			if err == nil || a != nil {
				t.Fatalf("NewAuthenticator = %v, %v; want an error", a, err)
			}
			if !strings.Contains(err.Error(), tt.wantText) {
				t.Errorf("error %q does not mention %q", err, tt.wantText)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error %q echoes the password", err)
			}
		})
	}
	if (AuthConfig{}).Enabled() {
		t.Errorf("empty AuthConfig is Enabled")
	}
	if a, err := NewAuthenticator(AuthConfig{}); a != nil || err != nil {
		t.Errorf("NewAuthenticator(empty) = %v, %v; want nil, nil", a, err)
	}
}

// TestAuthConfigYAML decodes the documented auth:, tls: and rate_limit:
// sections strictly, as cmd/gateway does, and refuses an unknown key.
func TestAuthConfigYAML(t *testing.T) {
	type file struct {
		Auth      AuthConfig      `yaml:"auth"`
		TLS       TLSConfig       `yaml:"tls"`
		RateLimit RateLimitConfig `yaml:"rate_limit"`
	}
	const doc = `
auth:
  tokens:
    - {name: pacs-1, sha256: "` + "abababababababababababababababababababababababababababababababab" + `", roles: [store]}
  basic:
    - {name: legacy-pacs, username: pacs, password_hash: "$2a$10$abcdefghijklmnopqrstuuJ2Zq2Y0n0jJmXG1J9B6rE3VqzE0m1y.", roles: [store]}
  oidc:
    issuer: https://idp.example/realms/nhs
    audience: dicom-gateway
    jwks_url: https://idp.example/realms/nhs/protocol/openid-connect/certs
    roles_claim: realm_access.roles
    role_map: {radiologist: read}
    clock_skew: 90s
  mtls:
    client_ca_file: /etc/gateway/peers-ca.pem
    clients:
      - {subject_cn: surrey.gateway.nhs.uk, name: surrey-gateway, roles: [store, read]}
tls:
  cert_file: /etc/gateway/tls.crt
  key_file: /etc/gateway/tls.key
  min_version: "1.3"
rate_limit: {requests_per_second: 50, burst: 100}
`
	decode := func(s string) (file, error) {
		var f file
		dec := yaml.NewDecoder(strings.NewReader(s))
		dec.KnownFields(true)
		return f, dec.Decode(&f)
	}
	f, err := decode(doc)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := f.Auth.OIDC.ClockSkew.Seconds(), 90.0; got != want {
		t.Errorf("clock_skew = %vs, want %vs", got, want)
	}
	if f.Auth.MTLS.Clients[0].Name != "surrey-gateway" || f.Auth.Basic[0].Username != "pacs" || f.TLS.MinVersion != "1.3" || f.RateLimit.Burst != 100 {
		t.Errorf("decoded %+v", f)
	}
	if !f.Auth.Enabled() {
		t.Errorf("Enabled() = false")
	}
	if _, err := decode(strings.Replace(doc, "roles_claim:", "role_claim:", 1)); err == nil {
		t.Errorf("misspelt key decoded without error")
	}
}
