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
// could not be a transfer's source and one credential name mapped to two
// centres, or to a centre by one credential and to none by another: the
// mapping follows the name, so the second credential (another token named
// like a peer's, kept through a rotation) would speak for the centre too.
func peerMap(cfg AuthConfig) (map[peerKey]string, error) {
	m := map[peerKey]string{}
	seen := map[peerKey]string{} // every credential name, with its peer or ""
	var errs []error
	add := func(where, method, name, peer string) {
		k := peerKey{method, name}
		if prev, ok := seen[k]; ok && prev != peer {
			errs = append(errs, fmt.Errorf("%s (%s): another credential of this name is mapped to peer %q, this one to %q: give them different names or the same peer", where, name, prev, peer))
		}
		seen[k] = peer
		if peer == "" {
			return
		}
		if err := gateway.ValidateTransferID(peer); err != nil {
			errs = append(errs, fmt.Errorf("%s (%s): peer %q: letters, digits, '-', '_' and '.' only, 1 to 64 of them", where, name, peer))
			return
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
