package dicomweb

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/dicom-gateway/gateway/gateway"
)

// OIDCConfig verifies OpenID Connect / OAuth2 access tokens (JWTs) sent as
// Bearer tokens. Signatures are checked with the identity provider's JWKS;
// only RS256 and ES256 are accepted (never "none", never an HMAC keyed with
// a public key).
type OIDCConfig struct {
	Issuer   string `yaml:"issuer"`   // must equal the token's iss
	Audience string `yaml:"audience"` // must be in the token's aud
	// JWKSURL is the provider's key set (jwks_uri). https only; http is
	// allowed for loopback addresses (tests, a sidecar).
	JWKSURL string `yaml:"jwks_url"`
	// CAFile, when set, is the PEM CA bundle the JWKS server's certificate must
	// chain to (a private PKI); otherwise the system roots.
	CAFile string `yaml:"ca_file"`
	// RolesClaim names the claim that holds role names, a string or an array
	// of strings; dots walk nested objects (Keycloak: realm_access.roles).
	// Default "roles".
	RolesClaim string `yaml:"roles_claim"`
	// RoleMap maps the provider's role names to gateway roles. When empty, a
	// claim value that is a gateway role name (store, read, transfer, admin)
	// is that role; other values are ignored.
	RoleMap map[string]gateway.Role `yaml:"role_map"`
	// NameClaim is the claim used as the principal's name. Default "sub".
	NameClaim string `yaml:"name_claim"`
	// ClockSkew is the leeway for exp, nbf and iat. Default 60s, at most 5m.
	ClockSkew time.Duration `yaml:"clock_skew"`
}

// JWKS cache bounds: a provider's key set is small; anything larger is
// refused rather than held.
const (
	jwksMaxBytes      = 1 << 20
	jwksMaxKeys       = 64
	jwksMaxAge        = time.Hour        // refetched after this even when every kid is known
	jwksMinRefresh    = 30 * time.Second // unknown kids refetch at most this often
	jwksFetchTimeout  = 10 * time.Second
	jwtMaxLen         = 16 << 10
	defaultClockSkew  = 60 * time.Second
	maxClockSkew      = 5 * time.Minute
	defaultRolesClaim = "roles"
	defaultNameClaim  = "sub"
	minRSAKeyBits     = 2048
)

type oidcAuth struct {
	cfg    OIDCConfig
	parser *jwt.Parser
	client *http.Client
	now    func() time.Time

	minRefresh time.Duration // jwksMinRefresh; tests shorten it

	fetchMu sync.Mutex // one fetch at a time
	mu      sync.RWMutex
	keys    map[string]jwk // by kid
	fetched time.Time      // last successful fetch
	tried   time.Time      // last attempt
	lastErr error          // of the last attempt
}

// jwk is one verified public key of the key set.
type jwk struct {
	alg string // RS256 or ES256: the only algorithm this key may verify
	key crypto.PublicKey
}

