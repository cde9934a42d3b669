package gateway

import (
	"errors"
	"fmt"
	"net/url"
)

// Peer is another centre's DICOMweb endpoint: this gateway, Orthanc with its
// DICOMweb plugin, or any STOW-RS server. (Owned by the transfers work:
// extend with credentials, TLS and limits.)
type Peer struct {
	Name  string `yaml:"name" json:"name"`
	URL   string `yaml:"url" json:"url"`
	Token Secret `yaml:"token" json:"-"`
}

// Validate checks the peer's name and URL.
func (p Peer) Validate() error {
	if p.Name == "" {
		return errors.New("name is empty")
	}
	u, err := url.Parse(p.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("peer %s: url %q is not an http(s) URL", p.Name, p.URL)
	}
	return nil
}

// Transfers creates, runs and reports transfers of studies to peer centres.
// (Owned by the transfers work.)
type Transfers struct{}
