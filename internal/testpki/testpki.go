// Package testpki makes throwaway certificate authorities and certificates
// for tests of TLS, mutual TLS and certificate reloading, written as PEM
// files to the test's temporary directory as the gateway's configuration
// expects them.
package testpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// CA is a certificate authority valid for a day around now.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	File string         // the CA certificate as a PEM file (a ca_file)
	Pool *x509.CertPool // a pool trusting only this CA

	dir    string
	serial int64
}

// Leaf is an issued certificate with its key, in memory and as PEM files.
type Leaf struct {
	TLS               tls.Certificate
	Cert              *x509.Certificate
	CertFile, KeyFile string
}

// NewCA creates a CA named name.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	ca := &CA{dir: t.TempDir(), Pool: x509.NewCertPool(), serial: 1}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	ca.Cert, ca.Key = create(t, tmpl, nil, nil)
	ca.Pool.AddCert(ca.Cert)
	ca.File = WritePEM(t, filepath.Join(ca.dir, "ca.pem"), "CERTIFICATE", ca.Cert.Raw)
	return ca
}

// Issue signs tmpl with a fresh P-256 key. The serial number is set; an
// unset validity becomes an hour either side of now, an unset key usage
// digital signature.
func (ca *CA) Issue(t testing.TB, tmpl *x509.Certificate) Leaf {
	t.Helper()
	ca.serial++
	tmpl.SerialNumber = big.NewInt(ca.serial)
	cert, key := create(t, tmpl, ca.Cert, ca.Key)
	name := tmpl.Subject.CommonName + "-" + strconv.FormatInt(ca.serial, 10)
	return writeLeaf(t, ca.dir, name, cert, key)
}

// IssueFiles is Issue returning only the two files.
func (ca *CA) IssueFiles(t testing.TB, tmpl *x509.Certificate) (certFile, keyFile string) {
	t.Helper()
	l := ca.Issue(t, tmpl)
	return l.CertFile, l.KeyFile
}

// Server issues a server certificate for cn, localhost and the loopback
// addresses.
func (ca *CA) Server(t testing.TB, cn string) Leaf {
	t.Helper()
	return ca.Issue(t, ServerTemplate(cn))
}

// Client issues a client certificate with common name cn and DNS names dns.
func (ca *CA) Client(t testing.TB, cn string, dns ...string) Leaf {
	t.Helper()
	return ca.Issue(t, ClientTemplate(cn, dns...))
}

// ServerTemplate is a server certificate for cn, localhost, 127.0.0.1 and ::1.
func ServerTemplate(cn string) *x509.Certificate {
	return &x509.Certificate{
		Subject: pkix.Name{CommonName: cn}, DNSNames: []string{cn, "localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
}

// ClientTemplate is a client certificate with common name cn and DNS names.
func ClientTemplate(cn string, dns ...string) *x509.Certificate {
	return &x509.Certificate{Subject: pkix.Name{CommonName: cn}, DNSNames: dns, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
}

// SelfSigned is a self-signed server certificate for cn (ServerTemplate),
// which no pool trusts.
func SelfSigned(t testing.TB, cn string) Leaf {
	t.Helper()
	tmpl := ServerTemplate(cn)
	tmpl.SerialNumber = big.NewInt(1)
	cert, key := create(t, tmpl, nil, nil)
	return writeLeaf(t, t.TempDir(), "self-signed", cert, key)
}

// create makes a certificate from tmpl with a fresh P-256 key, signed by
// parent (self-signed when parent is nil).
func create(t testing.TB, tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	}
	if tmpl.KeyUsage == 0 {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func writeLeaf(t testing.TB, dir, name string, cert *x509.Certificate, key *ecdsa.PrivateKey) Leaf {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return Leaf{
		TLS:      tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert},
		Cert:     cert,
		CertFile: WritePEM(t, filepath.Join(dir, name+".crt"), "CERTIFICATE", cert.Raw),
		KeyFile:  WritePEM(t, filepath.Join(dir, name+".key"), "PRIVATE KEY", der),
	}
}

// WritePEM writes der as one PEM block of type typ to path and returns path.
func WritePEM(t testing.TB, path, typ string, der []byte) string {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
