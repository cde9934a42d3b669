package dicomweb_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/dicomweb"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/backendtest"
)

// browserGateway is a gateway with one stored study and a peer to send it
// to (transfers are queued, never sent: no workers run), served for real.
type browserGateway struct {
	addr      string
	transfers *gateway.Transfers
}

const browserStudy, browserSeries = "1.2.826.0.1.3680043.10.1.9", "1.2.826.0.1.3680043.10.1.9.1"

func newBrowserGateway(t *testing.T, configure func(*testWiring)) *browserGateway {
	t.Helper()
	b := backendtest.Open(t, backendtest.Embedded, backendtest.Options{})
	tr := &gateway.Transfers{Name: "test", Queue: b.Queue, Index: b.Index, Sender: dicomweb.NewClient(b.Blobs),
		Peers: []gateway.Peer{{Name: "surrey", URL: "http://127.0.0.1:9/dicomweb"}}}
	w := testWiring{ServiceDeps: gateway.ServiceDeps{Name: "test", Blobs: b.Blobs, Index: b.Index, AuditLog: b.AuditLog, Ingester: &gateway.Ingester{Blobs: b.Blobs, Index: b.Index}, Transfers: tr}}
	if configure != nil {
		configure(&w)
	}
	s := w.server()
	if _, err := w.Ingester.Store(t.Context(), bytes.NewReader(makeInstance(browserStudy, browserSeries, testSOP(0), 4, 4, 1)), gateway.StoreOptions{}); err != nil {
		t.Fatal(err)
	}
	return &browserGateway{addr: serveReal(t, s), transfers: tr}
}

// do sends a request with the given Host (the real address when "") and
// headers, and returns the status, headers and body, and whether the
// server announced it closes the connection (Connection: close, which Go's
// client takes out of the headers).
func (g *browserGateway) do(t *testing.T, method, path, host, body string, header ...string) (int, http.Header, string, bool) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, "http://"+g.addr+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b), resp.Close
}

func (g *browserGateway) queued(t *testing.T) int {
	t.Helper()
	list, err := g.transfers.List(t.Context(), gateway.TransferFilter{})
	if err != nil {
		t.Fatal(err)
	}
	return len(list)
}

// TestNoAuthServesLoopbackHostsOnly: without auth a page on another site
// that rebinds its DNS name to 127.0.0.1 reaches the gateway with its own
// name in Host; it gets 421, not patient names, and cannot queue a transfer.
// Loopback names and addresses, with any port, are served.
func TestNoAuthServesLoopbackHostsOnly(t *testing.T) {
	g := newBrowserGateway(t, nil)
	_, port, _ := strings.Cut(g.addr, ":")
	for _, host := range []string{"evil.example", "evil.example:" + port, "127.0.0.1.evil.example", "localhost.evil.example:" + port, "10.0.0.1:" + port} {
		code, _, body, closed := g.do(t, http.MethodGet, "/dicomweb/studies", host, "")
		if code != http.StatusMisdirectedRequest {
			t.Errorf("QIDO with Host %q: %d, want 421", host, code)
		}
		if strings.Contains(body, "Testpatient") {
			t.Errorf("QIDO with Host %q returned patient names: %s", host, body)
		}
		if !closed {
			t.Errorf("421 without Connection: close")
		}
		code, _, _, _ = g.do(t, http.MethodPost, "/api/v1/transfers", host,
			`{"study_uid":"`+browserStudy+`","destination":"surrey"}`, "Content-Type", "text/plain", "Origin", "http://"+host)
		if code != http.StatusMisdirectedRequest {
			t.Errorf("cross-site POST with Host %q: %d, want 421", host, code)
		}
	}
	if n := g.queued(t); n != 0 {
		t.Fatalf("%d transfers queued by foreign hosts", n)
	}
	for _, host := range []string{"localhost:" + port, "LOCALHOST", "127.0.0.1:" + port, "127.1.2.3", "[::1]:" + port} {
		if code, _, body, _ := g.do(t, http.MethodGet, "/dicomweb/studies", host, ""); code != http.StatusOK || !strings.Contains(body, "Testpatient") {
			t.Errorf("QIDO with Host %q: %d, want 200 with the study", host, code)
		}
	}
}

