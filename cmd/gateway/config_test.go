package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseServeConfigPrecedence(t *testing.T) {
	env := map[string]string{
		"GATEWAY_NAME":      "from-env",
		"GATEWAY_REDIS_URL": "redis://127.0.0.1:1/0",
		"GATEWAY_LISTEN":    "127.0.0.1:9999",
	}
	cfg, err := parseServeConfig([]string{"--name", "from-flag"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cfg.Name, "from-flag"; got != want {
		t.Errorf("Name=%q, want %q (flag beats env)", got, want)
	}
	if got, want := cfg.RedisURL, "redis://127.0.0.1:1/0"; got != want {
		t.Errorf("RedisURL=%q, want %q (env beats default)", got, want)
	}
	if got, want := cfg.Listen, "127.0.0.1:9999"; got != want {
		t.Errorf("Listen=%q, want %q", got, want)
	}
	if got, want := cfg.DataDir, "./data"; got != want {
		t.Errorf("DataDir=%q, want default %q", got, want)
	}
}

func TestNonLoopbackWithoutAuthIsRefused(t *testing.T) {
	for _, tt := range []struct {
		listen string
		ok     bool
	}{
		{"127.0.0.1:8080", true},
		{"localhost:8080", true},
		{"[::1]:8080", true},
		{"0.0.0.0:8080", false},
		{":8080", false},
		{"10.1.2.3:8080", false},
	} {
		_, err := parseServeConfig([]string{"--listen", tt.listen}, func(string) string { return "" }, io.Discard)
		if (err == nil) != tt.ok {
			t.Errorf("--listen %s: err=%v, want ok=%v", tt.listen, err, tt.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "without auth") {
			t.Errorf("--listen %s: message %q does not say why", tt.listen, err)
		}
	}
}

// TestTrustedProxiesWithoutAuthIsRefused: without auth every request a
// proxy relays is refused (403), so a trusted_proxies list without auth is
// a configuration that cannot work, refused at start-up with the reason.
func TestTrustedProxiesWithoutAuthIsRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gateway.yaml")
	if err := os.WriteFile(path, []byte("trusted_proxies: [10.0.0.5]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := parseServeConfig([]string{"--config", path}, func(string) string { return "" }, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "trusted_proxies without auth") {
		t.Errorf("trusted_proxies without auth: err = %v, want a refusal saying why", err)
	}
}

// TestTrustedProxiesRefusedWhenUnparsable: an entry the proxy check could
// not use (a name, a zone) is refused at start-up by name, not dropped.
func TestTrustedProxiesRefusedWhenUnparsable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gateway.yaml")
	if err := os.WriteFile(path, []byte("trusted_proxies: [10.0.0.5, proxy.internal, \"fe80::1%eth0\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := parseServeConfig([]string{"--config", path}, func(string) string { return "" }, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "proxy.internal") || !strings.Contains(err.Error(), "fe80::1%eth0") {
		t.Errorf("unparsable trusted_proxies: err = %v, want a refusal naming both entries", err)
	}
}

func TestConfigFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.yaml", `
peers:
  - name: surrey
    url: http://127.0.0.1:8081/dicomweb
auth:
  tokens:
    - name: pacs-1
      sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
      roles: [store]
audit_syslog:
  url: tls://arr.example.nhs.uk:6514
  tls:
    ca_file: /etc/gateway/arr-ca.pem
  queue_size: 500
`)
	cfg, err := parseServeConfig([]string{"--config", good, "--listen", "0.0.0.0:8080"}, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatalf("good config: %v", err)
	}
	if got, want := len(cfg.File.Peers), 1; got != want {
		t.Fatalf("peers=%d, want %d", got, want)
	}
	if got, want := cfg.File.Peers[0].Name, "surrey"; got != want {
		t.Errorf("peer name=%q, want %q", got, want)
	}
	if a := cfg.File.AuditSyslog; a.URL != "tls://arr.example.nhs.uk:6514" || a.TLS.CAFile != "/etc/gateway/arr-ca.pem" || a.QueueSize != 500 {
		t.Errorf("audit_syslog = %+v", a)
	}
	// The flag (or GATEWAY_AUDIT_SYSLOG) overrides the file's URL.
	cfg, err = parseServeConfig([]string{"--config", good, "--listen", "0.0.0.0:8080"}, func(k string) string {
		if k == "GATEWAY_AUDIT_SYSLOG" {
			return "tcp://127.0.0.1:601"
		}
		return ""
	}, io.Discard)
	if err != nil || cfg.File.AuditSyslog.URL != "tcp://127.0.0.1:601" || cfg.File.AuditSyslog.TLS.CAFile == "" {
		t.Errorf("GATEWAY_AUDIT_SYSLOG: err %v, audit_syslog %+v", err, cfg.File.AuditSyslog)
	}

	for name, body := range map[string]string{
		"unknown key":                  "peers: []\nlisten_port: 3\n",
		"bad hash":                     "auth:\n  tokens:\n    - name: x\n      sha256: nothex\n      roles: [store]\n",
		"bad role":                     "auth:\n  tokens:\n    - name: x\n      sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\n      roles: [root]\n",
		"bad peer url":                 "peers:\n  - name: x\n    url: ftp://h/\n",
		"dup peer":                     "peers:\n  - name: x\n    url: http://127.0.0.1:1/\n  - name: x\n    url: http://127.0.0.1:2/\n",
		"password in peer url":         "peers:\n  - name: x\n    url: https://u:pw@h/dicomweb\n",
		"unknown preamble policy":      "preamble_policy: strip\n",
		"plain http peer not loopback": "peers:\n  - name: x\n    url: http://surrey:8080/dicomweb\n",
	} {
		p := write(strings.ReplaceAll(name, " ", "-")+".yaml", body)
		if _, err := parseServeConfig([]string{"--config", p}, func(string) string { return "" }, io.Discard); err == nil {
			t.Errorf("%s: config accepted, want an error", name)
		}
	}
}

// TestDeployConfigsParse keeps the docker-compose configurations valid as
// the configuration grows.
func TestDeployConfigsParse(t *testing.T) {
	for _, name := range []string{"hampshire", "surrey"} {
		p := filepath.Join("..", "..", "deploy", name+".yaml")
		cfg, err := parseServeConfig([]string{"--config", p, "--listen", "0.0.0.0:8080", "--name", name}, func(string) string { return "" }, io.Discard)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if len(cfg.File.Peers) != 1 || !cfg.File.Peers[0].Gateway {
			t.Errorf("%s: want one gateway peer, got %+v", p, cfg.File.Peers)
		}
		if !cfg.File.Peers[0].AllowInsecure || cfg.File.Peers[0].Insecure() == "" {
			t.Errorf("%s: the compose peer is plain http to a service name and must say allow_insecure: true", p)
		}
		// The other centre's token speaks for it, so that its transfers are
		// recorded as incoming and its routing rules apply.
		mapped := false
		for _, tok := range cfg.File.Auth.Tokens {
			mapped = mapped || (len(cfg.File.Peers) == 1 && tok.Peer == cfg.File.Peers[0].Name)
		}
		if !mapped {
			t.Errorf("%s: no token has peer: %s", p, cfg.File.Peers[0].Name)
		}
	}
}
