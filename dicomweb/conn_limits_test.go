package dicomweb_test

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/dicomweb"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/backendtest"
	"github.com/dicom-gateway/gateway/internal/testpki"
)

// hangGuard bounds every wait on a socket in these tests so that a
// regression fails instead of hanging; the assertions are about what the
// server does (answer, close), never how fast.
const hangGuard = 20 * time.Second

// shortTimeouts are the server's client deadlines shrunk for tests.
var shortTimeouts = dicomweb.Timeouts{
	ReadHeader: 2 * time.Second,
	Read:       200 * time.Millisecond,
	StowIdle:   200 * time.Millisecond,
	WriteIdle:  200 * time.Millisecond,
	Idle:       5 * time.Second,
}

// serveReal serves s the way gateway serve does (s.HTTPServer on a listener
// wrapped by s.LimitListener) on a loopback port and returns its address.
func serveReal(t testing.TB, s *dicomweb.Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := s.HTTPServer()
	go func() { _ = srv.Serve(s.LimitListener(ln)) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// tokenAuth configures one bearer token per entry (name → roles, peer) and
// returns the Authenticator and the tokens by name.
func tokenAuth(t testing.TB, creds ...dicomweb.TokenConfig) (*dicomweb.Authenticator, map[string]string) {
	t.Helper()
	tokens := map[string]string{}
	var cfg dicomweb.AuthConfig
	for i, c := range creds {
		tok := fmt.Sprintf("token-%d-%s", i, c.Name)
		sum := sha256.Sum256([]byte(tok))
		c.SHA256 = hex.EncodeToString(sum[:])
		cfg.Tokens = append(cfg.Tokens, c)
		tokens[c.Name] = tok
	}
	auth, err := dicomweb.NewAuthenticator(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return auth, tokens
}

// dialRaw opens a TCP connection to addr and writes head (request line and
// headers, CRLF-separated, without the blank line) and then body.
func dialRaw(t testing.TB, addr, head, body string) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, hangGuard)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := io.WriteString(conn, head+"\r\n\r\n"+body); err != nil {
		t.Fatal(err)
	}
	return conn
}

// answerThenClosed reads one response from conn, then requires the server
// to close the connection: a read that runs into hangGuard means the
// connection was left open.
func answerThenClosed(t testing.TB, conn net.Conn) *http.Response {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(hangGuard))
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if _, err := br.ReadByte(); !closedErr(err) {
		t.Fatalf("after the %d answer the connection is still open (read: %v)", resp.StatusCode, err)
	}
	return resp
}

// closedErr reports whether a read error means the peer closed the
// connection (EOF or reset), not a timeout or data.
func closedErr(err error) bool {
	if err == nil {
		return false
	}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return false
	}
	return true
}

