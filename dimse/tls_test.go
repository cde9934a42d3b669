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

// listenTLS makes srv listen on a loopback TLS port with server's
// certificate, requiring client certificates of ca (PS3.15 B.1).
func listenTLS(t *testing.T, srv *Server, server testpki.Leaf, ca *testpki.CA) net.Addr {
	t.Helper()
	addr, err := srv.ListenTLS("127.0.0.1:0", &tls.Config{
		MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{server.TLS},
		ClientCAs: ca.Pool, ClientAuth: tls.RequireAndVerifyClientCert,
	})
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

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
	addr := listenTLS(t, ts.Server, server, ca)
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

// TestTLSCertificateTiedToAETitle: a rule with a certificate admits its AE
// title only from a TLS caller whose certificate carries the name. Another
// certificate of the same CA claiming that AE title is rejected, as is the
// AE title on the plain port; the right certificate is admitted, and an
// AE title whose rule names no certificate is admitted with any
// certificate of the CA (as before the setting existed).
func TestTLSCertificateTiedToAETitle(t *testing.T) {
	noGoroutineLeak(t)
	ca := testpki.NewCA(t, "dimse-test-ca")
	server := ca.Server(t, "gateway")
	modality := ca.Client(t, "ct1.radiology.example")
	bySAN := ca.Client(t, "workstation", "ws7.radiology.example")
	intruder := ca.Client(t, "laptop.example", "laptop.example")
	store := []gateway.Role{gateway.RoleStore}
	ts := startServer(t, func(s *Server) {
		a, err := NewAccess([]AllowRule{
			{AETitle: "CT1", Hosts: []string{"127.0.0.1"}, Roles: store, Certificate: &gateway.CertificateName{SubjectCN: "ct1.radiology.example"}},
			{AETitle: "WS7", Hosts: []string{"127.0.0.1"}, Roles: store, Certificate: &gateway.CertificateName{SANDNS: "ws7.radiology.example"}},
			{AETitle: "OLDPACS", Hosts: []string{"127.0.0.1"}, Roles: store},
		}, false)
		if err != nil {
			t.Fatal(err)
		}
		s.Access = a
	})
	addr := listenTLS(t, ts.Server, server, ca)
	contexts := []PresentationContext{{AbstractSyntax: VerificationSOPClass, TransferSyntax: []string{ImplicitVRLittleEndian}}}
	dialTLS := func(ae string, cert testpki.Leaf) (*Client, error) {
		return Dial(t.Context(), addr.String(), DialOptions{CallingAE: ae, CalledAE: "GATEWAY", Contexts: contexts,
			TLS: &tls.Config{RootCAs: ca.Pool, Certificates: []tls.Certificate{cert.TLS}}})
	}
	for _, c := range []struct {
		ae   string
		cert testpki.Leaf
	}{{"CT1", modality}, {"WS7", bySAN}, {"OLDPACS", intruder}} {
		cl, err := dialTLS(c.ae, c.cert)
		if err != nil {
			t.Errorf("%s with its certificate: %v", c.ae, err)
			continue
		}
		if st, err := cl.Echo(t.Context()); err != nil || !st.Success() {
			t.Errorf("%s: echo %s %v", c.ae, st, err)
		}
		_ = cl.Release()
	}
	for _, c := range []struct {
		ae   string
		cert testpki.Leaf
	}{{"CT1", intruder}, {"CT1", bySAN}, {"WS7", modality}, {"WS7", intruder}} {
		_, err := dialTLS(c.ae, c.cert)
		wantReject(t, err, RejectError{RejectPermanent, SourceServiceUser, ReasonNoReason})
	}
	_, err := dial(t, ts, "CT1") // the plain port: no certificate at all
	wantReject(t, err, RejectError{RejectPermanent, SourceServiceUser, ReasonNoReason})

	if _, err := NewAccess([]AllowRule{
		{AETitle: "CT1", Hosts: []string{"10.0.0.1"}, Certificate: &gateway.CertificateName{SubjectCN: "ct1"}},
		{AETitle: "CT1", Hosts: []string{"10.0.0.0/8"}},
	}, false); err == nil {
		t.Error("two rules of one AE title, one with a certificate and one without, were accepted")
	}
	if _, err := NewAccess([]AllowRule{{AETitle: "X", Hosts: []string{"10.0.0.1"}, Certificate: &gateway.CertificateName{}}}, false); err == nil {
		t.Error("a certificate naming nothing was accepted")
	}
	if _, err := NewAccess([]AllowRule{{AETitle: "X", Hosts: []string{"10.0.0.1"}, Certificate: &gateway.CertificateName{SubjectCN: "a", SANURI: "spiffe://a"}}}, false); err == nil {
		t.Error("a certificate naming two things was accepted")
	}
}
