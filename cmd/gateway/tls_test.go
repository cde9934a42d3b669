package main

import (
	"crypto/tls"
	"net/http"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/internal/testpki"
)

// TestServeTLS: with tls.cert_file/key_file, gateway serve answers HTTPS
// with that certificate (served through the reloading GetCertificate) and
// nothing else.
func TestServeTLS(t *testing.T) {
	ca := testpki.NewCA(t, "hampshire CA")
	server := ca.Server(t, "hampshire.test")
	cfg := testConfig(t)
	cfg.File.TLS.CertFile, cfg.File.TLS.KeyFile = server.CertFile, server.KeyFile
	m := MustRunMain(t, cfg, nil)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool}}, Timeout: 10 * time.Second}
	resp, err := client.Get("https://" + m.Addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.TLS == nil || resp.TLS.PeerCertificates[0].Subject.CommonName != "hampshire.test" {
		t.Fatalf("HTTPS /healthz: %d, TLS %v", resp.StatusCode, resp.TLS != nil)
	}
	if resp, err := http.Get("http://" + m.Addr + "/healthz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatal("plain HTTP answered 200 on the TLS port")
		}
	}
}