// TestSlowClientRefusedBeforeBody: a POST that declares a body and never
// sends it gets its 401, 403 or 429 at once, with Connection: close, and the
// connection is closed; net/http no longer waits to drain the body first.
func TestSlowClientRefusedBeforeBody(t *testing.T) {
	auth, tokens := tokenAuth(t,
		dicomweb.TokenConfig{Name: "reader", Roles: []gateway.Role{gateway.RoleRead}},
		dicomweb.TokenConfig{Name: "pacs", Roles: []gateway.Role{gateway.RoleStore}},
	)
	limiter, err := dicomweb.NewRateLimiter(dicomweb.RateLimitConfig{RequestsPerSecond: 0.001, Burst: 1})
	if err != nil {
		t.Fatal(err)
	}
	plain := serveReal(t, testWiring{Config: dicomweb.Config{Auth: auth}, ServiceDeps: gateway.ServiceDeps{Name: "test"}}.server())
	limited := serveReal(t, testWiring{Config: dicomweb.Config{Auth: auth, RateLimit: limiter}, ServiceDeps: gateway.ServiceDeps{Name: "test"}}.server())
	// net/http drains up to 256 KiB of an unread body before answering on
	// a kept-alive connection, and all of a chunked one before closing: a
	// client that sends nothing held the answer or the connection.
	stow := func(addr, authorization, framing string) string {
		h := "POST /dicomweb/studies HTTP/1.1\r\nHost: " + addr +
			"\r\nContent-Type: multipart/related; type=\"application/dicom\"; boundary=b\r\n" + framing
		if authorization != "" {
			h += "\r\nAuthorization: " + authorization
		}
		return h
	}
	// Spend the store token's one request of the rate limit.
	answerThenClosed(t, dialRaw(t, limited, stow(limited, "Bearer "+tokens["pacs"], "Content-Length: 0\r\nConnection: close"), ""))
	for _, tt := range []struct {
		name, addr, authorization string
		want                      int
	}{
		{"no credentials", plain, "", http.StatusUnauthorized},
		{"wrong role", plain, "Bearer " + tokens["reader"], http.StatusForbidden},
		{"rate limited", limited, "Bearer " + tokens["pacs"], http.StatusTooManyRequests},
	} {
		for _, framing := range []string{"Content-Length: 1000", "Transfer-Encoding: chunked"} {
			t.Run(tt.name+", "+framing, func(t *testing.T) {
				t.Parallel()
				resp := answerThenClosed(t, dialRaw(t, tt.addr, stow(tt.addr, tt.authorization, framing), ""))
				if resp.StatusCode != tt.want {
					t.Errorf("status = %d, want %d", resp.StatusCode, tt.want)
				}
				if !resp.Close {
					t.Errorf("Connection: %q, want close", resp.Header.Get("Connection"))
				}
			})
		}
	}
}

// TestRefusalReachesSendingClient: a client still sending its body when
// it is refused gets the 401, not a connection reset that would destroy it
// (a peer gateway with a wrong token must see a permanent 401, not a
// network error to retry). Over TLS, as peers send.
func TestRefusalReachesSendingClient(t *testing.T) {
	auth, _ := tokenAuth(t, dicomweb.TokenConfig{Name: "pacs", Roles: []gateway.Role{gateway.RoleStore}})
	// Failures allowed fast enough that all 50 are answered 401, not 429.
	limiter, err := dicomweb.NewRateLimiter(dicomweb.RateLimitConfig{RequestsPerSecond: 1000})
	if err != nil {
		t.Fatal(err)
	}
	s := testWiring{Config: dicomweb.Config{Auth: auth, RateLimit: limiter}, ServiceDeps: gateway.ServiceDeps{Name: "test"}}.server()
	pki := testpki.NewCA(t, "refusal test CA")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := s.HTTPServer()
	srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{pki.Server(t, "127.0.0.1").TLS}}
	go func() { _ = srv.ServeTLS(s.LimitListener(ln), "", "") }()
	t.Cleanup(func() { _ = srv.Close() })
	client := &http.Client{Timeout: hangGuard, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.Pool}}}
	body := bytes.Repeat([]byte("x"), 64<<10)
	for i := range 50 {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, "https://"+ln.Addr().String()+"/dicomweb/studies", bytes.NewReader(body))
		req.Header.Set("Content-Type", `multipart/related; type="application/dicom"; boundary=b`)
		req.Header.Set("Authorization", "Bearer wrong-token")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("request %d: %v, want a 401", i, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("request %d: %d, want 401", i, resp.StatusCode)
		}
	}
}

