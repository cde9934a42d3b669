package gateway

import (
	"fmt"
	"strings"
	"time"
)

// DIMSEPeer is a peer reached over the DICOM upper layer protocol: its
// transfers are sent by C-STORE (package dimse), one instance per message,
// each counted delivered on its C-STORE success status.
type DIMSEPeer struct {
	Host     string `yaml:"host" json:"host"`
	Port     int    `yaml:"port" json:"port"`
	CalledAE string `yaml:"called_ae" json:"called_ae"`
	// CallingAE is this gateway's AE title towards the peer (default: the
	// --dicom-ae-title, else GATEWAY).
	CallingAE string `yaml:"calling_ae" json:"calling_ae,omitempty"`
	// StorageCommitment makes verification a storage commitment request
	// (N-ACTION, Push Model) for every instance, the transfer completing
	// only once the peer reports them committed (N-EVENT-REPORT, on the
	// same association or one it opens to --dicom-listen, which must then
	// be set and admit the peer). CommitmentTimeout bounds the wait for the
	// report (default 2m); without one the attempt is retried later.
	StorageCommitment bool `yaml:"storage_commitment" json:"storage_commitment"`
	// TLS runs the associations over TLS (PS3.15 B.1) with the peer's tls:
	// settings (ca_file, cert_file/key_file for the client certificate).
	TLS               bool          `yaml:"tls" json:"tls"`
	CommitmentTimeout time.Duration `yaml:"commitment_timeout" json:"commitment_timeout,omitempty"`
}

// validateDIMSE checks a DIMSE peer: host, port and AE titles, and that no
// DICOMweb-only key is set (they would be silently ignored).
func (p Peer) validateDIMSE() error {
	d := p.DIMSE
	if d.Host == "" || strings.ContainsAny(d.Host, " /") {
		return fmt.Errorf("peer %s: dimse.host %q is not a host name or address", p.Name, d.Host)
	}
	if d.Port < 1 || d.Port > 65535 {
		return fmt.Errorf("peer %s: dimse.port %d is not a TCP port", p.Name, d.Port)
	}
	for key, ae := range map[string]string{"dimse.called_ae": d.CalledAE, "dimse.calling_ae": d.CallingAE} {
		if ae == "" && key == "dimse.calling_ae" {
			continue
		}
		if strings.TrimSpace(ae) == "" || len(ae) > 16 || strings.ContainsAny(ae, "\\\r\n\t") {
			return fmt.Errorf("peer %s: %s %q must be 1 to 16 characters without backslash or control characters", p.Name, key, ae)
		}
	}
	if d.CommitmentTimeout < 0 {
		return fmt.Errorf("peer %s: dimse.commitment_timeout may not be negative", p.Name)
	}
	if p.TLS.InsecureSkipVerify {
		return fmt.Errorf("peer %s: tls.insecure_skip_verify is not offered for DIMSE peers: give the peer's CA in tls.ca_file", p.Name)
	}
	if !d.TLS && (p.TLS.CAFile != "" || p.TLS.CertFile != "") {
		return fmt.Errorf("peer %s: tls: settings without dimse.tls: true would be ignored", p.Name)
	}
	if p.URL != "" || p.Token != "" || p.Username != "" || p.Gateway || p.AdminURL != "" {
		return fmt.Errorf("peer %s: dimse is set, so url, token, username/password, gateway and admin_url do not apply: remove them", p.Name)
	}
	return nil
}
