package dicomweb

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
)

// TLSConfig is the top-level tls: section of the --config YAML: the
// server's certificate. With it the gateway serves HTTPS only.
type TLSConfig struct {
	CertFile string `yaml:"cert_file"` // PEM certificate chain, leaf first
	KeyFile  string `yaml:"key_file"`  // PEM private key
	// MinVersion is "1.2" (default) or "1.3"; older versions are refused.
	MinVersion string `yaml:"min_version"`
	// ClientCAFile, when set, asks clients for a certificate and verifies any
	// given against these CAs (VerifyClientCertIfGiven: token and basic
	// clients still connect without one). ServerTLS sets it from
	// auth.mtls.client_ca_file when empty.
	ClientCAFile string `yaml:"client_ca_file"`
}

// Enabled reports whether a certificate is configured.
func (t TLSConfig) Enabled() bool { return t.CertFile != "" || t.KeyFile != "" }

// ServerTLSConfig loads cfg's certificate and key and returns the server's
// tls.Config: TLS 1.2 or later with Go's default (AEAD, forward-secret)
// cipher suites, and, when cfg.ClientCAFile is set, optional verified client
// certificates. The certificate is reloaded when its files change (see
// certReloader), so a renewal needs no restart.
func ServerTLSConfig(cfg TLSConfig) (*tls.Config, error) {
	if cfg.CertFile == "" || cfg.KeyFile == "" {
		return nil, errors.New("tls: cert_file and key_file are both required")
	}
	minVersion, err := tlsVersion(cfg.MinVersion)
	if err != nil {
		return nil, err
	}
	certs, err := newCertReloader(cfg.CertFile, cfg.KeyFile)
	if err != nil {
		return nil, err
	}
	c := &tls.Config{
		MinVersion:     minVersion,
		GetCertificate: certs.certificate,
	}
	if cfg.ClientCAFile != "" {
		pool, err := loadCertPool(cfg.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("tls: client_ca_file: %w", err)
		}
		c.ClientCAs = pool
		c.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return c, nil
}

// ServerTLS is what cmd/gateway calls: nil, nil when neither tls: nor
// auth.mtls is configured (plain HTTP); an error when auth.mtls is
// configured without a server certificate (client certificates need TLS);
// otherwise ServerTLSConfig with auth.mtls.client_ca_file as the client CA
// unless tls.client_ca_file names one.
func ServerTLS(t TLSConfig, a AuthConfig) (*tls.Config, error) {
	if a.MTLS != nil {
		if !t.Enabled() {
			return nil, errors.New("auth.mtls needs tls.cert_file and tls.key_file: client certificates are only seen over TLS")
		}
		if t.ClientCAFile == "" {
			t.ClientCAFile = a.MTLS.ClientCAFile
		}
	}
	if !t.Enabled() {
		return nil, nil
	}
	return ServerTLSConfig(t)
}

// ClientTLSOptions configure TLS for outgoing connections (peer gateways, the
// OIDC key set).
type ClientTLSOptions struct {
	// CAFile, when set, is the only CA bundle the server's certificate may
	// chain to (a private PKI between centres); otherwise the system roots.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile, when set, are the client certificate presented
	// to peers that authenticate by mTLS.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName overrides the name checked in the server's certificate.
	ServerName string `yaml:"server_name"`
}

// ClientTLSConfig returns a tls.Config for outgoing connections: TLS 1.2 or
// later, certificates always verified (there is no "insecure" switch).
func ClientTLSConfig(o ClientTLSOptions) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: o.ServerName}
	if o.CAFile != "" {
		pool, err := loadCertPool(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
		c.RootCAs = pool
	}
	if (o.CertFile == "") != (o.KeyFile == "") {
		return nil, errors.New("cert_file and key_file must be set together")
	}
	if o.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("cert_file/key_file: %w", err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

func tlsVersion(v string) (uint16, error) {
	switch v {
	case "", "1.2":
		return tls.VersionTLS12, nil
	case "1.3":
		return tls.VersionTLS13, nil
	}
	return 0, fmt.Errorf("tls.min_version %q: use 1.2 or 1.3", v)
}

// loadCertPool reads a PEM bundle; a file without any certificate is an error.
func loadCertPool(path string) (*x509.CertPool, error) {
	if path == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return pool, nil
}

// certCheckInterval is how often, at most, the certificate files are
// checked for a change (a variable for tests).
var certCheckInterval = 10 * time.Second

// certReloader serves the certificate in certFile and keyFile and loads it
// again when either file's modification time or size changes, checked at
// most every certCheckInterval during handshakes: a certificate renewed in
// place (certbot, an internal PKI) is used without a restart. A renewal
// that does not load (a key not yet written, a mismatched pair) keeps the
// previous certificate and is retried at the next check.
type certReloader struct {
	certFile, keyFile string

	mu      sync.Mutex
	cert    *tls.Certificate
	stamp   string // modification times and sizes of the loaded files
	checked time.Time
	lastErr error // the last failed reload, nil once one succeeds
}

func newCertReloader(certFile, keyFile string) (*certReloader, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile}
	if err := r.load(); err != nil {
		return nil, err
	}
	r.checked = time.Now()
	return r, nil
}

// fileStamp identifies the current versions of the two files.
func (r *certReloader) fileStamp() string {
	var s string
	for _, p := range []string{r.certFile, r.keyFile} {
		if fi, err := os.Stat(p); err == nil {
			s += fmt.Sprintf("%d/%d;", fi.ModTime().UnixNano(), fi.Size())
		}
	}
	return s
}

func (r *certReloader) load() error {
	stamp := r.fileStamp()
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		// The error names the files, never key material.
		return fmt.Errorf("tls: cert_file/key_file: %w", err)
	}
	r.cert, r.stamp = &cert, stamp
	return nil
}

func (r *certReloader) certificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if time.Since(r.checked) >= certCheckInterval {
		r.checked = time.Now()
		if r.fileStamp() != r.stamp {
			r.lastErr = r.load()
		}
	}
	return r.cert, nil
}
