package dicomweb

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"slices"
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

// MTLSClient maps a certificate to a principal. Set exactly one of SubjectCN
// (the subject's common name), SANDNS (a DNS subject alternative name) or
// SANURI (a URI SAN, e.g. spiffe://nhs.uk/gateway/surrey).
type MTLSClient struct {
	SubjectCN string         `yaml:"subject_cn"`
	SANDNS    string         `yaml:"san_dns"`
	SANURI    string         `yaml:"san_uri"`
	Name      string         `yaml:"name"`
	Roles     []gateway.Role `yaml:"roles"`
	Peer      string         `yaml:"peer"` // the centre a peer gateway's certificate speaks for (peerauth.go)
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
		n := 0
		for _, s := range []string{c.SubjectCN, c.SANDNS, c.SANURI} {
			if s != "" {
				n++
			}
		}
		if n != 1 {
			errs = append(errs, fmt.Errorf("%s: set exactly one of subject_cn, san_dns, san_uri", where))
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
		if m.matches(c, leaf) {
			return gateway.Principal{Name: c.Name, Roles: c.Roles, Method: "mtls"}, nil
		}
	}
	return gateway.Principal{}, fmt.Errorf("client certificate not mapped to a client: %w", gateway.ErrUnauthenticated)
}

func (m *mtlsAuth) matches(c MTLSClient, leaf *x509.Certificate) bool {
	switch {
	case c.SubjectCN != "":
		return leaf.Subject.CommonName == c.SubjectCN
	case c.SANDNS != "":
		return slices.Contains(leaf.DNSNames, c.SANDNS)
	case c.SANURI != "":
		return slices.ContainsFunc(leaf.URIs, func(u *url.URL) bool { return u.String() == c.SANURI })
	}
	return false
}