func newOIDCAuth(cfg OIDCConfig) (*oidcAuth, error) {
	var errs []error
	if cfg.Issuer == "" {
		errs = append(errs, errors.New("auth.oidc.issuer is required"))
	}
	if cfg.Audience == "" {
		errs = append(errs, errors.New("auth.oidc.audience is required"))
	}
	if err := checkJWKSURL(cfg.JWKSURL); err != nil {
		errs = append(errs, err)
	}
	if cfg.ClockSkew < 0 || cfg.ClockSkew > maxClockSkew {
		errs = append(errs, fmt.Errorf("auth.oidc.clock_skew must be between 0 and %s", maxClockSkew))
	}
	if cfg.ClockSkew == 0 {
		cfg.ClockSkew = defaultClockSkew
	}
	if cfg.RolesClaim == "" {
		cfg.RolesClaim = defaultRolesClaim
	}
	if cfg.NameClaim == "" {
		cfg.NameClaim = defaultNameClaim
	}
	for from, to := range cfg.RoleMap {
		if !knownRole(to) {
			errs = append(errs, fmt.Errorf("auth.oidc.role_map[%s]: unknown role %q (store, read, transfer, admin)", from, to))
		}
	}
	tlsConf, err := ClientTLSConfig(ClientTLSOptions{CAFile: cfg.CAFile})
	if err != nil {
		errs = append(errs, fmt.Errorf("auth.oidc.ca_file: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.TLSClientConfig = tlsConf
	o := &oidcAuth{
		cfg: cfg,
		parser: jwt.NewParser(
			jwt.WithValidMethods([]string{"RS256", "ES256"}),
			jwt.WithIssuer(cfg.Issuer),
			jwt.WithAudience(cfg.Audience),
			jwt.WithLeeway(cfg.ClockSkew),
			jwt.WithExpirationRequired(),
			jwt.WithIssuedAt(),
		),
		client: &http.Client{
			Transport: transport,
			Timeout:   jwksFetchTimeout,
			// A redirect could leave https or loopback; follow none.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		now:        time.Now,
		minRefresh: jwksMinRefresh,
		keys:       map[string]jwk{},
	}
	return o, nil
}

// checkJWKSURL accepts https, and http only to a loopback address.
func checkJWKSURL(raw string) error {
	if raw == "" {
		return errors.New("auth.oidc.jwks_url is required")
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return errors.New("auth.oidc.jwks_url is not an absolute URL")
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		host := u.Hostname()
		if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
			return nil
		}
	}
	return errors.New("auth.oidc.jwks_url must use https (http only for a loopback address)")
}

// authenticate verifies raw and maps its claims to a principal.
func (o *oidcAuth) authenticate(ctx context.Context, raw string) (gateway.Principal, error) {
	if len(raw) > jwtMaxLen {
		return gateway.Principal{}, fmt.Errorf("bearer token too long: %w", gateway.ErrUnauthenticated)
	}
	claims := jwt.MapClaims{}
	var fetchErr error
	_, err := o.parser.ParseWithClaims(raw, claims, func(t *jwt.Token) (any, error) {
		k, err := o.key(ctx, t)
		fetchErr = err
		return k, err
	})
	if err != nil {
		if errors.Is(fetchErr, gateway.ErrUnavailable) {
			return gateway.Principal{}, fetchErr
		}
		return gateway.Principal{}, fmt.Errorf("jwt %s: %w", jwtReason(err), gateway.ErrUnauthenticated)
	}
	name, _ := claimAt(claims, o.cfg.NameClaim).(string)
	if name == "" {
		return gateway.Principal{}, fmt.Errorf("jwt has no %s claim: %w", o.cfg.NameClaim, gateway.ErrUnauthenticated)
	}
	return gateway.Principal{Name: name, Roles: o.roles(claimAt(claims, o.cfg.RolesClaim)), Method: "oidc"}, nil
}

// errUnknownKID is returned by the key function when the key set, even
// refreshed, has no key for the token's kid.
var errUnknownKID = errors.New("unknown key id")

// jwtReason is a fixed description of why a token was refused. It never
// quotes the token or its claims: reasons are audited and sent back.
func jwtReason(err error) string {
	for _, r := range []struct {
		err    error
		reason string
	}{
		{jwt.ErrTokenExpired, "expired"},
		{jwt.ErrTokenNotValidYet, "not valid yet"},
		{jwt.ErrTokenUsedBeforeIssued, "issued in the future"},
		{jwt.ErrTokenInvalidIssuer, "wrong issuer"},
		{jwt.ErrTokenInvalidAudience, "wrong audience"},
		{jwt.ErrTokenRequiredClaimMissing, "missing a required claim"},
		{jwt.ErrTokenSignatureInvalid, "bad signature or algorithm"},
		{jwt.ErrTokenUnverifiable, "unverifiable (algorithm or key)"},
		{jwt.ErrTokenMalformed, "malformed"},
	} {
		if errors.Is(err, r.err) {
			return r.reason
		}
	}
	return "invalid"
}

// key returns the key for t's kid, checking that the key may verify t's
// algorithm, and refetches the key set when the kid is unknown (at most
// once per minRefresh) or the set is older than jwksMaxAge.
func (o *oidcAuth) key(ctx context.Context, t *jwt.Token) (any, error) {
	kid, _ := t.Header["kid"].(string)
	alg, _ := t.Header["alg"].(string)
	k, ok, stale := o.lookup(kid)
	if !ok || stale {
		if err := o.refresh(ctx, !ok); err != nil && !ok {
			return nil, err
		}
		k, ok, _ = o.lookup(kid)
	}
	if !ok {
		return nil, errUnknownKID
	}
	if k.alg != alg {
		return nil, fmt.Errorf("key %s is for %s, not %s", kid, k.alg, alg)
	}
	return k.key, nil
}

// lookup finds kid; a token without kid matches only a set of one key.
func (o *oidcAuth) lookup(kid string) (k jwk, ok, stale bool) {
	o.mu.RLock()
	defer o.mu.RUnlock()
	stale = o.now().Sub(o.fetched) > jwksMaxAge
	if kid == "" && len(o.keys) == 1 {
		for _, k := range o.keys {
			return k, true, stale
		}
	}
	k, ok = o.keys[kid]
	return k, ok, stale
}

// refresh fetches the key set unless another fetch ran within minRefresh.
// It returns an error wrapping gateway.ErrUnavailable when the provider
// cannot be reached or answers nonsense; the cached keys then stay.
func (o *oidcAuth) refresh(ctx context.Context, unknownKID bool) error {
	o.fetchMu.Lock()
	defer o.fetchMu.Unlock()
	o.mu.RLock()
	recent, lastErr, empty := o.now().Sub(o.tried) < o.minRefresh, o.lastErr, len(o.keys) == 0
	o.mu.RUnlock()
	if recent {
		switch {
		case empty && lastErr != nil:
			return lastErr // the provider was down a moment ago: still unavailable
		case unknownKID:
			return errUnknownKID
		}
		return nil
	}
	o.mu.Lock()
	o.tried = o.now()
	o.mu.Unlock()
	keys, err := o.fetch(ctx)
	if err != nil {
		err = fmt.Errorf("oidc key set: %v: %w", err, gateway.ErrUnavailable)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.lastErr = err
	if err == nil {
		o.keys, o.fetched = keys, o.now()
	}
	return err
}

func (o *oidcAuth) fetch(ctx context.Context) (map[string]jwk, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), jwksFetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, o.cfg.JWKSURL, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := o.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET jwks_url: %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, jwksMaxBytes+1))
	if err != nil {
		return nil, err
	}
	if len(body) > jwksMaxBytes {
		return nil, fmt.Errorf("key set larger than %d bytes", jwksMaxBytes)
	}
	return parseJWKS(body)
}

// parseJWKS keeps the usable signing keys of a JWK Set: RSA keys of at
// least 2048 bits (RS256) and P-256 EC keys (ES256). Encryption keys, other
// types and keys without kid (in a set of several) are skipped.
func parseJWKS(body []byte) (map[string]jwk, error) {
	var set struct {
		Keys []struct {
			Kty string `json:"kty"`
			Kid string `json:"kid"`
			Use string `json:"use"`
			Alg string `json:"alg"`
			N   string `json:"n"`
			E   string `json:"e"`
			Crv string `json:"crv"`
			X   string `json:"x"`
			Y   string `json:"y"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(body, &set); err != nil {
		return nil, fmt.Errorf("key set is not JSON: %v", err)
	}
	if len(set.Keys) > jwksMaxKeys {
		return nil, fmt.Errorf("key set has %d keys, more than %d", len(set.Keys), jwksMaxKeys)
	}
	keys := map[string]jwk{}
	b64 := base64.RawURLEncoding
	for _, k := range set.Keys {
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		switch k.Kty {
		case "RSA":
			if k.Alg != "" && k.Alg != "RS256" {
				continue
			}
			n, err1 := b64.DecodeString(k.N)
			e, err2 := b64.DecodeString(k.E)
			if err1 != nil || err2 != nil || len(e) == 0 || len(e) > 4 {
				continue
			}
			pub := &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
			if pub.N.BitLen() < minRSAKeyBits || pub.E < 3 || pub.E%2 == 0 {
				continue
			}
			keys[k.Kid] = jwk{alg: "RS256", key: pub}
		case "EC":
			if k.Crv != "P-256" || (k.Alg != "" && k.Alg != "ES256") {
				continue
			}
			x, err1 := b64.DecodeString(k.X)
			y, err2 := b64.DecodeString(k.Y)
			if err1 != nil || err2 != nil || len(x) != 32 || len(y) != 32 {
				continue
			}
			pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
			if err != nil {
				continue // not on the curve
			}
			keys[k.Kid] = jwk{alg: "ES256", key: pub}
		}
	}
	if len(keys) > 1 {
		delete(keys, "") // without kid a key is usable only alone
	}
	if len(keys) == 0 {
		return nil, errors.New("key set has no usable RS256 or ES256 signing key")
	}
	return keys, nil
}

// claimAt walks a dotted path (realm_access.roles) through nested objects.
func claimAt(claims map[string]any, path string) any {
	var v any = claims
	for part := range strings.SplitSeq(path, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[part]
	}
	return v
}

// roles maps a roles claim (a string, space- or comma-separated, or an array
// of strings) to gateway roles, dropping values that map to none.
func (o *oidcAuth) roles(v any) []gateway.Role {
	var names []string
	switch v := v.(type) {
	case string:
		names = strings.FieldsFunc(v, func(r rune) bool { return r == ' ' || r == ',' })
	case []any:
		for _, e := range v {
			if s, ok := e.(string); ok {
				names = append(names, s)
			}
		}
	}
	var roles []gateway.Role
	for _, n := range names {
		r := gateway.Role(n)
		if len(o.cfg.RoleMap) > 0 {
			var ok bool
			if r, ok = o.cfg.RoleMap[n]; !ok {
				continue
			}
		}
		if knownRole(r) {
			roles = append(roles, r)
		}
	}
	return roles
}
