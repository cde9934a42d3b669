package dicomweb

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/dicom-gateway/gateway/gateway"
)

func basicHeader(user, password string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+password))
}

// basicUsersAuth configures the basic users name:password (role admin).
func basicUsersAuth(t *testing.T, users map[string]string) *Authenticator {
	t.Helper()
	return basicUsersAuthCost(t, users, bcrypt.MinCost)
}

// basicUsersAuthCost is basicUsersAuth with hashes of the given bcrypt cost.
func basicUsersAuthCost(t *testing.T, users map[string]string, cost int) *Authenticator {
	t.Helper()
	var cfg AuthConfig
	for user, pw := range users {
		h, err := bcrypt.GenerateFromPassword([]byte(pw), cost)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Basic = append(cfg.Basic, BasicConfig{Name: user, Username: user, PasswordHash: string(h), Roles: []gateway.Role{gateway.RoleAdmin}})
	}
	a, err := NewAuthenticator(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// frozenLimiter is a limiter whose clock never moves, so no bucket refills
// during the test.
func frozenLimiter(t *testing.T, burst int) *RateLimiter {
	t.Helper()
	rl, err := NewRateLimiter(RateLimitConfig{RequestsPerSecond: 1, Burst: burst})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	rl.now = func() time.Time { return now }
	return rl
}

// TestAuthFailuresPerUsername checks that guessing one user's password from
// an address does not lock out another user's good password from the same
// address (issue 16: one NAT, one bucket), and that the address still has a
// ceiling over all usernames, past which passwords get 429 before bcrypt.
func TestAuthFailuresPerUsername(t *testing.T) {
	const burst = 3
	auth := basicUsersAuth(t, map[string]string{"pacs": "pacs-pw", "admin": "admin-pw"})
	ts := newAuthTestServer(t, wiring{cfg: Config{Auth: auth, RateLimit: frozenLimiter(t, burst)}})

	for i := range burst {
		if code, _, _ := ts.do(t, http.MethodGet, "/metrics", basicHeader("admin", "guess-"+strconv.Itoa(i))); code != http.StatusUnauthorized {
			t.Fatalf("guess %d: got %d, want 401", i, code)
		}
	}
	if code, _, _ := ts.do(t, http.MethodGet, "/metrics", basicHeader("admin", "admin-pw")); code != http.StatusTooManyRequests {
		t.Fatalf("admin after %d failures: got %d, want 429 (even with the right password)", burst, code)
	}
	if code, _, _ := ts.do(t, http.MethodGet, "/metrics", basicHeader("pacs", "pacs-pw")); code != http.StatusOK {
		t.Fatalf("another user's good password from the same address: got %d, want 200", code)
	}

	// Spraying usernames: the address's ceiling (failCeiling × burst failures
	// over all usernames) ends it, burst failures of it already used.
	refused := 0
	for i := range failCeiling * burst {
		code, _, _ := ts.do(t, http.MethodGet, "/metrics", basicHeader("user"+strconv.Itoa(i), "x"))
		switch code {
		case http.StatusUnauthorized:
		case http.StatusTooManyRequests:
			refused++
		default:
			t.Fatalf("sprayed username %d: got %d", i, code)
		}
	}
	if got, want := refused, burst; got != want {
		t.Errorf("sprayed usernames refused with 429: %d, want %d (ceiling %d failures)", got, want, failCeiling*burst)
	}
	if code, _, _ := ts.do(t, http.MethodGet, "/metrics", basicHeader("pacs", "pacs-pw")); code != http.StatusTooManyRequests {
		t.Errorf("good password from an address over its ceiling: got %d, want 429", code)
	}
}

// TestClientNet checks the rate-limit identity of client addresses: IPv4
// per address, IPv6 per /64.
func TestClientNet(t *testing.T) {
	for _, tt := range []struct{ ip, want string }{
		{"192.0.2.7", "192.0.2.7"},
		{"::ffff:192.0.2.7", "192.0.2.7"},
		{"2001:db8:1:2::1", "2001:db8:1:2::/64"},
		{"2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"},
		{"fe80::1%eth0", "fe80::/64"},
		{"not-an-ip", "not-an-ip"},
	} {
		if got := clientNet(tt.ip); got != tt.want {
			t.Errorf("clientNet(%q) = %q, want %q", tt.ip, got, tt.want)
		}
	}
}

// TestAuthFailuresIPv6PerSlash64 checks that an IPv6 client cannot get a
// fresh allowance of password guesses by moving to another address of its
// /64.
func TestAuthFailuresIPv6PerSlash64(t *testing.T) {
	auth := basicUsersAuth(t, map[string]string{"pacs": "pacs-pw"})
	ts := newAuthTestServer(t, wiring{cfg: Config{Auth: auth, RateLimit: frozenLimiter(t, 2)}})
	h := ts.Config.Handler
	from := func(addr string) int {
		req := httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/metrics", nil)
		req.RemoteAddr = addr
		req.Header.Set("Authorization", basicHeader("pacs", "guess"))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code
	}
	for _, addr := range []string{"[2001:db8:1:2::1]:5000", "[2001:db8:1:2::2]:5000"} {
		if got := from(addr); got != http.StatusUnauthorized {
			t.Fatalf("%s: got %d, want 401", addr, got)
		}
	}
	if got := from("[2001:db8:1:2::3]:5000"); got != http.StatusTooManyRequests {
		t.Errorf("third address of the same /64: got %d, want 429", got)
	}
	if got := from("[2001:db8:1:3::1]:5000"); got != http.StatusUnauthorized {
		t.Errorf("another /64: got %d, want 401 (its own bucket)", got)
	}
}

// TestAuthBasicBcryptBounded checks that bcrypt work is bounded without any
// rate_limit: with every slot and queue place taken, a password gets 503
// with Retry-After (not audited as a failure), and gets checked again once
// the slots free.
func TestAuthBasicBcryptBounded(t *testing.T) {
	auth := basicUsersAuth(t, map[string]string{"pacs": "pacs-pw"})
	ts := newAuthTestServer(t, wiring{cfg: Config{Auth: auth}})
	slots := auth.basic.slots
	for range cap(slots.admit) {
		slots.admit <- struct{}{}
	}
	code, hdr, _ := ts.do(t, http.MethodGet, "/metrics", basicHeader("pacs", "wrong"))
	if code != http.StatusServiceUnavailable || hdr.Get("Retry-After") == "" {
		t.Errorf("password with every bcrypt slot taken: got %d (Retry-After %q), want 503 with Retry-After", code, hdr.Get("Retry-After"))
	}
	if n := len(ts.audit.all()); n != 0 {
		t.Errorf("a refused password check wrote %d audit events, want 0", n)
	}
	for range cap(slots.admit) {
		<-slots.admit
	}
	if code, _, _ := ts.do(t, http.MethodGet, "/metrics", basicHeader("pacs", "pacs-pw")); code != http.StatusOK {
		t.Errorf("after the slots freed: got %d, want 200", code)
	}
}

// TestBcryptSlots checks that at most the configured number of checks run
// at once: with every running slot taken the next one waits (here: until its
// context ends), and the queue behind them is bounded.
func TestBcryptSlots(t *testing.T) {
	s := newBcryptSlots(2)
	var releases []func()
	for range 2 {
		r, err := s.acquire(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		releases = append(releases, r)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := s.acquire(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("third acquire with both slots running: %v, want it to wait until its context ended", err)
	}
	releases[0]()
	r, err := s.acquire(t.Context())
	if err != nil {
		t.Fatalf("acquire after a release: %v", err)
	}
	r()
	releases[1]()
	if got, want := cap(s.admit), 2*(1+bcryptWaitersPerSlot); got != want {
		t.Errorf("queue bound %d, want %d", got, want)
	}
	if len(s.admit) != 0 || len(s.run) != 0 {
		t.Errorf("slots leaked: admit %d, run %d", len(s.admit), len(s.run))
	}
}

// TestPeersAPIRedactsURLCredentials checks that GET /api/v1/peers never
// shows a password written into a peer URL (config load refuses such URLs;
// this is the second line).
func TestPeersAPIRedactsURLCredentials(t *testing.T) {
	ts := newAuthTestServer(t, wiring{deps: gateway.ServiceDeps{Transfers: &gateway.Transfers{Peers: []gateway.Peer{
		{Name: "surrey", URL: "https://pacs:hunter2@surrey.example/dicomweb", AdminURL: "https://pacs:hunter2@surrey.example/api/v1"},
	}}}})
	code, _, body := ts.do(t, http.MethodGet, "/api/v1/peers", "")
	if code != http.StatusOK || !strings.Contains(body, "surrey.example") {
		t.Fatalf("GET /api/v1/peers = %d %s", code, body)
	}
	if strings.Contains(body, "hunter2") {
		t.Errorf("GET /api/v1/peers shows the password in a peer URL: %s", body)
	}
}

// TestConcurrentGuessesTakeTheirFailureFirst: with a failure bucket of one
// and a clock that never refills it, twenty wrong passwords for one user
// sent at once get one password check (401) and nineteen 429s. The
// failure is taken before bcrypt runs; checked after it, every concurrent
// guess passed while the bucket still had its token.
func TestConcurrentGuessesTakeTheirFailureFirst(t *testing.T) {
	// The cost `gateway hash-password` uses: checks long enough to overlap.
	auth := basicUsersAuthCost(t, map[string]string{"admin": "admin-pw"}, bcrypt.DefaultCost)
	ts := newAuthTestServer(t, wiring{cfg: Config{Auth: auth, RateLimit: frozenLimiter(t, 1)}})
	const n = 20
	codes := make([]int, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			codes[i], _, _ = ts.do(t, http.MethodGet, "/metrics", basicHeader("admin", "guess-"+strconv.Itoa(i)))
		})
	}
	close(start)
	wg.Wait()
	if checked := slices.Index(codes, http.StatusUnauthorized); checked < 0 || slices.Index(codes[checked+1:], http.StatusUnauthorized) >= 0 {
		t.Errorf("answers %v: want exactly one 401 (one password checked) and 429 for the rest", codes)
	}
	if got := len(ts.audit.all()); got != 1 {
		t.Errorf("%d auth.failure events, want 1", got)
	}
}

// TestFailuresLimitedWithoutRateLimit: with no rate_limit section, bad
// tokens past the default failure burst are still answered 401 (a viewer
// refreshes its token, a peer stops) but neither counted nor audited, so a
// flood of them cannot flood the audit log; requests without credentials
// likewise; and none of them holds a user's password back.
func TestFailuresLimitedWithoutRateLimit(t *testing.T) {
	cfg, tokens := tokenPerRole(t)
	auth, err := NewAuthenticator(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := newAuthTestServer(t, wiring{cfg: Config{Auth: auth}}) // RateLimit nil: the default
	const n = 200
	for i := range n {
		if code, _, _ := ts.do(t, http.MethodGet, "/metrics", "Bearer not-a-token-"+strconv.Itoa(i)); code != http.StatusUnauthorized {
			t.Fatalf("bad token %d: %d, want 401", i, code)
		}
	}
	if got := len(ts.audit.all()); got > 2*defaultFailureBurst {
		t.Errorf("%d bad tokens wrote %d audit events, want at most %d", n, got, 2*defaultFailureBurst)
	}
	audited := len(ts.audit.all())
	code, hdr, _ := ts.do(t, http.MethodGet, "/metrics", "")
	if code != http.StatusUnauthorized || len(hdr.Values("WWW-Authenticate")) == 0 {
		t.Errorf("no credentials after the flood: %d, WWW-Authenticate %q; want 401 with a challenge", code, hdr.Values("WWW-Authenticate"))
	}
	if got := len(ts.audit.all()); got != audited {
		t.Errorf("a request without credentials past the limit wrote %d audit events", got-audited)
	}
	if code, _, _ := ts.do(t, http.MethodGet, "/metrics", "Bearer "+tokens[gateway.RoleAdmin]); code != http.StatusOK {
		t.Errorf("a good token after the flood: %d, want 200 (requests are not limited)", code)
	}
}

// TestGoodPasswordsTakeNoFailure: with no rate_limit section and the real
// clock, thirty requests with the right password in a row all succeed. A
// password check reserves its failure while it runs; a right password must
// give it back. Before, the give-back (rate.Reservation.CancelAt at a later
// time) restored nothing, and the eleventh good request got 429.
func TestGoodPasswordsTakeNoFailure(t *testing.T) {
	auth := basicUsersAuth(t, map[string]string{"pacs": "pacs-pw"})
	ts := newAuthTestServer(t, wiring{cfg: Config{Auth: auth}})
	for i := range 30 {
		if code, _, _ := ts.do(t, http.MethodGet, "/metrics", basicHeader("pacs", "pacs-pw")); code != http.StatusOK {
			t.Fatalf("request %d with the right password: %d, want 200", i+1, code)
		}
	}
}
