package dicomweb

import (
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/dicom-gateway/gateway/gateway"
)

// MTLSConfig authenticates clients by TLS certificate, e.g. peer gateways.
// A certificate is accepted only when it chains to ClientCAFile (checked
// here again, whatever the TLS layer accepted) for client authentication,
// and one of Clients matches it. The server must serve TLS with the same CA
// (TLSConfig.ClientCAFile; ServerTLS fills it in).
type MTLSConfig struct {
	ClientCAFile string       `yaml:"client_ca_file"` // PEM bundle of the CAs that issue client certificates
	Clients      []MTLSClient `yaml:"clients"`
}

// MTLSClient maps a certificate, named by exactly one of subject_cn,
// san_dns or san_uri (gateway.CertificateName), to a principal.
type MTLSClient struct {
	gateway.CertificateName `yaml:",inline"`
	Name                    string         `yaml:"name"`
	Roles                   []gateway.Role `yaml:"roles"`
	Peer                    string         `yaml:"peer"` // the centre a peer gateway's certificate speaks for (peerauth.go)
}

type mtlsAuth struct {
	roots   *x509.CertPool
	clients []MTLSClient
	now     func() time.Time
}

func newMTLSAuth(cfg MTLSConfig) (*mtlsAuth, error) {
	var errs []error
	roots, err := loadCertPool(cfg.ClientCAFile)
	if cfg.ClientCAFile == "" {
		err = errors.New("is required")
	}
	if err != nil {
		errs = append(errs, fmt.Errorf("auth.mtls.client_ca_file: %w", err))
	}
	if len(cfg.Clients) == 0 {
		errs = append(errs, errors.New("auth.mtls.clients: no client is mapped"))
	}
	for i, c := range cfg.Clients {
		where := fmt.Sprintf("auth.mtls.clients[%d] (%s)", i, c.Name)
		if err := c.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", where, err))
		}
		if c.Name == "" {
			errs = append(errs, fmt.Errorf("%s: name is empty", where))
		}
		if err := checkRoles(c.Roles); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", where, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &mtlsAuth{roots: roots, clients: cfg.Clients, now: time.Now}, nil
}

// authenticate verifies the peer's chain (leaf first, as in
// tls.ConnectionState.PeerCertificates) and maps the leaf to a principal.
func (m *mtlsAuth) authenticate(chain []*x509.Certificate) (gateway.Principal, error) {
	leaf := chain[0]
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{
		Roots:         m.roots,
		Intermediates: inter,
		CurrentTime:   m.now(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return gateway.Principal{}, fmt.Errorf("client certificate not trusted: %w", gateway.ErrUnauthenticated)
	}
	for _, c := range m.clients {
		if c.Matches(leaf) {
			return gateway.Principal{Name: c.Name, Roles: c.Roles, Method: "mtls"}, nil
		}
	}
	return gateway.Principal{}, fmt.Errorf("client certificate not mapped to a client: %w", gateway.ErrUnauthenticated)
}
