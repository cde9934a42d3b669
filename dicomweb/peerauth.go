package dicomweb

import (
	"errors"
	"fmt"

	"github.com/gin-gonic/gin"

	"github.com/dicom-gateway/gateway/gateway"
)

// Peer credentials. A gateway sending a transfer tells the receiver which
// centre it is and which transfer an instance belongs to (X-Source-Centre,
// X-Transfer-ID). The receiver believes that only from a credential mapped
// to that centre with peer: in the auth config (tokens, basic users, mTLS
// clients; not OIDC, whose users are people). From any other credential the
// headers are ignored: the upload is stored as from that principal (its
// name is the source routing rules see) and records no incoming transfer, so
// a store-role client can neither fire a rule restricted to another centre
// nor forge a transfer from one. They are ignored rather than refused so
// that a gateway whose credential is not yet mapped keeps delivering.
// Without auth (loopback only, every local client with every role) the
// headers are believed: two gateways on one machine send to each other that
// way, and nothing else can reach the gateway.

// peerKey identifies a credential across methods: names are unique per
// method only.
type peerKey struct{ method, name string }

// peerMap collects the peer: mappings of cfg, refusing a peer name that
// could not be a transfer's source and one credential mapped to two centres.
func peerMap(cfg AuthConfig) (map[peerKey]string, error) {
	m := map[peerKey]string{}
	var errs []error
	add := func(where, method, name, peer string) {
		if peer == "" {
			return
		}
		if err := gateway.ValidateTransferID(peer); err != nil {
			errs = append(errs, fmt.Errorf("%s (%s): peer %q: letters, digits, '-', '_' and '.' only, 1 to 64 of them", where, name, peer))
			return
		}
		k := peerKey{method, name}
		if prev, ok := m[k]; ok && prev != peer {
			errs = append(errs, fmt.Errorf("%s (%s): mapped to peer %q and to %q", where, name, prev, peer))
		}
		m[k] = peer
	}
	for i, t := range cfg.Tokens {
		add(fmt.Sprintf("auth.tokens[%d]", i), "token", t.Name, t.Peer)
	}
	for i, b := range cfg.Basic {
		add(fmt.Sprintf("auth.basic[%d]", i), "basic", b.Name, b.Peer)
	}
	if cfg.MTLS != nil {
		for i, c := range cfg.MTLS.Clients {
			add(fmt.Sprintf("auth.mtls.clients[%d]", i), "mtls", c.Name, c.Peer)
		}
	}
	return m, errors.Join(errs...)
}

// sourceCentre returns the centre a STOW-RS request may speak for, and
// whether it may: the principal's peer (whatever X-Source-Centre says), or
// without auth the X-Source-Centre header. Headers from a principal that is
// not a peer are ignored, with one warning per request.
func (s *Server) sourceCentre(c *gin.Context) (string, bool) {
	p := gateway.PrincipalFrom(c.Request.Context())
	header := c.GetHeader(HeaderSourceCentre)
	switch {
	case p.Peer != "":
		if header != "" && header != p.Peer {
			s.warnPeerHeaders(c, p, "X-Source-Centre differs from the credential's peer; the peer is used")
		}
		return p.Peer, true
	case s.Auth == nil:
		return header, header != ""
	}
	if header != "" || c.GetHeader(HeaderTransferID) != "" {
		s.warnPeerHeaders(c, p, "X-Source-Centre and X-Transfer-ID ignored: the credential is not mapped to a peer (peer: in the auth config)")
	}
	return "", false
}

func (s *Server) warnPeerHeaders(c *gin.Context, p gateway.Principal, msg string) {
	const key = "peer_headers_warned"
	if c.GetBool(key) {
		return
	}
	c.Set(key, true)
	s.Logger.WarnContext(c.Request.Context(), msg, gateway.LogKeyActor, p.Name)
}
