package main

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/syncbuf"
)

// TestServeWithAuditKeyFile runs a gateway with --audit-key-file: its audit
// records carry the key ID, `gateway audit verify` passes with the key file
// and fails without it, and only an unkeyed gateway warns at start-up.
func TestServeWithAuditKeyFile(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), "audit.key")
	if err := os.WriteFile(keyFile, []byte("# test key\nkey test-1 "+strings.Repeat("5a", 32)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	cfg2, err := parseServeConfig([]string{"--listen", "127.0.0.1:0", "--data-dir", cfg.DataDir, "--audit-key-file", keyFile},
		func(string) string { return "" }, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg2.AuditKeys == nil || cfg2.AuditKeys.CurrentID() != "test-1" {
		t.Fatalf("--audit-key-file not loaded: %+v", cfg2.AuditKeys)
	}
	var logs syncbuf.Buffer
	m := NewMain(cfg2, newLogger(&logs, "debug"))
	if err := m.Run(t.Context()); err != nil {
		t.Fatal(err)
	}
	if code, _ := get(t, "http://"+m.Addr+"/dicomweb/studies"); code != http.StatusOK {
		t.Fatalf("QIDO = %d", code)
	}
	page, err := m.Backends.AuditLog.Query(t.Context(), gateway.AuditFilter{})
	if err != nil || len(page.Events) == 0 || page.Events[0].KeyID != "test-1" {
		t.Fatalf("audit records %+v, %v; want records keyed test-1", page, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logs.String(), "audit chain is not keyed") {
		t.Errorf("a keyed gateway warned that its chain is not keyed")
	}

	var stdout, stderr bytes.Buffer
	if err := runAudit(t.Context(), []string{"verify", "--data-dir", cfg.DataDir, "--audit-key-file", keyFile}, &stdout, &stderr); err != nil {
		t.Fatalf("verify with the key file: %v %s", err, stdout.String())
	}
	stdout.Reset()
	err = runAudit(t.Context(), []string{"verify", "--data-dir", cfg.DataDir}, &stdout, &stderr)
	if !errors.Is(err, errAuditBroken) || !strings.Contains(stdout.String(), "audit key file") {
		t.Errorf("verify without the key file = %v, %q; want broken, asking for the key file", err, stdout.String())
	}

	var unkeyedLogs syncbuf.Buffer
	MustRunMain(t, testConfig(t), &unkeyedLogs)
	if !strings.Contains(unkeyedLogs.String(), "audit chain is not keyed") {
		t.Errorf("an unkeyed gateway did not warn at start-up")
	}
}

func TestAuditKeyFileRefused(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"short key":  "key k1 " + strings.Repeat("ab", 16) + "\n",
		"no key":     "# nothing\n",
		"bad line":   "secret " + strings.Repeat("ab", 32) + "\n",
		"bad key id": "key k/1 " + strings.Repeat("ab", 32) + "\n",
	} {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "-"))
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := parseServeConfig([]string{"--audit-key-file", p}, func(string) string { return "" }, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), "--audit-key-file") {
			t.Errorf("%s: %v, want an error naming --audit-key-file", name, err)
		}
		if err != nil && strings.Contains(err.Error(), "abab") {
			t.Errorf("%s: the error shows the key: %v", name, err)
		}
	}
}
