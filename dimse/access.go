package dimse

import (
	"crypto/x509"
	"fmt"
	"net/netip"
	"strings"

	"github.com/dicom-gateway/gateway/gateway"
)

// AllowRule lets a calling AE title connect from the given addresses with
// the given roles. It is one entry of dicom.allow in the --config YAML.
//
// An AE title is only a name the caller writes in its request. With
// Certificate set, the rule admits the AE title only over TLS, from a
// caller whose certificate (verified by the TLS layer against
// dicom.tls_client_ca_file) carries that name: another holder of a
// certificate of the same CA cannot claim the AE title and its roles.
type AllowRule struct {
	AETitle     string                   `yaml:"ae_title"`
	Hosts       []string                 `yaml:"hosts"` // IP addresses or CIDR prefixes
	Roles       []gateway.Role           `yaml:"roles"`
	Certificate *gateway.CertificateName `yaml:"certificate"`
}

// Access decides at association time who may connect, and with which
// roles. A caller is admitted when a rule names its calling AE title and
// one of the rule's hosts holds its address. With no rule for its AE title,
// a loopback caller is admitted with every role when AllowLoopback is set
// (no auth configured: the same trust HTTP gives loopback); everyone else is
// rejected.
type Access struct {
	Rules         []AllowRule
	AllowLoopback bool

	prefixes [][]netip.Prefix // parsed Hosts, by rule
}

// NewAccess validates rules; each message names the key to fix.
func NewAccess(rules []AllowRule, allowLoopback bool) (*Access, error) {
	a := &Access{Rules: rules, AllowLoopback: allowLoopback}
	for i, r := range rules {
		if err := ValidateAETitle(r.AETitle); err != nil {
			return nil, fmt.Errorf("dicom.allow[%d].ae_title: %w", i, err)
		}
		if len(r.Hosts) == 0 {
			return nil, fmt.Errorf("dicom.allow[%d] (%s): hosts is empty; list the addresses or CIDRs it connects from", i, r.AETitle)
		}
		var ps []netip.Prefix
		for _, h := range r.Hosts {
			p, err := parseHost(h)
			if err != nil {
				return nil, fmt.Errorf("dicom.allow[%d].hosts: %w", i, err)
			}
			ps = append(ps, p)
		}
		for _, role := range r.Roles {
			switch role {
			case gateway.RoleStore, gateway.RoleRead, gateway.RoleTransfer, gateway.RoleAdmin:
			default:
				return nil, fmt.Errorf("dicom.allow[%d].roles: unknown role %q (store, read, transfer, admin)", i, role)
			}
		}
		if r.Certificate != nil {
			if err := r.Certificate.Validate(); err != nil {
				return nil, fmt.Errorf("dicom.allow[%d].certificate (%s): %w", i, r.AETitle, err)
			}
		}
		a.prefixes = append(a.prefixes, ps)
	}
	// A rule without a certificate would admit, from its hosts, an AE title
	// that another rule ties to a certificate: refuse the mix.
	for i, r := range rules {
		for j, o := range rules[:i] {
			if r.AETitle == o.AETitle && (r.Certificate == nil) != (o.Certificate == nil) {
				return nil, fmt.Errorf("dicom.allow[%d] and dicom.allow[%d] (%s): one ties the AE title to a certificate and the other does not, which would admit it without one: give every rule of an AE title a certificate, or none", j, i, r.AETitle)
			}
		}
	}
	return a, nil
}

func parseHost(h string) (netip.Prefix, error) {
	if strings.Contains(h, "/") {
		p, err := netip.ParsePrefix(h)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not an address or CIDR: %w", h, err)
		}
		return p.Masked(), nil
	}
	ip, err := netip.ParseAddr(h)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an IP address or CIDR (host names are not accepted: they could change under the rule)", h)
	}
	return netip.PrefixFrom(ip.Unmap(), ip.Unmap().BitLen()), nil
}

// ValidateAETitle checks an AE title: 1 to 16 characters of the default
// repertoire, no backslash or control character, not only spaces (PS3.5
// 6.2, VR AE).
func ValidateAETitle(ae string) error {
	if strings.TrimSpace(ae) == "" || len(ae) > 16 {
		return fmt.Errorf("AE title %q must be 1 to 16 characters", ae)
	}
	for _, r := range ae {
		if r < 0x20 || r > 0x7E || r == '\\' {
			return fmt.Errorf("AE title %q has a character outside the default repertoire", ae)
		}
	}
	return nil
}

// admit returns the roles of a caller, or the A-ASSOCIATE-RJ to send.
// leaf is the caller's TLS certificate, verified; nil on a plain
// connection.
func (a *Access) admit(callingAE string, addr netip.Addr, leaf *x509.Certificate) ([]gateway.Role, *RejectError) {
	addr = addr.Unmap()
	knownAE := false
	if a != nil {
		for i, r := range a.Rules {
			if r.AETitle != callingAE {
				continue
			}
			knownAE = true
			if r.Certificate != nil && !r.Certificate.Matches(leaf) {
				continue
			}
			for _, p := range a.prefixes[i] {
				if p.Contains(addr) {
					return r.Roles, nil
				}
			}
		}
		if a.AllowLoopback && addr.IsLoopback() && !knownAE {
			return []gateway.Role{gateway.RoleAdmin}, nil
		}
	}
	if knownAE {
		// The AE title is known but not from this address or without its
		// certificate: say no more than that the association is refused.
		return nil, &RejectError{Result: RejectPermanent, Source: SourceServiceUser, Reason: ReasonNoReason}
	}
	return nil, &RejectError{Result: RejectPermanent, Source: SourceServiceUser, Reason: ReasonCallingAENotRecognized}
}