// TestSlowClientBodyDeadlines: an authorised client that declares a body
// and stops sending it is cut off by the body deadline: Timeouts.Read for
// the admin API, Timeouts.StowIdle for STOW-RS. Each gets an answer and its
// connection is closed.
func TestSlowClientBodyDeadlines(t *testing.T) {
	auth, tokens := tokenAuth(t, dicomweb.TokenConfig{Name: "admin", Roles: []gateway.Role{gateway.RoleAdmin}})
	b := backendtest.Open(t, backendtest.Embedded, backendtest.Options{})
	s := testWiring{Config: dicomweb.Config{Auth: auth, Timeouts: shortTimeouts}, ServiceDeps: gateway.ServiceDeps{Name: "test", Blobs: b.Blobs, Index: b.Index, AuditLog: b.AuditLog, Ingester: &gateway.Ingester{Blobs: b.Blobs, Index: b.Index}, Transfers: &gateway.Transfers{Name: "test", Queue: b.Queue, Index: b.Index}}}.server()
	addr := serveReal(t, s)
	for _, tt := range []struct{ name, head, body string }{
		{"admin API", "POST /api/v1/transfers HTTP/1.1\r\nHost: " + addr + "\r\nContent-Type: application/json\r\nContent-Length: 1000",
			`{"study_uid":`},
		{"STOW-RS", "POST /dicomweb/studies HTTP/1.1\r\nHost: " + addr +
			"\r\nContent-Type: multipart/related; type=\"application/dicom\"; boundary=b\r\nContent-Length: 100000000",
			"--b\r\nContent-Type: application/dicom\r\n\r\nDICM"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp := answerThenClosed(t, dialRaw(t, addr, tt.head+"\r\nAuthorization: Bearer "+tokens["admin"], tt.body))
			if resp.StatusCode < 400 {
				t.Errorf("status = %d for a body that never came, want an error", resp.StatusCode)
			}
		})
	}
}

// TestSlowClientStowTrickle: a STOW-RS client that keeps sending, but a
// byte at a time, never delivers 64 KiB within Timeouts.StowIdle and is cut
// off like one that sends nothing.
func TestSlowClientStowTrickle(t *testing.T) {
	b := backendtest.Open(t, backendtest.Embedded, backendtest.Options{})
	addr := serveReal(t, testWiring{Config: dicomweb.Config{Timeouts: shortTimeouts}, ServiceDeps: gateway.ServiceDeps{Name: "test", Blobs: b.Blobs, Index: b.Index, Ingester: &gateway.Ingester{Blobs: b.Blobs, Index: b.Index}}}.server())
	conn := dialRaw(t, addr, "POST /dicomweb/studies HTTP/1.1\r\nHost: "+addr+
		"\r\nContent-Type: multipart/related; type=\"application/dicom\"; boundary=b\r\nContent-Length: 100000000",
		"--b\r\nContent-Type: application/dicom\r\n\r\n")
	done := make(chan struct{})
	defer close(done)
	go func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for stop := time.After(hangGuard); ; {
			select {
			case <-done:
				return
			case <-stop:
				return
			case <-tick.C:
				if _, err := conn.Write([]byte{0}); err != nil {
					return
				}
			}
		}
	}()
	if resp := answerThenClosed(t, conn); resp.StatusCode < 400 {
		t.Errorf("status = %d for a trickled body, want an error", resp.StatusCode)
	}
}

