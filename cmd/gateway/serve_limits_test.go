package main

import (
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestServeWiresCORSOrigins: --cors-origins reaches the server (a listed
// viewer gets CORS headers on DICOMweb, another origin none), a value that
// is not an origin is refused at start-up, naming the flag, and so is "*"
// without auth (any web page could read every study as the local admin).
func TestServeWiresCORSOrigins(t *testing.T) {
	cfg, err := parseServeConfig([]string{"--listen", "127.0.0.1:0", "--data-dir", t.TempDir(),
		"--cors-origins", "https://viewer.example.nhs.uk"}, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	m := MustRunMain(t, cfg, nil)
	for origin, want := range map[string]string{"https://viewer.example.nhs.uk": "https://viewer.example.nhs.uk", "https://other.example": ""} {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+m.Addr+"/dicomweb/studies", nil)
		req.Header.Set("Origin", origin)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.Header.Get("Access-Control-Allow-Origin"); got != want {
			t.Errorf("Origin %s: Access-Control-Allow-Origin = %q, want %q", origin, got, want)
		}
	}

	for _, bad := range []string{"https://viewer.example.nhs.uk/ohif", "viewer.example.nhs.uk", "ftp://x", "https://viewer.example.nhs.uk, *"} {
		_, err := parseServeConfig([]string{"--cors-origins", bad}, func(string) string { return "" }, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "--cors-origins") {
			t.Errorf("--cors-origins %q: err = %v, want a refusal naming the flag", bad, err)
		}
	}
}

// TestServeMaxConnections: --max-connections caps the connections gateway
// serve holds open; one beyond it is closed without an answer.
func TestServeMaxConnections(t *testing.T) {
	cfg, err := parseServeConfig([]string{"--listen", "127.0.0.1:0", "--data-dir", t.TempDir(), "--max-connections", "1"},
		func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	m := MustRunMain(t, cfg, nil)
	held, err := net.DialTimeout("tcp", m.Addr, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	extra, err := net.DialTimeout("tcp", m.Addr, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	_, _ = io.WriteString(extra, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
	_ = extra.SetReadDeadline(time.Now().Add(20 * time.Second))
	got, err := io.ReadAll(extra)
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		t.Fatal("a connection beyond --max-connections 1 was left open")
	}
	if len(got) > 0 {
		t.Errorf("a connection beyond --max-connections 1 was answered: %q", got)
	}
}
