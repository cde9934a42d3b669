package dicomweb_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/dicomweb"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/backendtest"
)

// peerGateway is hampshire with a routing rule that forwards what surrey
// sends on to cardiff (queued, never sent: no workers run).
type peerGateway struct {
	url       string
	transfers *gateway.Transfers
}

func newPeerGateway(t *testing.T, auth *dicomweb.Authenticator) *peerGateway {
	t.Helper()
	b := backendtest.Open(t, backendtest.Embedded, backendtest.Options{})
	tr := &gateway.Transfers{Name: "hampshire", Queue: b.Queue, Index: b.Index, Sender: dicomweb.NewClient(b.Blobs),
		Peers: []gateway.Peer{{Name: "cardiff", URL: "http://127.0.0.1:9/dicomweb"}}}
	s := testWiring{Config: dicomweb.Config{Auth: auth}, ServiceDeps: gateway.ServiceDeps{Name: "hampshire", Blobs: b.Blobs, Index: b.Index, AuditLog: b.AuditLog, Ingester: &gateway.Ingester{Blobs: b.Blobs, Index: b.Index}, Transfers: tr, Router: &gateway.Router{Transfers: tr, Rules: []gateway.RouteRule{
		{Name: "surrey-to-cardiff", Source: []string{"surrey"}, Destinations: []string{"cardiff"}},
	}}}}.server()
	return &peerGateway{url: "http://" + serveReal(t, s), transfers: tr}
}

// stow stores one new instance of study sop i with the given headers.
func (g *peerGateway) stow(t *testing.T, study string, i int, header ...string) {
	t.Helper()
	body, boundary := multipartBody(t, dicomPart(makeInstance(study, study+".1", testSOP(i), 4, 4, byte(i))))
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, g.url+"/dicomweb/studies", body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", `multipart/related; type="application/dicom"; boundary=`+boundary)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("STOW-RS: %d", resp.StatusCode)
	}
}

func (g *peerGateway) list(t *testing.T, f gateway.TransferFilter) []*gateway.Transfer {
	t.Helper()
	list, err := g.transfers.List(t.Context(), f)
	if err != nil {
		t.Fatal(err)
	}
	return list
}

// TestPeerHeadersBelievedOnlyFromPeers: X-Source-Centre and X-Transfer-ID
// from a credential not mapped to a peer are ignored: the upload is stored
// as the principal's (its name is the routing source), no rule restricted
// to another centre fires and no incoming transfer is recorded. From a
// credential mapped to surrey (peer: surrey) they are believed, and the
// source is always surrey, whatever X-Source-Centre claims.
func TestPeerHeadersBelievedOnlyFromPeers(t *testing.T) {
	auth, tokens := tokenAuth(t,
		dicomweb.TokenConfig{Name: "pacs-1", Roles: []gateway.Role{gateway.RoleStore}},
		dicomweb.TokenConfig{Name: "surrey-gateway", Roles: []gateway.Role{gateway.RoleStore}, Peer: "surrey"},
	)
	g := newPeerGateway(t, auth)
	const forgedStudy, peerStudy, claimStudy = "1.2.826.0.1.3680043.10.1.21", "1.2.826.0.1.3680043.10.1.22", "1.2.826.0.1.3680043.10.1.23"

	g.stow(t, forgedStudy, 0, "Authorization", "Bearer "+tokens["pacs-1"],
		dicomweb.HeaderSourceCentre, "surrey", dicomweb.HeaderTransferID, "tr-forged", dicomweb.HeaderTransferInstances, "1")
	if in := g.list(t, gateway.TransferFilter{Direction: gateway.DirectionIncoming}); len(in) != 0 {
		t.Fatalf("a store-role client forged incoming transfer %+v", in[0])
	}
	if out := g.list(t, gateway.TransferFilter{}); len(out) != 0 {
		t.Fatalf("a store-role client claiming to be surrey fired rule %s", out[0].CreatedBy)
	}

	g.stow(t, peerStudy, 1, "Authorization", "Bearer "+tokens["surrey-gateway"],
		dicomweb.HeaderSourceCentre, "surrey", dicomweb.HeaderTransferID, "tr-real", dicomweb.HeaderTransferInstances, "1")
	in := g.list(t, gateway.TransferFilter{Direction: gateway.DirectionIncoming})
	if len(in) != 1 || in[0].ID != "tr-real" || in[0].Source != "surrey" || in[0].State != gateway.StateCompleted {
		t.Fatalf("incoming transfers %+v, want tr-real from surrey, completed", in)
	}
	out := g.list(t, gateway.TransferFilter{})
	if len(out) != 1 || out[0].StudyUID != peerStudy || out[0].Destination != "cardiff" {
		t.Fatalf("outgoing transfers %+v, want the peer's study routed to cardiff", out)
	}

	// surrey's credential claiming to be cardiff still speaks for surrey.
	g.stow(t, claimStudy, 2, "Authorization", "Bearer "+tokens["surrey-gateway"],
		dicomweb.HeaderSourceCentre, "cardiff", dicomweb.HeaderTransferID, "tr-claim")
	for _, tr := range g.list(t, gateway.TransferFilter{Direction: gateway.DirectionIncoming}) {
		if tr.ID == "tr-claim" && tr.Source != "surrey" {
			t.Errorf("incoming tr-claim recorded from %q, want surrey (the credential's peer)", tr.Source)
		}
	}
}

