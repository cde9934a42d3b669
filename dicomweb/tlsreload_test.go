package dicomweb

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/dicom-gateway/gateway/internal/testpki"
)

// TestServerCertificateReload: a certificate renewed in place is served to
// the next client without a restart; a renewal that does not load (a
// half-written file) keeps the certificate already served.
func TestServerCertificateReload(t *testing.T) {
	saved := certCheckInterval
	certCheckInterval = 0 // check at every handshake
	t.Cleanup(func() { certCheckInterval = saved })

	ca := testpki.NewCA(t, "reload")
	issue := func(cn string) (cert, key []byte) {
		cf, kf := ca.IssueFiles(t, &x509.Certificate{Subject: pkix.Name{CommonName: cn}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		c, err1 := os.ReadFile(cf)
		k, err2 := os.ReadFile(kf)
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		return c, k
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	install := func(cert, key []byte) {
		if err := os.WriteFile(certFile, cert, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(keyFile, key, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	install(issue("gw-one"))
	conf, err := ServerTLSConfig(TLSConfig{CertFile: certFile, KeyFile: keyFile})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				c.(*tls.Conn).Handshake()
				c.Close()
			}()
		}
	}()
	pool := ca.Pool
	served := func() string {
		t.Helper()
		conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].Subject.CommonName
	}
	if got := served(); got != "gw-one" {
		t.Fatalf("served %q, want gw-one", got)
	}
	install(issue("gw-two"))
	if got := served(); got != "gw-two" {
		t.Fatalf("after the renewal served %q, want gw-two", got)
	}
	if err := os.WriteFile(certFile, []byte("-----BEGIN CERTIFICATE-----\nhalf"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := served(); got != "gw-two" {
		t.Fatalf("after a renewal that does not load served %q, want gw-two kept", got)
	}
}
