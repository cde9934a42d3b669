package dicomweb

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/testpki"
)

// testJWKS is an identity provider's key set served over real HTTPS by
// httptest; the keys it publishes can be changed while it runs.
type testJWKS struct {
	srv     *httptest.Server
	caFile  string
	mu      sync.Mutex
	keys    []map[string]string
	fetches atomic.Int64
	down    atomic.Bool
}

func newTestJWKS(t *testing.T) *testJWKS {
	t.Helper()
	j := &testJWKS{}
	j.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		j.fetches.Add(1)
		if j.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		j.mu.Lock()
		defer j.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": j.keys})
	}))
	t.Cleanup(j.srv.Close)
	j.caFile = testpki.WritePEM(t, filepath.Join(t.TempDir(), "jwks-ca.pem"), "CERTIFICATE", j.srv.Certificate().Raw)
	return j
}

// publish adds pub to the key set under kid.
func (j *testJWKS) publish(kid string, pub crypto.PublicKey) {
	b64 := base64.RawURLEncoding
	var k map[string]string
	switch pub := pub.(type) {
	case *rsa.PublicKey:
		k = map[string]string{"kty": "RSA", "alg": "RS256", "use": "sig", "n": b64.EncodeToString(pub.N.Bytes()), "e": b64.EncodeToString(big.NewInt(int64(pub.E)).Bytes())}
	case *ecdsa.PublicKey:
		raw, _ := pub.Bytes() // 0x04 || X || Y
		k = map[string]string{"kty": "EC", "crv": "P-256", "x": b64.EncodeToString(raw[1:33]), "y": b64.EncodeToString(raw[33:])}
	}
	k["kid"] = kid
	j.mu.Lock()
	defer j.mu.Unlock()
	j.keys = append(j.keys, k)
}

