package main

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/dicomweb"
)

// TestNewTokenEntryAuthenticates pastes what new-token prints into a config
// and checks that the printed token authenticates with the printed roles.
func TestNewTokenEntryAuthenticates(t *testing.T) {
	var stdout, stderr strings.Builder
	if err := runNewToken(t.Context(), []string{"pacs-9", "store", "read"}, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(stdout.String())
	_, entry, ok := strings.Cut(stderr.String(), "add to auth.tokens in --config:\n")
	if !ok || len(token) < 40 {
		t.Fatalf("unexpected output: %q / %q", stdout.String(), stderr.String())
	}
	p := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(p, []byte("auth:\n  tokens:\n"+entry), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := parseServeConfig([]string{"--config", p}, func(string) string { return "" }, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	auth, err := dicomweb.NewAuthenticator(cfg.File.Auth)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := http.NewRequest(http.MethodGet, "/", nil)
	r.Header.Set("Authorization", "Bearer "+token)
	got, err := auth.Authenticate(r)
	if err != nil {
		t.Fatalf("printed token does not authenticate: %v", err)
	}
	if got.Name != "pacs-9" || !got.Has("store") || !got.Has("read") || got.Has("transfer") {
		t.Errorf("principal = %+v, want pacs-9 with store and read only", got)
	}
}