// TestStalledReaderFreesRetrieveSlot: a client that asks for an instance and
// never reads the answer holds the only retrieve slot until the write
// deadline (Timeouts.WriteIdle) passes without progress; then its response
// is cut, its connection closed and the next retrieve is served.
func TestStalledReaderFreesRetrieveSlot(t *testing.T) {
	for _, backend := range stowBackends {
		t.Run(backend.name, func(t *testing.T) {
			blobs, index := backend.open(t)
			w := testWiring{Config: dicomweb.Config{Timeouts: shortTimeouts, MaxConcurrentRetrieve: 1}, ServiceDeps: gateway.ServiceDeps{Name: "test", Blobs: blobs, Index: index, Ingester: &gateway.Ingester{Blobs: blobs, Index: index}}}
			s := w.server()
			const study, series = "1.2.826.0.1.3680043.10.1.8", "1.2.826.0.1.3680043.10.1.8.1"
			// 32 MB: far more than the kernel's socket buffers hold (on
			// Linux at most 4 MiB sending and 6 MiB receiving by default).
			data := makeInstance(study, series, testSOP(0), 4000, 4000, 9)
			if _, err := w.Ingester.Store(t.Context(), bytes.NewReader(data), gateway.StoreOptions{}); err != nil {
				t.Fatal(err)
			}
			addr := serveReal(t, s)
			path := "/dicomweb/studies/" + study + "/series/" + series + "/instances/" + testSOP(0)

			stalled, err := net.DialTimeout("tcp", addr, hangGuard)
			if err != nil {
				t.Fatal(err)
			}
			defer stalled.Close()
			if _, err := io.WriteString(stalled, "GET "+path+" HTTP/1.1\r\nHost: "+addr+"\r\n\r\n"); err != nil {
				t.Fatal(err)
			}

			// The slot is busy while the stalled response waits; once the
			// write deadline cuts it, a retrieve is served again.
			client := &http.Client{Timeout: hangGuard}
			served := false
			for range 400 {
				resp, err := curlGet(client, "http://"+addr+path)
				if err != nil {
					t.Fatal(err)
				}
				n, _ := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK && n > int64(len(data)) {
					served = true
					break
				}
				if resp.StatusCode != http.StatusServiceUnavailable {
					t.Fatalf("retrieve: %d, want 503 while the slot is held, then 200", resp.StatusCode)
				}
				time.Sleep(50 * time.Millisecond)
			}
			if !served {
				t.Fatal("the stalled reader still holds the retrieve slot")
			}

			// What the kernel buffered still arrives, then the connection
			// ends: the stalled response was cut, not left open.
			_ = stalled.SetReadDeadline(time.Now().Add(hangGuard))
			n, err := io.Copy(io.Discard, stalled)
			if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
				t.Fatalf("stalled connection still open after %d bytes", n)
			}
			if n >= int64(len(data)) {
				t.Errorf("stalled client got %d bytes, the whole %d-byte instance: nothing was cut", n, len(data))
			}
		})
	}
}

// TestConnectionCap: beyond MaxConnections a new connection is closed as
// soon as it is accepted (and counted); once a connection closes, its slot
// serves the next client.
func TestConnectionCap(t *testing.T) {
	s := testWiring{Config: dicomweb.Config{MaxConnections: 2}, ServiceDeps: gateway.ServiceDeps{Name: "test"}}.server()
	addr := serveReal(t, s)
	var held []net.Conn
	for range 2 {
		c, err := net.DialTimeout("tcp", addr, hangGuard)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		held = append(held, c)
	}
	healthz := "GET /healthz HTTP/1.1\r\nHost: " + addr + "\r\nConnection: close"
	// The two held connections send nothing: the third is refused. It may
	// be accepted by the kernel before the gateway closes it, so the proof
	// is that it ends without an answer.
	refused := dialRaw(t, addr, healthz, "")
	_ = refused.SetReadDeadline(time.Now().Add(hangGuard))
	got, err := io.ReadAll(refused)
	if !closedErr(err) && len(got) > 0 {
		t.Fatalf("third connection answered %q, want it closed", got)
	}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		t.Fatal("third connection left open beyond MaxConnections")
	}
	if n := counterValue(t, s, "gateway_http_connections_refused_total"); n < 1 {
		t.Errorf("gateway_http_connections_refused_total = %v, want at least 1", n)
	}

	held[0].Close()
	served := false
	for range 200 {
		c, err := net.DialTimeout("tcp", addr, hangGuard)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.WriteString(c, healthz+"\r\n\r\n")
		_ = c.SetReadDeadline(time.Now().Add(hangGuard))
		answer, _ := io.ReadAll(c)
		c.Close()
		if strings.HasPrefix(string(answer), "HTTP/1.1 200") {
			served = true
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !served {
		t.Fatal("after a held connection closed, no new connection was served")
	}
}

// counterValue reads a counter without labels from s's registry.
func counterValue(t testing.TB, s *dicomweb.Server, name string) float64 {
	t.Helper()
	families, err := s.Gatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name && len(f.GetMetric()) == 1 {
			return f.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}
