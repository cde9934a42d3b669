package dicomweb

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/gateway"
)

// newUITestServer serves the routes with auth configured, so that the test
// also shows the page loads without a token while the APIs do not.
func newUITestServer(t *testing.T) *httptest.Server {
	t.Helper()
	sum := sha256.Sum256([]byte("secret-token"))
	auth, err := NewAuthenticator(AuthConfig{Tokens: []TokenConfig{{Name: "admin", SHA256: hex.EncodeToString(sum[:]), Roles: []gateway.Role{gateway.RoleAdmin}}}})
	if err != nil {
		t.Fatal(err)
	}
	s := wiring{cfg: Config{Auth: auth}}.serve()
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	return srv
}

func TestUIAssets(t *testing.T) {
	srv := newUITestServer(t)
	for _, tt := range []struct {
		path, ctype, contains string
	}{
		{"/ui/", "text/html; charset=utf-8", "<title>DICOM gateway</title>"},
		{"/ui/index.html", "text/html; charset=utf-8", `<script src="app.js"`},
		{"/ui/app.js", "text/javascript; charset=utf-8", "/api/v1/transfers"},
		{"/ui/app.css", "text/css; charset=utf-8", ".progress"},
		{"/ui/favicon.svg", "image/svg+xml", "<svg"},
	} {
		res, err := http.Get(srv.URL + tt.path)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if got, want := res.StatusCode, http.StatusOK; got != want {
			t.Errorf("GET %s: status=%d, want %d", tt.path, got, want)
			continue
		}
		if got := res.Header.Get("Content-Type"); got != tt.ctype {
			t.Errorf("GET %s: Content-Type=%q, want %q", tt.path, got, tt.ctype)
		}
		csp := res.Header.Get("Content-Security-Policy")
		if !strings.Contains(csp, "default-src 'self'") || strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "unsafe-eval") {
			t.Errorf("GET %s: Content-Security-Policy=%q, want default-src 'self' without unsafe-*", tt.path, csp)
		}
		if got, want := res.Header.Get("X-Content-Type-Options"), "nosniff"; got != want {
			t.Errorf("GET %s: X-Content-Type-Options=%q, want %q", tt.path, got, want)
		}
		if !strings.Contains(string(body), tt.contains) {
			t.Errorf("GET %s: body lacks %q", tt.path, tt.contains)
		}
	}
}

// TestUIPageIsSelfContained keeps the page loadable on a closed network and
// under the CSP: no external URLs, no inline script or style.
func TestUIPageIsSelfContained(t *testing.T) {
	for _, name := range []string{"ui/index.html", "ui/app.js", "ui/app.css"} {
		b, err := uiFiles.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		for _, bad := range []string{"http://", "https://", "//cdn", "@import", "fonts.googleapis"} {
			if strings.Contains(s, bad) {
				t.Errorf("%s contains %q: the page must load nothing from elsewhere", name, bad)
			}
		}
		if strings.HasSuffix(name, ".html") {
			for _, bad := range []string{"<script>", "style=", " onclick=", " onload=", "<style"} {
				if strings.Contains(s, bad) {
					t.Errorf("%s contains %q, which the Content-Security-Policy blocks", name, bad)
				}
			}
		}
	}
}

func TestUIRedirectAndNotFound(t *testing.T) {
	srv := newUITestServer(t)
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	res, err := client.Get(srv.URL + "/ui")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if got, want := res.StatusCode, http.StatusMovedPermanently; got != want {
		t.Errorf("GET /ui: status=%d, want %d", got, want)
	}
	if got, want := res.Header.Get("Location"), "/ui/"; got != want {
		t.Errorf("GET /ui: Location=%q, want %q", got, want)
	}
	// The root redirects to the page without credentials (auth is on here):
	// a redirect carries no data.
	res, err = client.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if got, want := res.StatusCode, http.StatusFound; got != want {
		t.Errorf("GET /: status=%d, want %d", got, want)
	}
	if got, want := res.Header.Get("Location"), "/ui/"; got != want {
		t.Errorf("GET /: Location=%q, want %q", got, want)
	}
	for _, p := range []string{"/ui/nope.js", "/ui/../go.mod", "/ui/%2e%2e/ui.go", "/ui/ui.go"} {
		res, err := http.Get(srv.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: status=%d, want 404", p, res.StatusCode)
		}
	}
}