func signJWT(t *testing.T, method jwt.SigningMethod, kid string, key any, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestSecurityOIDC verifies JWT bearer tokens against a JWKS served over HTTPS.
func TestSecurityOIDC(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	otherKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	idp := newTestJWKS(t)
	idp.publish("rsa-1", &rsaKey.PublicKey)
	idp.publish("ec-1", &ecKey.PublicKey)

	const iss, aud = "https://idp.example/realms/nhs", "dicom-gateway"
	auth, err := NewAuthenticator(AuthConfig{OIDC: &OIDCConfig{
		Issuer: iss, Audience: aud, JWKSURL: idp.srv.URL + "/certs", CAFile: idp.caFile,
		RolesClaim: "realm_access.roles", RoleMap: map[string]gateway.Role{"radiologist": gateway.RoleRead, "gateway-admin": gateway.RoleAdmin},
		ClockSkew: time.Minute,
	}})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	claims := func(mod func(jwt.MapClaims)) jwt.MapClaims {
		c := jwt.MapClaims{
			"iss": iss, "aud": []string{aud, "account"}, "sub": "dr-who",
			"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(5 * time.Minute).Unix(),
			"realm_access": map[string]any{"roles": []string{"radiologist", "offline_access"}},
		}
		if mod != nil {
			mod(c)
		}
		return c
	}
	rsaPubDER, _ := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	rsaPubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: rsaPubDER})
	noneTok, _ := jwt.NewWithClaims(jwt.SigningMethodNone, claims(nil)).SignedString(jwt.UnsafeAllowNoneSignatureType)

	for _, tt := range []struct {
		name      string
		token     string
		wantErr   error
		wantRoles []gateway.Role
	}{
		{"RS256 valid", signJWT(t, jwt.SigningMethodRS256, "rsa-1", rsaKey, claims(nil)), nil, []gateway.Role{gateway.RoleRead}},
		{"ES256 valid, admin", signJWT(t, jwt.SigningMethodES256, "ec-1", ecKey, claims(func(c jwt.MapClaims) {
			c["realm_access"] = map[string]any{"roles": []string{"gateway-admin"}}
		})), nil, []gateway.Role{gateway.RoleAdmin}},
		{"expired within clock skew", signJWT(t, jwt.SigningMethodRS256, "rsa-1", rsaKey, claims(func(c jwt.MapClaims) {
			c["exp"] = now.Add(-30 * time.Second).Unix()
		})), nil, []gateway.Role{gateway.RoleRead}},
		{"expired", signJWT(t, jwt.SigningMethodRS256, "rsa-1", rsaKey, claims(func(c jwt.MapClaims) {
			c["exp"] = now.Add(-2 * time.Minute).Unix()
		})), gateway.ErrUnauthenticated, nil},
		{"no exp", signJWT(t, jwt.SigningMethodRS256, "rsa-1", rsaKey, claims(func(c jwt.MapClaims) { delete(c, "exp") })), gateway.ErrUnauthenticated, nil},
		{"not yet valid", signJWT(t, jwt.SigningMethodRS256, "rsa-1", rsaKey, claims(func(c jwt.MapClaims) {
			c["nbf"] = now.Add(10 * time.Minute).Unix()
		})), gateway.ErrUnauthenticated, nil},
		{"wrong issuer", signJWT(t, jwt.SigningMethodRS256, "rsa-1", rsaKey, claims(func(c jwt.MapClaims) { c["iss"] = "https://evil.example" })), gateway.ErrUnauthenticated, nil},
		{"wrong audience", signJWT(t, jwt.SigningMethodRS256, "rsa-1", rsaKey, claims(func(c jwt.MapClaims) { c["aud"] = "other-app" })), gateway.ErrUnauthenticated, nil},
		{"alg none", noneTok, gateway.ErrUnauthenticated, nil},
		{"HS256 keyed with the public key", signJWT(t, jwt.SigningMethodHS256, "rsa-1", rsaPubPEM, claims(nil)), gateway.ErrUnauthenticated, nil},
		{"RS384", signJWT(t, jwt.SigningMethodRS384, "rsa-1", rsaKey, claims(nil)), gateway.ErrUnauthenticated, nil},
		{"ES256 under an RSA kid", signJWT(t, jwt.SigningMethodES256, "rsa-1", ecKey, claims(nil)), gateway.ErrUnauthenticated, nil},
		{"signed by another key", signJWT(t, jwt.SigningMethodES256, "ec-1", otherKey, claims(nil)), gateway.ErrUnauthenticated, nil},
		{"unknown kid", signJWT(t, jwt.SigningMethodES256, "ec-2", otherKey, claims(nil)), gateway.ErrUnauthenticated, nil},
		{"no sub", signJWT(t, jwt.SigningMethodRS256, "rsa-1", rsaKey, claims(func(c jwt.MapClaims) { delete(c, "sub") })), gateway.ErrUnauthenticated, nil},
		{"garbage with two dots", "a.b.c", gateway.ErrUnauthenticated, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/metrics", nil)
			req.Header.Set("Authorization", "Bearer "+tt.token)
			p, err := auth.Authenticate(req)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr != nil) != (err != nil) {
				t.Fatalf("Authenticate err = %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				if strings.Contains(err.Error(), tt.token) || strings.Contains(err.Error(), "dr-who") {
					t.Errorf("error %q quotes the token", err)
				}
				return
			}
			if p.Name != "dr-who" || p.Method != "oidc" || !sameRoles(p.Roles, tt.wantRoles) {
				t.Errorf("principal = %+v, want dr-who/oidc with %v", p, tt.wantRoles)
			}
		})
	}

	t.Run("over HTTP", func(t *testing.T) {
		ts := newAuthTestServer(t, wiring{cfg: Config{Auth: auth}})
		tok := signJWT(t, jwt.SigningMethodRS256, "rsa-1", rsaKey, claims(nil))
		if code, _, _ := ts.do(t, http.MethodGet, "/metrics", "Bearer "+tok); code != http.StatusForbidden {
			t.Errorf("read token on /metrics: got %d, want 403", code)
		}
		expired := signJWT(t, jwt.SigningMethodRS256, "rsa-1", rsaKey, claims(func(c jwt.MapClaims) { c["exp"] = now.Add(-time.Hour).Unix() }))
		code, _, body := ts.do(t, http.MethodGet, "/metrics", "Bearer "+expired)
		if code != http.StatusUnauthorized || !strings.Contains(body, "expired") {
			t.Errorf("expired token: got %d %s, want 401 naming expiry", code, body)
		}
		if strings.Contains(ts.logs.String(), tok) || strings.Contains(body, expired) {
			t.Errorf("a JWT leaked into the logs or body")
		}
	})
}

