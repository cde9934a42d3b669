package gateway

import (
	"crypto/x509"
	"errors"
	"net/url"
	"slices"
)

// CertificateName names the client certificate that speaks for a caller by
// exactly one of: the subject's common name, a DNS subject alternative
// name, or a URI SAN (e.g. spiffe://nhs.uk/gateway/surrey). HTTP's mutual
// TLS maps a certificate to a client with it, and a DIMSE allow rule ties
// a calling AE title to the certificate that may claim it.
type CertificateName struct {
	SubjectCN string `yaml:"subject_cn"`
	SANDNS    string `yaml:"san_dns"`
	SANURI    string `yaml:"san_uri"`
}

// Validate reports a name that sets none or several of its fields.
func (n CertificateName) Validate() error {
	set := 0
	for _, s := range []string{n.SubjectCN, n.SANDNS, n.SANURI} {
		if s != "" {
			set++
		}
	}
	if set != 1 {
		return errors.New("set exactly one of subject_cn, san_dns, san_uri")
	}
	return nil
}

// Matches reports whether leaf, a certificate whose chain the caller has
// verified, carries the name.
func (n CertificateName) Matches(leaf *x509.Certificate) bool {
	switch {
	case leaf == nil:
		return false
	case n.SubjectCN != "":
		return leaf.Subject.CommonName == n.SubjectCN
	case n.SANDNS != "":
		return slices.Contains(leaf.DNSNames, n.SANDNS)
	case n.SANURI != "":
		return slices.ContainsFunc(leaf.URIs, func(u *url.URL) bool { return u.String() == n.SANURI })
	}
	return false
}