// TestPeerHeadersWithoutAuth: without auth (loopback only, every local
// client with every role) the headers are believed, as two gateways on one
// machine send to each other.
func TestPeerHeadersWithoutAuth(t *testing.T) {
	g := newPeerGateway(t, nil)
	const study = "1.2.826.0.1.3680043.10.1.24"
	g.stow(t, study, 0, dicomweb.HeaderSourceCentre, "surrey", dicomweb.HeaderTransferID, "tr-local")
	in := g.list(t, gateway.TransferFilter{Direction: gateway.DirectionIncoming})
	if len(in) != 1 || in[0].Source != "surrey" {
		t.Fatalf("incoming %+v, want one from surrey", in)
	}
	if out := g.list(t, gateway.TransferFilter{}); len(out) != 1 || out[0].Destination != "cardiff" {
		t.Fatalf("outgoing %+v, want the rule for surrey fired", out)
	}
}

// TestPeerMappingValidated: a peer name that cannot be a transfer's source,
// one credential name mapped to two centres, and one mapped by one
// credential and not by another of the same name (which would then speak
// for the centre), are configuration errors; two credentials of one name
// and one peer (a token rotation) are not.
func TestPeerMappingValidated(t *testing.T) {
	const sum = "0000000000000000000000000000000000000000000000000000000000000000"
	for _, tt := range []struct {
		name string
		cfg  dicomweb.AuthConfig
		want string
	}{
		{"bad name", dicomweb.AuthConfig{Tokens: []dicomweb.TokenConfig{{Name: "a", SHA256: sum, Peer: "sur rey"}}}, "auth.tokens[0] (a): peer"},
		{"two centres", dicomweb.AuthConfig{Tokens: []dicomweb.TokenConfig{
			{Name: "a", SHA256: sum, Peer: "surrey"}, {Name: "a", SHA256: strings.Replace(sum, "0", "1", 1), Peer: "cardiff"},
		}}, "mapped to peer"},
		{"mapped and not", dicomweb.AuthConfig{Tokens: []dicomweb.TokenConfig{
			{Name: "surrey", SHA256: sum, Peer: "surrey"}, {Name: "surrey", SHA256: strings.Replace(sum, "0", "1", 1)},
		}}, "mapped to peer"},
	} {
		_, err := dicomweb.NewAuthenticator(tt.cfg)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want one containing %q", tt.name, err, tt.want)
		}
	}
	rotation := dicomweb.AuthConfig{Tokens: []dicomweb.TokenConfig{
		{Name: "surrey", SHA256: sum, Peer: "surrey", Roles: []gateway.Role{gateway.RoleStore}},
		{Name: "surrey", SHA256: strings.Replace(sum, "0", "1", 1), Peer: "surrey", Roles: []gateway.Role{gateway.RoleStore}},
	}}
	if _, err := dicomweb.NewAuthenticator(rotation); err != nil {
		t.Errorf("two tokens of one name and one peer: %v", err)
	}
}