// TestNoAuthRefusesRelayedRequests: without auth every request acts as the
// local admin, so one a reverse proxy on this host relays (marked by any
// relaying header) gets 403 rather than handing the admin role to whoever
// reaches the proxy; health checks are still answered. With auth the same
// request is served to a token holder.
func TestNoAuthRefusesRelayedRequests(t *testing.T) {
	g := newBrowserGateway(t, nil)
	_, port, _ := strings.Cut(g.addr, ":")
	host := "127.0.0.1:" + port
	for _, h := range [][2]string{{"X-Forwarded-For", "203.0.113.9"}, {"Forwarded", "for=203.0.113.9"}, {"X-Real-IP", "203.0.113.9"},
		{"Via", "1.1 nginx"}, {"X-Forwarded-Host", "pacs.example.nhs.uk"}, {"X-Forwarded-Proto", "https"}} {
		code, _, body, _ := g.do(t, http.MethodGet, "/dicomweb/studies", host, "", h[0], h[1])
		if code != http.StatusForbidden || strings.Contains(body, "Testpatient") {
			t.Errorf("QIDO relayed with %s: %d, want 403 without patient data", h[0], code)
		}
		code, _, _, _ = g.do(t, http.MethodPost, "/api/v1/transfers", host, `{"study_uid":"`+browserStudy+`","destination":"surrey"}`,
			"Content-Type", "application/json", h[0], h[1])
		if code != http.StatusForbidden {
			t.Errorf("transfer POST relayed with %s: %d, want 403", h[0], code)
		}
		if code, _, _, _ := g.do(t, http.MethodGet, "/healthz", host, "", h[0], h[1]); code != http.StatusOK {
			t.Errorf("/healthz relayed with %s: %d, want 200", h[0], code)
		}
	}
	if n := g.queued(t); n != 0 {
		t.Fatalf("%d transfers queued through a proxy", n)
	}
	if code, _, _, _ := g.do(t, http.MethodGet, "/dicomweb/studies", host, ""); code != http.StatusOK {
		t.Errorf("QIDO from this machine, not relayed: %d, want 200", code)
	}

	auth, tokens := tokenAuth(t, dicomweb.TokenConfig{Name: "viewer", Roles: []gateway.Role{gateway.RoleRead}})
	authed := newBrowserGateway(t, func(s *testWiring) { s.Auth = auth })
	if code, _, _, _ := authed.do(t, http.MethodGet, "/dicomweb/studies", "pacs.example.nhs.uk", "", "X-Forwarded-For", "203.0.113.9",
		"Authorization", "Bearer "+tokens["viewer"]); code != http.StatusOK {
		t.Errorf("relayed QIDO with auth and a token: %d, want 200", code)
	}
}

// TestAuthServesAnyHost: with auth, Host is not checked (the gateway has a
// real name; a rebound page has no credentials).
func TestAuthServesAnyHost(t *testing.T) {
	auth, tokens := tokenAuth(t, dicomweb.TokenConfig{Name: "viewer", Roles: []gateway.Role{gateway.RoleRead}})
	g := newBrowserGateway(t, func(s *testWiring) { s.Auth = auth })
	if code, _, _, _ := g.do(t, http.MethodGet, "/dicomweb/studies", "pacs.example.nhs.uk", "", "Authorization", "Bearer "+tokens["viewer"]); code != http.StatusOK {
		t.Errorf("QIDO with a real host name and a token: %d, want 200", code)
	}
	if code, _, _, _ := g.do(t, http.MethodGet, "/dicomweb/studies", "pacs.example.nhs.uk", ""); code != http.StatusUnauthorized {
		t.Errorf("QIDO without a token: %d, want 401", code)
	}
}

