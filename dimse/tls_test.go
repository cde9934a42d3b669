package dimse

import (
	"crypto/tls"
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/synth"
	"github.com/dicom-gateway/gateway/internal/testpki"
)

// TestTLS: over a TLS listener that requires client certificates (PS3.15
// B.1), a caller with a certificate of the trusted CA associates, one
// without is refused in the handshake, DCMTK's storescu stores over TLS,
// and the Sender delivers to a peer with dimse.tls.
func TestTLS(t *testing.T) {
	noGoroutineLeak(t)
	ca := testpki.NewCA(t, "dimse-test-ca")
	server := ca.Server(t, "gateway")
	client := ca.Client(t, "MODALITY")
	ts := startServer(t, nil)
	addr, err := ts.ListenTLS("127.0.0.1:0", &tls.Config{
		MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{server.TLS},
		ClientCAs: ca.Pool, ClientAuth: tls.RequireAndVerifyClientCert,
	})
	if err != nil {
		t.Fatal(err)
	}
	contexts := []PresentationContext{{AbstractSyntax: VerificationSOPClass, TransferSyntax: []string{ImplicitVRLittleEndian}}}

	cl, err := Dial(t.Context(), addr.String(), DialOptions{CallingAE: "MODALITY", CalledAE: "GATEWAY", Contexts: contexts,
		TLS: &tls.Config{RootCAs: ca.Pool, Certificates: []tls.Certificate{client.TLS}}})
	if err != nil {
		t.Fatalf("with a client certificate: %v", err)
	}
	if st, err := cl.Echo(t.Context()); err != nil || !st.Success() {
		t.Errorf("echo over TLS: %s %v", st, err)
	}
	if err := cl.Release(); err != nil {
		t.Error(err)
	}
	if _, err := Dial(t.Context(), addr.String(), DialOptions{CallingAE: "MODALITY", CalledAE: "GATEWAY", Contexts: contexts,
		TLS: &tls.Config{RootCAs: ca.Pool}}); err == nil {
		t.Error("associated over TLS without a client certificate")
	}
	// A plain association on the TLS port goes nowhere.
	if _, err := Dial(t.Context(), addr.String(), DialOptions{CallingAE: "MODALITY", CalledAE: "GATEWAY", Contexts: contexts, ARTIM: 2e9}); err == nil {
		t.Error("a plain association on the TLS port was accepted")
	}

	// DCMTK over TLS.
	_, port, _ := net.SplitHostPort(addr.String())
	path := corpusDir(t, "ct_explicit_le_ge_small.dcm") + "/ct_explicit_le_ge_small.dcm"
	out, err := run(t, "storescu", "-aet", "MODALITY", "-aec", "GATEWAY", "-R", "+tls", client.KeyFile, client.CertFile, "+cf", ca.File, "127.0.0.1", port, path)
	if err != nil {
		t.Fatalf("storescu +tls: %v\n%s", err, out)
	}
	if _, err := ts.b.Index.GetInstance(t.Context(), "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"); err != nil {
		t.Errorf("not stored over TLS: %v", err)
	}

	// The Sender to a peer with dimse.tls.
	inst := synth.Study(synth.StudySpec{Seed: 24})[0]
	if _, err := ts.store.in.Store(t.Context(), inst.Reader(), gateway.StoreOptions{}); err != nil {
		t.Fatal(err)
	}
	rec, err := ts.b.Index.GetInstance(t.Context(), inst.SOPInstanceUID)
	if err != nil {
		t.Fatal(err)
	}
	dst := startServer(t, nil)
	dstAddr, err := dst.ListenTLS("127.0.0.1:0", &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{server.TLS},
		ClientCAs: ca.Pool, ClientAuth: tls.RequireAndVerifyClientCert})
	if err != nil {
		t.Fatal(err)
	}
	host, p, _ := net.SplitHostPort(dstAddr.String())
	dport, _ := strconv.Atoi(p)
	peer := gateway.Peer{Name: "tls-pacs", DIMSE: &gateway.DIMSEPeer{Host: host, Port: dport, CalledAE: "GATEWAY", TLS: true},
		TLS: gateway.PeerTLS{CAFile: ca.File, CertFile: client.CertFile, KeyFile: client.KeyFile}}
	if err := peer.Validate(); err != nil {
		t.Fatal(err)
	}
	snd := &Sender{Blobs: ts.b.Blobs, TLSConfig: func(gateway.Peer) (*tls.Config, error) {
		return &tls.Config{RootCAs: ca.Pool, Certificates: []tls.Certificate{client.TLS}}, nil
	}}
	var results []gateway.SendResult
	if err := snd.Send(t.Context(), peer, gateway.SendHeader{}, []*gateway.InstanceRecord{rec}, func(r []gateway.SendResult) { results = append(results, r...) }); err != nil {
		t.Fatal(err)
	}
	if len(results) != 1 || !results[0].OK {
		t.Fatalf("results %+v", results)
	}
	if _, err := dst.b.Index.GetInstance(t.Context(), inst.SOPInstanceUID); err != nil {
		t.Errorf("not delivered over TLS: %v", err)
	}
	// Without a TLS configuration the Sender refuses a dimse.tls peer.
	err = (&Sender{Blobs: ts.b.Blobs}).Send(t.Context(), peer, gateway.SendHeader{}, []*gateway.InstanceRecord{rec}, func([]gateway.SendResult) {})
	if err == nil || !strings.Contains(err.Error(), "no TLS client configuration") {
		t.Errorf("dimse.tls without a TLS configuration: %v", err)
	}
}