func sameRoles(a, b []gateway.Role) bool {
	return strings.Join(rolesStrings(a), ",") == strings.Join(rolesStrings(b), ",")
}

func rolesStrings(rs []gateway.Role) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = string(r)
	}
	return out
}

// TestSecurityOIDCKeyRotation checks the JWKS cache: a new kid is fetched on first
// sight, unknown kids refetch at most once per interval, and an unreachable
// provider is 503 (ErrUnavailable), not 401.
func TestSecurityOIDCKeyRotation(t *testing.T) {
	k1, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	k2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	idp := newTestJWKS(t)
	idp.publish("k1", &k1.PublicKey)
	auth, err := NewAuthenticator(AuthConfig{OIDC: &OIDCConfig{Issuer: "iss", Audience: "aud", JWKSURL: idp.srv.URL, CAFile: idp.caFile}})
	if err != nil {
		t.Fatal(err)
	}
	clock := time.Now()
	auth.oidc.now = func() time.Time { return clock }
	tok := func(kid string, key *ecdsa.PrivateKey) string {
		return signJWT(t, jwt.SigningMethodES256, kid, key, jwt.MapClaims{"iss": "iss", "aud": "aud", "sub": "s", "exp": time.Now().Add(time.Hour).Unix(), "roles": "read"})
	}
	check := func(token string, want error) {
		t.Helper()
		req := httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		p, err := auth.Authenticate(req)
		if !errors.Is(err, want) || (want == nil) != (err == nil) {
			t.Fatalf("Authenticate = %v, want %v", err, want)
		}
		if err == nil && !p.Has(gateway.RoleRead) {
			t.Errorf("principal %+v lacks read from the string roles claim", p)
		}
	}
	check(tok("k1", k1), nil)
	if got := idp.fetches.Load(); got != 1 {
		t.Fatalf("fetches = %d, want 1", got)
	}
	check(tok("k1", k1), nil)
	for i := range 20 {
		check(tok("random-"+strconv.Itoa(i), k2), gateway.ErrUnauthenticated)
	}
	if got := idp.fetches.Load(); got != 1 {
		t.Errorf("fetches after 20 unknown kids within the refresh interval = %d, want 1 (cached)", got)
	}
	idp.publish("k2", &k2.PublicKey)
	clock = clock.Add(jwksMinRefresh + time.Second)
	check(tok("k2", k2), nil)
	if got := idp.fetches.Load(); got != 2 {
		t.Errorf("fetches after rotation = %d, want 2", got)
	}
	// Provider down: known keys keep working; a new kid is unavailable.
	idp.down.Store(true)
	clock = clock.Add(jwksMaxAge + time.Minute)
	check(tok("k1", k1), nil)
	clock = clock.Add(jwksMinRefresh + time.Second)
	check(tok("k3", k2), gateway.ErrUnavailable)
}