// TestCrossOriginWritesRefused: a request with side effects from a page of
// another origin is refused (403) in every mode, and the admin API takes
// only JSON bodies (415), so neither a cross-site form nor a text/plain
// fetch queues a transfer. An origin listed in CORSOrigins (a viewer) may
// write to DICOMweb but not to the admin API. The gateway's own origin and
// clients without Origin (curl, PACS) are served.
func TestCrossOriginWritesRefused(t *testing.T) {
	auth, tokens := tokenAuth(t, dicomweb.TokenConfig{Name: "admin", Roles: []gateway.Role{gateway.RoleAdmin}})
	for _, mode := range []struct {
		name          string
		configure     func(*testWiring)
		authorization string
	}{
		{"no auth", func(s *testWiring) { s.CORSOrigins = []string{"https://viewer.example.nhs.uk", "*"} }, ""},
		{"auth", func(s *testWiring) {
			s.Auth = auth
			s.CORSOrigins = []string{"https://viewer.example.nhs.uk", "*"}
		}, "Bearer " + tokens["admin"]},
	} {
		t.Run(mode.name, func(t *testing.T) {
			g := newBrowserGateway(t, mode.configure)
			create := `{"study_uid":"` + browserStudy + `","destination":"surrey"}`
			post := func(path, body string, header ...string) (code int, closed bool) {
				t.Helper()
				if mode.authorization != "" {
					header = append(header, "Authorization", mode.authorization)
				}
				code, _, _, closed = g.do(t, http.MethodPost, path, "", body, header...)
				return code, closed
			}
			for _, tt := range []struct {
				name   string
				header []string
				want   int
			}{
				{"text/plain from another site", []string{"Content-Type", "text/plain", "Origin", "https://evil.example"}, http.StatusForbidden},
				{"JSON from another site", []string{"Content-Type", "application/json", "Origin", "https://evil.example"}, http.StatusForbidden},
				{"JSON from a sandboxed page", []string{"Content-Type", "application/json", "Origin", "null"}, http.StatusForbidden},
				{"JSON from another port of this host", []string{"Content-Type", "application/json", "Origin", "http://127.0.0.1:1"}, http.StatusForbidden},
				{"JSON from the listed viewer", []string{"Content-Type", "application/json", "Origin", "https://viewer.example.nhs.uk"}, http.StatusForbidden},
				{"form without Origin", []string{"Content-Type", "application/x-www-form-urlencoded"}, http.StatusUnsupportedMediaType},
				{"text/plain without Origin", []string{"Content-Type", "text/plain"}, http.StatusUnsupportedMediaType},
			} {
				code, closed := post("/api/v1/transfers", create, tt.header...)
				if code != tt.want {
					t.Errorf("%s: %d, want %d", tt.name, code, tt.want)
				}
				if !closed {
					t.Errorf("%s: %d without Connection: close", tt.name, code)
				}
			}
			if n := g.queued(t); n != 0 {
				t.Fatalf("%d transfers queued by refused requests", n)
			}
			if code, _ := post("/dicomweb/studies", "x", "Content-Type", "multipart/related; boundary=b", "Origin", "https://evil.example"); code != http.StatusForbidden {
				t.Errorf("STOW-RS from another site: %d, want 403", code)
			}
			if code, _ := post("/dicomweb/studies", "x", "Content-Type", "multipart/related; boundary=b", "Origin", "https://viewer.example.nhs.uk"); code == http.StatusForbidden {
				t.Errorf("STOW-RS from the listed viewer: %d, want it let through", code)
			}

			for _, tt := range []struct {
				name   string
				header []string
			}{
				{"own origin", []string{"Content-Type", "application/json", "Origin", "http://" + g.addr}},
				{"no Origin (curl, gateway CLI)", []string{"Content-Type", "application/json"}},
			} {
				if code, _ := post("/api/v1/transfers", create, tt.header...); code != http.StatusAccepted {
					t.Errorf("%s: %d, want 202", tt.name, code)
				}
			}
			list, err := g.transfers.List(t.Context(), gateway.TransferFilter{})
			if err != nil || len(list) == 0 {
				t.Fatalf("transfers: %v, %v", list, err)
			}
			// Cancel has no body: no Content-Type needed.
			if code, _ := post("/api/v1/transfers/"+list[0].ID+"/cancel", ""); code != http.StatusOK {
				t.Errorf("cancel without a body: %d, want 200", code)
			}
		})
	}
}

// TestCORSOriginsAndWildcard: a listed origin may use DICOMweb with credentials; "*" lets
// any other origin read without credentials (never an echoed origin with
// Access-Control-Allow-Credentials), and only with auth configured: without
// it every loopback request is the local admin, and "*" would let any web
// page read every study. The admin API gets no CORS headers.
func TestCORSOriginsAndWildcard(t *testing.T) {
	auth, tokens := tokenAuth(t, dicomweb.TokenConfig{Name: "viewer", Roles: []gateway.Role{gateway.RoleAdmin}})
	for _, withAuth := range []bool{true, false} {
		t.Run(fmt.Sprintf("auth=%v", withAuth), func(t *testing.T) {
			testCORSOriginsAndWildcard(t, withAuth, auth, "Bearer "+tokens["viewer"])
		})
	}
}

func testCORSOriginsAndWildcard(t *testing.T, withAuth bool, auth *dicomweb.Authenticator, bearer string) {
	g := newBrowserGateway(t, func(s *testWiring) {
		s.CORSOrigins = []string{"https://viewer.example.nhs.uk", "*"}
		if withAuth {
			s.Auth = auth
		}
	})
	const listed, other = "https://viewer.example.nhs.uk", "https://elsewhere.example"
	anyOrigin := ""
	if withAuth {
		anyOrigin = "*"
	}
	for _, tt := range []struct {
		name, method, path, origin string
		header                     []string
		wantOrigin, wantCreds      string
		wantStatus                 int
	}{
		{"listed reads", http.MethodGet, "/dicomweb/studies", listed, nil, listed, "true", http.StatusOK},
		{"listed preflight for STOW", http.MethodOptions, "/dicomweb/studies", listed,
			[]string{"Access-Control-Request-Method", "POST", "Access-Control-Request-Headers", "authorization, content-type"}, listed, "true", http.StatusNoContent},
		{"any origin reads", http.MethodGet, "/dicomweb/studies", other, nil, anyOrigin, "", http.StatusOK},
		{"any origin preflight for GET", http.MethodOptions, "/dicomweb/studies", other,
			[]string{"Access-Control-Request-Method", "GET", "Access-Control-Request-Headers", "authorization"}, anyOrigin, "", 0},
		{"any origin preflight for DELETE", http.MethodOptions, "/dicomweb/studies/" + browserStudy, other,
			[]string{"Access-Control-Request-Method", "DELETE"}, "", "", 0},
		{"admin API", http.MethodGet, "/api/v1/transfers", listed, nil, "", "", http.StatusOK},
	} {
		t.Run(tt.name, func(t *testing.T) {
			header := append([]string{"Origin", tt.origin}, tt.header...)
			if withAuth && tt.method != http.MethodOptions {
				header = append(header, "Authorization", bearer)
			}
			code, hdr, _, _ := g.do(t, tt.method, tt.path, "", "", header...)
			if tt.wantStatus != 0 && code != tt.wantStatus {
				t.Errorf("status %d, want %d", code, tt.wantStatus)
			}
			if got := hdr.Get("Access-Control-Allow-Origin"); got != tt.wantOrigin {
				t.Errorf("Access-Control-Allow-Origin = %q, want %q", got, tt.wantOrigin)
			}
			if got := hdr.Get("Access-Control-Allow-Credentials"); got != tt.wantCreds {
				t.Errorf("Access-Control-Allow-Credentials = %q, want %q", got, tt.wantCreds)
			}
		})
	}
}

// TestCrossSiteReadsRefused: a read the browser marks cross-site
// (Sec-Fetch-Site) from a page no CORS rule admits, such as an <img> of
// another site pointing at a study, is refused: without auth it would be
// served and audited as a read by the local admin. The gateway's own pages,
// a listed viewer's CORS read, a link to the admin page and clients that
// send no Sec-Fetch-Site (curl, PACS, other gateways) are served.
func TestCrossSiteReadsRefused(t *testing.T) {
	g := newBrowserGateway(t, func(s *testWiring) { s.CORSOrigins = []string{"https://viewer.example.nhs.uk"} })
	study := "/dicomweb/studies/" + browserStudy
	for _, tt := range []struct {
		name, path string
		header     []string
		want       int
	}{
		{"img of another site", study, []string{"Sec-Fetch-Site", "cross-site", "Sec-Fetch-Mode", "no-cors"}, http.StatusForbidden},
		{"CORS read by an unlisted site", study + "/metadata", []string{"Sec-Fetch-Site", "cross-site", "Origin", "https://evil.example"}, http.StatusForbidden},
		{"admin API from another site", "/api/v1/transfers", []string{"Sec-Fetch-Site", "cross-site"}, http.StatusForbidden},
		{"SHA-256 recompute from another site", "/api/v1/studies/" + browserStudy + "/sha256?recompute=true", []string{"Sec-Fetch-Site", "cross-site"}, http.StatusForbidden},
		{"the listed viewer", study + "/metadata", []string{"Sec-Fetch-Site", "cross-site", "Origin", "https://viewer.example.nhs.uk"}, http.StatusOK},
		{"an img of the listed viewer's page", study + "/metadata", []string{"Sec-Fetch-Site", "cross-site", "Sec-Fetch-Mode", "no-cors", "Referer", "https://viewer.example.nhs.uk/viewer?StudyInstanceUIDs=1"}, http.StatusOK},
		{"an img of another site's page", study + "/metadata", []string{"Sec-Fetch-Site", "cross-site", "Sec-Fetch-Mode", "no-cors", "Referer", "https://evil.example/page"}, http.StatusForbidden},
		{"the gateway's own page", study + "/metadata", []string{"Sec-Fetch-Site", "same-origin"}, http.StatusOK},
		{"a link to the admin page", "/ui/", []string{"Sec-Fetch-Site", "cross-site", "Sec-Fetch-Mode", "navigate"}, http.StatusOK},
		{"curl", study + "/metadata", nil, http.StatusOK},
	} {
		if code, _, body, _ := g.do(t, http.MethodGet, tt.path, "", "", append([]string{"Accept", "*/*"}, tt.header...)...); code != tt.want {
			t.Errorf("%s: %d, want %d (%.200s)", tt.name, code, tt.want, body)
		}
	}
}