// TestSecurityMTLS serves real TLS with ServerTLS and connects with
// ClientTLSConfig and certificates generated here.
func TestSecurityMTLS(t *testing.T) {
	ca := testpki.NewCA(t, "peers")
	other := testpki.NewCA(t, "rogue")
	srvCert, srvKey := ca.IssueFiles(t, &x509.Certificate{
		Subject: pkix.Name{CommonName: "gateway"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	adminTok := randomToken(t)
	sum := sha256.Sum256([]byte(adminTok))
	authCfg := AuthConfig{
		Tokens: []TokenConfig{{Name: "admin", SHA256: hex.EncodeToString(sum[:]), Roles: []gateway.Role{gateway.RoleAdmin}}},
		MTLS: &MTLSConfig{ClientCAFile: ca.File, Clients: []MTLSClient{
			{CertificateName: gateway.CertificateName{SubjectCN: "surrey.gateway.nhs.uk"}, Name: "surrey-gateway", Roles: []gateway.Role{gateway.RoleAdmin}},
			{CertificateName: gateway.CertificateName{SANDNS: "hampshire.gateway.nhs.uk"}, Name: "hampshire-gateway", Roles: []gateway.Role{gateway.RoleRead}},
		}},
	}
	auth, err := NewAuthenticator(authCfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ServerTLS(TLSConfig{}, authCfg); err == nil {
		t.Errorf("ServerTLS without a certificate but with auth.mtls: no error")
	}
	tlsConf, err := ServerTLS(TLSConfig{CertFile: srvCert, KeyFile: srvKey}, authCfg)
	if err != nil {
		t.Fatal(err)
	}
	if tlsConf.ClientAuth != tls.VerifyClientCertIfGiven || tlsConf.MinVersion != tls.VersionTLS12 {
		t.Fatalf("ClientAuth = %v, MinVersion = %x; want VerifyClientCertIfGiven, TLS 1.2", tlsConf.ClientAuth, tlsConf.MinVersion)
	}
	rec := &authAuditRecorder{}
	s := wiring{cfg: Config{Auth: auth}, deps: gateway.ServiceDeps{Auditor: rec}}.serve()
	srv := httptest.NewUnstartedServer(s.Handler())
	// TLS exactly as gateway serve sets it up (httptest's StartTLS would
	// add its own certificate beside ServerTLS's GetCertificate).
	srv.Listener = tls.NewListener(srv.Listener, tlsConf)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are expected here
	srv.Start()
	t.Cleanup(srv.Close)
	base := "https://" + srv.Listener.Addr().String()

	surreyCrt, surreyKey := ca.IssueFiles(t, testpki.ClientTemplate("surrey.gateway.nhs.uk"))
	hantsCrt, hantsKey := ca.IssueFiles(t, testpki.ClientTemplate("anything", "hampshire.gateway.nhs.uk"))
	unmappedCrt, unmappedKey := ca.IssueFiles(t, testpki.ClientTemplate("kent.gateway.nhs.uk"))
	rogueCrt, rogueKey := other.IssueFiles(t, testpki.ClientTemplate("surrey.gateway.nhs.uk"))
	expiredTmpl := testpki.ClientTemplate("surrey.gateway.nhs.uk")
	expiredTmpl.NotBefore, expiredTmpl.NotAfter = time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour)
	expiredCrt, expiredKey := ca.IssueFiles(t, expiredTmpl)
	serverOnlyCrt, serverOnlyKey := ca.IssueFiles(t, &x509.Certificate{Subject: pkix.Name{CommonName: "surrey.gateway.nhs.uk"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})

	for _, tt := range []struct {
		name               string
		certFile, keyFile  string
		bearer             string
		want               int // 0: the TLS handshake must fail
		wantActor          string
		wantAuditedFailure bool
	}{
		{"mapped by CN, admin", surreyCrt, surreyKey, "", http.StatusOK, "", false},
		{"mapped by SAN, read only", hantsCrt, hantsKey, "", http.StatusForbidden, "hampshire-gateway", false},
		{"valid but unmapped", unmappedCrt, unmappedKey, "", http.StatusUnauthorized, "", true},
		{"no certificate", "", "", "", http.StatusUnauthorized, "", true},
		{"no certificate, bearer token", "", "", adminTok, http.StatusOK, "", false},
		{"other CA", rogueCrt, rogueKey, "", 0, "", false},
		{"expired", expiredCrt, expiredKey, "", 0, "", false},
		{"server-auth only", serverOnlyCrt, serverOnlyKey, "", 0, "", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cc, err := ClientTLSConfig(ClientTLSOptions{CAFile: ca.File, CertFile: tt.certFile, KeyFile: tt.keyFile})
			if err != nil {
				t.Fatal(err)
			}
			if len(cc.Certificates) == 1 {
				// Present the certificate even when its issuer is not among the
				// server's acceptable CAs (Go would otherwise send none).
				cert := cc.Certificates[0]
				cc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
			}
			client := &http.Client{Transport: &http.Transport{TLSClientConfig: cc}, Timeout: 10 * time.Second}
			defer client.CloseIdleConnections()
			req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, base+"/metrics", nil)
			if tt.bearer != "" {
				req.Header.Set("Authorization", "Bearer "+tt.bearer)
			}
			before := len(rec.all())
			resp, err := client.Do(req)
			if tt.want == 0 {
				if err == nil {
					resp.Body.Close()
					t.Fatalf("got %d, want a failed handshake", resp.StatusCode)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Fatalf("status = %d, want %d", resp.StatusCode, tt.want)
			}
			evs := rec.all()[before:]
			if tt.wantActor != "" && (len(evs) != 1 || evs[0].Actor.Name != tt.wantActor || evs[0].Actor.Method != "mtls") {
				t.Errorf("audit = %+v, want a denial of %s by mtls", evs, tt.wantActor)
			}
			if tt.wantAuditedFailure && (len(evs) != 1 || evs[0].Action != gateway.ActionAuthFailure) {
				t.Errorf("audit = %+v, want one auth failure", evs)
			}
		})
	}

	// Defence in depth: a chain the TLS layer might have accepted under a
	// broader CA set is checked again against auth.mtls.client_ca_file.
	raw, _ := os.ReadFile(rogueCrt)
	blk, _ := decodePEM(raw)
	rogue, _ := x509.ParseCertificate(blk)
	if _, err := auth.mtls.authenticate([]*x509.Certificate{rogue}); !errors.Is(err, gateway.ErrUnauthenticated) {
		t.Errorf("rogue chain: err = %v, want ErrUnauthenticated", err)
	}

	t.Run("TLS 1.1 refused", func(t *testing.T) {
		conn, err := tls.Dial("tcp", srv.Listener.Addr().String(), &tls.Config{MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11, InsecureSkipVerify: true}) //nolint:gosec // the point of the test
		if err == nil {
			conn.Close()
			t.Errorf("TLS 1.1 handshake succeeded")
		}
	})
}

func decodePEM(b []byte) ([]byte, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("no PEM")
	}
	return blk.Bytes, nil
}

// TestTLSServerConfigRefuses checks the server TLS settings that must fail.
func TestTLSServerConfigRefuses(t *testing.T) {
	ca := testpki.NewCA(t, "srv")
	crt, key := ca.IssueFiles(t, &x509.Certificate{Subject: pkix.Name{CommonName: "gw"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	for _, tt := range []struct {
		name string
		cfg  TLSConfig
	}{
		{"no key", TLSConfig{CertFile: crt}},
		{"TLS 1.0", TLSConfig{CertFile: crt, KeyFile: key, MinVersion: "1.0"}},
		{"TLS 1.1", TLSConfig{CertFile: crt, KeyFile: key, MinVersion: "1.1"}},
		{"key mismatch", TLSConfig{CertFile: crt, KeyFile: ca.File}},
		{"client CA not PEM", TLSConfig{CertFile: crt, KeyFile: key, ClientCAFile: key}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ServerTLSConfig(tt.cfg); err == nil {
				t.Errorf("ServerTLSConfig(%+v): no error", tt.cfg)
			}
		})
	}
	c, err := ServerTLSConfig(TLSConfig{CertFile: crt, KeyFile: key, MinVersion: "1.3"})
	if err != nil || c.MinVersion != tls.VersionTLS13 || c.ClientAuth != tls.NoClientCert {
		t.Errorf("min_version 1.3: %v, %+v", err, c)
	}
	if c, err := ServerTLS(TLSConfig{}, AuthConfig{}); c != nil || err != nil {
		t.Errorf("ServerTLS(nothing) = %v, %v; want nil, nil (plain HTTP)", c, err)
	}
}

// TestRateLimit checks 429 with Retry-After after the burst, separate
// buckets per principal, the failed-authentication bucket per address and
// the bound on the number of buckets.
func TestRateLimit(t *testing.T) {
	cfg, tokens := tokenPerRole(t)
	auth, err := NewAuthenticator(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rl, err := NewRateLimiter(RateLimitConfig{RequestsPerSecond: 0.01, Burst: 3})
	if err != nil {
		t.Fatal(err)
	}
	ts := newAuthTestServer(t, wiring{cfg: Config{Auth: auth, RateLimit: rl}})
	admin := "Bearer " + tokens[gateway.RoleAdmin]
	for i := range 3 {
		if code, _, _ := ts.do(t, http.MethodGet, "/metrics", admin); code != http.StatusOK {
			t.Fatalf("request %d: got %d, want 200", i+1, code)
		}
	}
	code, hdr, body := ts.do(t, http.MethodGet, "/metrics", admin)
	if code != http.StatusTooManyRequests {
		t.Fatalf("request 4: got %d, want 429", code)
	}
	if secs, err := strconv.Atoi(hdr.Get("Retry-After")); err != nil || secs < 1 || secs > 100 {
		t.Errorf("Retry-After = %q, want 1..100 seconds", hdr.Get("Retry-After"))
	}
	if !strings.Contains(body, "rate limit") {
		t.Errorf("429 body = %s", body)
	}
	if code, _, _ := ts.do(t, http.MethodGet, "/healthz", ""); code != http.StatusOK {
		t.Errorf("/healthz is rate limited: %d", code)
	}
	if code, _, _ := ts.do(t, http.MethodGet, "/metrics", "Bearer "+tokens[gateway.RoleRead]); code != http.StatusForbidden {
		t.Errorf("another principal: got %d, want its own bucket (403 for the role)", code)
	}

	// Failed tokens from one address: 3 × 401 audited, then 401 for further
	// failures, not audited, while a good token from the same address
	// (another user behind the same NAT) still works.
	rl2, _ := NewRateLimiter(RateLimitConfig{RequestsPerSecond: 0.01, Burst: 3})
	ts2 := newAuthTestServer(t, wiring{cfg: Config{Auth: auth, RateLimit: rl2}})
	for i := range 3 {
		if code, _, _ := ts2.do(t, http.MethodGet, "/metrics", "Bearer guess-"+strconv.Itoa(i)); code != http.StatusUnauthorized {
			t.Fatalf("guess %d: got %d, want 401", i, code)
		}
	}
	audited := len(ts2.audit.all())
	if code, hdr, _ := ts2.do(t, http.MethodGet, "/metrics", "Bearer guess-4"); code != http.StatusUnauthorized || len(hdr.Values("WWW-Authenticate")) == 0 {
		t.Errorf("guess 4: got %d (WWW-Authenticate %q), want 401 with a challenge", code, hdr.Values("WWW-Authenticate"))
	}
	if got := len(ts2.audit.all()); got != audited {
		t.Errorf("a failed token over the limit wrote %d audit events", got-audited)
	}
	if code, _, _ := ts2.do(t, http.MethodGet, "/metrics", admin); code != http.StatusOK {
		t.Errorf("a good token from an address whose failures are exhausted: got %d, want 200", code)
	}
	// Passwords are counted per username (TestAuthFailuresPerUsername).

	// Bounded map.
	small, _ := NewRateLimiter(RateLimitConfig{RequestsPerSecond: 1, Burst: 1, MaxClients: 5})
	for i := range 100 {
		small.allow("ip:" + strconv.Itoa(i))
	}
	if got := small.clients(); got > 5 {
		t.Errorf("limiter holds %d buckets, want at most 5", got)
	}
	// Without rate_limit, requests are not limited but failed
	// authentications are, at the defaults.
	off, err := NewRateLimiter(RateLimitConfig{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	off.now = func() time.Time { return now }
	for i := range 1000 {
		if _, ok := off.allow("ip:127.0.0.1"); !ok {
			t.Fatalf("request %d limited without rate_limit", i+1)
		}
	}
	for range defaultFailureBurst {
		off.tokenFailure("127.0.0.1")
	}
	if !off.tokenFailuresExhausted("127.0.0.1") {
		t.Errorf("%d failed authentications without rate_limit left the failure bucket unlimited", defaultFailureBurst)
	}
	if _, err := NewRateLimiter(RateLimitConfig{RequestsPerSecond: -1}); err == nil {
		t.Errorf("negative rate accepted")
	}
}
