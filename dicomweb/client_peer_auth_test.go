package dicomweb_test

// Tests of the transfer sender (dicomweb.Client) towards a peer that needs
// TLS (own CA, mutual TLS, a self-signed certificate) or credentials (HTTP
// basic, bearer token). Certificates are generated per test with a
// throwaway CA; the receiving side is a real gateway (newCentre on embedded
// backends) served over TLS by httptest.

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/dicom-gateway/gateway/dicomweb"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/backendtest"
	"github.com/dicom-gateway/gateway/internal/syncbuf"
	"github.com/dicom-gateway/gateway/internal/synth"
	"github.com/dicom-gateway/gateway/internal/testpki"
)

// seenRequest is what the receiving side was sent, before the gateway's
// handler runs.
type seenRequest struct {
	method, path   string
	authorization  []string
	user, pass     string
	basic          bool
	clientCN       string
	contentLength  int64
	transferHeader string
}

// recorder notes every request that reaches the HTTP handler (that is,
// every request whose TLS handshake succeeded) and passes it on.
type recorder struct {
	next http.Handler
	mu   sync.Mutex
	reqs []seenRequest
}

func (rc *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s := seenRequest{method: r.Method, path: r.URL.Path, authorization: r.Header.Values("Authorization"), contentLength: r.ContentLength, transferHeader: r.Header.Get(dicomweb.HeaderTransferID)}
	s.user, s.pass, s.basic = r.BasicAuth()
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		s.clientCN = r.TLS.PeerCertificates[0].Subject.CommonName
	}
	rc.mu.Lock()
	rc.reqs = append(rc.reqs, s)
	rc.mu.Unlock()
	rc.next.ServeHTTP(w, r)
}

func (rc *recorder) seen() []seenRequest {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]seenRequest(nil), rc.reqs...)
}

// serveTLS serves h over HTTPS with conf (its Certificates and client-auth
// settings) until the test ends. The http.Server's own log (TLS handshake
// errors) goes to the returned buffer.
func serveTLS(t *testing.T, h http.Handler, conf *tls.Config) (*httptest.Server, *syncbuf.Buffer) {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = conf
	errLog := &syncbuf.Buffer{}
	srv.Config.ErrorLog = log.New(errLog, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, errLog
}

// tlsPeer is a peer entry for the receiving gateway served at srv.
func tlsPeer(name string, srv *httptest.Server) gateway.Peer {
	return gateway.Peer{Name: name, URL: srv.URL + "/dicomweb", MaxParallel: 2, MaxRequestBytes: 20 << 10}
}

// sendStudy sends every instance src holds of ins' study to peer with c and
// returns the per-instance results and Send's error.
func sendStudy(t *testing.T, c *dicomweb.Client, src *centre, peer gateway.Peer, ins []synth.Instance) ([]gateway.SendResult, error) {
	t.Helper()
	recs, err := src.index.ListInstances(t.Context(), ins[0].StudyInstanceUID, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != len(ins) {
		t.Fatalf("%d instances indexed at %s, want %d", len(recs), src.name, len(ins))
	}
	var results []gateway.SendResult // report is never called concurrently
	err = c.Send(t.Context(), peer, gateway.SendHeader{TransferID: "tr-peer-auth-" + peer.Name, Source: src.name, Total: len(recs)}, recs, func(res []gateway.SendResult) {
		results = append(results, res...)
	})
	return results, err
}

// assertAllSent checks that every instance was confirmed stored with its size.
func assertAllSent(t *testing.T, results []gateway.SendResult, ins []synth.Instance) {
	t.Helper()
	if len(results) != len(ins) {
		t.Fatalf("%d results, want %d: %+v", len(results), len(ins), results)
	}
	size := map[string]int64{}
	for _, in := range ins {
		size[in.SOPInstanceUID] = in.Size()
	}
	for _, r := range results {
		if !r.OK || r.Bytes != size[r.SOPInstanceUID] {
			t.Errorf("result %+v, want OK with %d bytes", r, size[r.SOPInstanceUID])
		}
	}
}

// assertNothingStored checks that dst holds none of ins.
func assertNothingStored(t *testing.T, dst *centre, ins []synth.Instance) {
	t.Helper()
	for _, in := range ins {
		if _, err := dst.index.GetInstance(t.Context(), in.SOPInstanceUID); !errors.Is(err, gateway.ErrNotFound) {
			t.Errorf("%s at %s: err=%v, want not found (nothing may be stored)", in.SOPInstanceUID, dst.name, err)
		}
	}
}

// eventually polls cond for up to 5 s: the server logs a failed handshake
// on its own goroutine, possibly after the client has given up.
func eventually(cond func() bool) bool {
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// asSendError returns err as a *gateway.SendError or fails the test.
func asSendError(t *testing.T, err error) *gateway.SendError {
	t.Helper()
	se, ok := errors.AsType[*gateway.SendError](err)
	if !ok {
		t.Fatalf("error %v (%T) is not a *gateway.SendError", err, err)
	}
	return se
}

// assertNotLeaked fails when any of secrets occurs in any of texts.
func assertNotLeaked(t *testing.T, where string, text string, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if strings.Contains(text, s) {
			t.Errorf("%s contains the secret %q: %s", where, s, text)
		}
	}
}

// TestPeerTLSWithCAFile: the peer's certificate is issued by a private CA
// given as tls.ca_file; the study arrives byte for byte over HTTPS, the
// STOW-RS requests carry the transfer headers, and Verify (QIDO-RS and the
// peer's SHA-256 over the same TLS client) confirms it.
func TestPeerTLSWithCAFile(t *testing.T) {
	pki := testpki.NewCA(t, "peer-auth test CA")
	hampshire, surrey := newCentre(t, "hampshire", backendtest.Embedded), newCentre(t, "surrey", backendtest.Embedded)
	rec := &recorder{next: surrey.handler}
	srv, _ := serveTLS(t, rec, &tls.Config{Certificates: []tls.Certificate{pki.Server(t, "surrey").TLS}})
	ins := hampshire.store(t, synth.StudySpec{Seed: 811, Series: 2, InstancesPerSeries: 3})

	peer := tlsPeer("surrey", srv)
	peer.TLS.CAFile = pki.File
	peer.Gateway = true
	c := dicomweb.NewClient(hampshire.blobs)
	results, err := sendStudy(t, c, hampshire, peer, ins)
	if err != nil {
		t.Fatalf("Send over HTTPS with tls.ca_file: %v", err)
	}
	assertAllSent(t, results, ins)
	assertArrived(t, surrey, ins)

	var total, posted int64
	for _, in := range ins {
		total += in.Size()
	}
	for _, r := range rec.seen() {
		if r.method == http.MethodPost {
			posted += r.contentLength
			if r.transferHeader != "tr-peer-auth-surrey" {
				t.Errorf("POST %s carried %s %q", r.path, dicomweb.HeaderTransferID, r.transferHeader)
			}
		}
	}
	if posted < total {
		t.Errorf("the peer's handler was sent %d bytes of STOW-RS bodies, less than the %d bytes of the instances", posted, total)
	}

	recs, err := hampshire.index.ListInstances(t.Context(), ins[0].StudyInstanceUID, "")
	if err != nil {
		t.Fatal(err)
	}
	v, err := c.Verify(t.Context(), peer, ins[0].StudyInstanceUID, recs)
	if err != nil {
		t.Fatalf("Verify over HTTPS: %v", err)
	}
	if want := fmt.Sprintf("sha256: %d/%d identical", len(ins), len(ins)); !v.OK || !strings.Contains(v.Checked, want) {
		t.Errorf("verification %+v, want OK and %q", v, want)
	}
}

// TestPeerTLSUntrustedCA: the same peer without tls.ca_file is checked
// against the system roots only, which do not hold the private CA: the
// handshake fails with x509's unknown authority, the receiving handler is
// never reached and nothing is stored.
//
// Classification: Client.stow wraps every transport failure (no answer from
// the peer, which includes a failed certificate verification) in a
// SendError with Status 0 and Temporary true, so gateway.Transfers retries
// it with backoff until RetryPolicy.MaxAge instead of failing the
// transfer at once. Only failures to build the peer's client (an
// unreadable ca_file, cert_file or key_file: peerClientFor) are permanent,
// as is a local corrupt instance (TestSendLocalErrorsClassified). The test
// pins this down.
func TestPeerTLSUntrustedCA(t *testing.T) {
	pki := testpki.NewCA(t, "peer-auth test CA")
	hampshire, surrey := newCentre(t, "hampshire", backendtest.Embedded), newCentre(t, "surrey", backendtest.Embedded)
	rec := &recorder{next: surrey.handler}
	srv, errLog := serveTLS(t, rec, &tls.Config{Certificates: []tls.Certificate{pki.Server(t, "surrey").TLS}})
	ins := hampshire.store(t, synth.StudySpec{Seed: 812, Series: 1, InstancesPerSeries: 2})

	results, err := sendStudy(t, dicomweb.NewClient(hampshire.blobs), hampshire, tlsPeer("surrey", srv), ins)
	if err == nil {
		t.Fatal("Send to a peer whose CA is not trusted succeeded")
	}
	if _, ok := errors.AsType[x509.UnknownAuthorityError](err); !ok || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Errorf("error %q does not say the certificate is not trusted (want x509.UnknownAuthorityError)", err)
	}
	se := asSendError(t, err)
	if se.Peer != "surrey" || se.Status != 0 || !se.Temporary {
		t.Errorf("SendError{Peer:%q Status:%d Temporary:%v}, want peer surrey, status 0 and temporary (transport errors are retried)", se.Peer, se.Status, se.Temporary)
	}
	if !strings.Contains(err.Error(), srv.URL) {
		t.Errorf("error %q does not name the peer's address %s", err, srv.URL)
	}
	if len(results) != 0 {
		t.Errorf("results reported after a failed handshake: %+v", results)
	}
	if got := rec.seen(); len(got) != 0 {
		t.Errorf("the peer's handler was reached %d times despite the failed handshake", len(got))
	}
	if !eventually(func() bool { return strings.Contains(errLog.String(), "TLS handshake error") }) {
		t.Errorf("the peer's server logged no failed TLS handshake: %q", errLog.String())
	}
	assertNothingStored(t, surrey, ins)
}

// TestPeerTLSBadFiles: unreadable TLS files are a configuration error: a
// permanent SendError naming the key to fix. A failed build is not cached,
// so the same Client works once the peer's settings are right.
func TestPeerTLSBadFiles(t *testing.T) {
	pki := testpki.NewCA(t, "peer-auth test CA")
	hampshire, surrey := newCentre(t, "hampshire", backendtest.Embedded), newCentre(t, "surrey", backendtest.Embedded)
	srv, _ := serveTLS(t, surrey.handler, &tls.Config{Certificates: []tls.Certificate{pki.Server(t, "surrey").TLS}})
	ins := hampshire.store(t, synth.StudySpec{Seed: 813})
	notPEM := filepath.Join(t.TempDir(), "not.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	other := pki.Client(t, "other")
	mine := pki.Client(t, "hampshire")
	c := dicomweb.NewClient(hampshire.blobs)
	for _, tt := range []struct {
		name string
		tls  gateway.PeerTLS
		want string
	}{
		{"missing ca_file", gateway.PeerTLS{CAFile: filepath.Join(t.TempDir(), "absent.pem")}, "tls.ca_file"},
		{"ca_file without PEM", gateway.PeerTLS{CAFile: notPEM}, "holds no PEM certificate"},
		{"key of another certificate", gateway.PeerTLS{CAFile: pki.File, CertFile: mine.CertFile, KeyFile: other.KeyFile}, "tls.cert_file/key_file"},
	} {
		peer := tlsPeer("surrey", srv)
		peer.TLS = tt.tls
		_, err := sendStudy(t, c, hampshire, peer, ins)
		if err == nil {
			t.Errorf("%s: Send succeeded", tt.name)
			continue
		}
		if se := asSendError(t, err); se.Temporary || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %q temporary=%v, want permanent and naming %q", tt.name, err, se.Temporary, tt.want)
		}
	}
	assertNothingStored(t, surrey, ins)

	peer := tlsPeer("surrey", srv)
	peer.TLS.CAFile = pki.File
	results, err := sendStudy(t, c, hampshire, peer, ins)
	if err != nil {
		t.Fatalf("Send once ca_file is right: %v", err)
	}
	assertAllSent(t, results, ins)
	assertArrived(t, surrey, ins)
}

// TestPeerMutualTLS: the peer requires a client certificate issued by the
// CA. With tls.cert_file/key_file the study arrives and the peer sees the
// certificate's subject; without them, or with a certificate from another
// CA, the handshake is refused and nothing is stored.
func TestPeerMutualTLS(t *testing.T) {
	pki := testpki.NewCA(t, "peer-auth test CA")
	hampshire, surrey := newCentre(t, "hampshire", backendtest.Embedded), newCentre(t, "surrey", backendtest.Embedded)
	rec := &recorder{next: surrey.handler}
	srv, errLog := serveTLS(t, rec, &tls.Config{
		Certificates: []tls.Certificate{pki.Server(t, "surrey").TLS},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pki.Pool,
	})
	ins := hampshire.store(t, synth.StudySpec{Seed: 814, Series: 1, InstancesPerSeries: 3})
	rogue := testpki.NewCA(t, "rogue CA").Client(t, "hampshire")

	for _, tt := range []struct {
		name string
		tls  gateway.PeerTLS
	}{
		{"no client certificate", gateway.PeerTLS{CAFile: pki.File}},
		{"certificate of another CA", gateway.PeerTLS{CAFile: pki.File, CertFile: rogue.CertFile, KeyFile: rogue.KeyFile}},
	} {
		// A new Client each time: a Client builds a peer's TLS settings
		// once, on first use, keyed by the peer's name.
		peer := tlsPeer("surrey", srv)
		peer.TLS = tt.tls
		results, err := sendStudy(t, dicomweb.NewClient(hampshire.blobs), hampshire, peer, ins)
		if err == nil {
			t.Fatalf("%s: Send succeeded against a server that requires a client certificate from its CA", tt.name)
		}
		se := asSendError(t, err)
		if se.Status != 0 || !se.Temporary {
			t.Errorf("%s: SendError{Status:%d Temporary:%v}, want a transport error (status 0, temporary)", tt.name, se.Status, se.Temporary)
		}
		if len(results) != 0 {
			t.Errorf("%s: results %+v", tt.name, results)
		}
		t.Logf("%s: %v", tt.name, err)
	}
	if got := rec.seen(); len(got) != 0 {
		t.Errorf("the handler was reached %d times without a valid client certificate", len(got))
	}
	if !eventually(func() bool { return strings.Count(errLog.String(), "TLS handshake error") >= 2 }) {
		t.Errorf("the peer's server did not log both refused handshakes: %q", errLog.String())
	}
	assertNothingStored(t, surrey, ins)

	mine := pki.Client(t, "hampshire")
	peer := tlsPeer("surrey", srv)
	peer.TLS = gateway.PeerTLS{CAFile: pki.File, CertFile: mine.CertFile, KeyFile: mine.KeyFile}
	results, err := sendStudy(t, dicomweb.NewClient(hampshire.blobs), hampshire, peer, ins)
	if err != nil {
		t.Fatalf("Send with tls.cert_file/key_file: %v", err)
	}
	assertAllSent(t, results, ins)
	assertArrived(t, surrey, ins)
	seen := rec.seen()
	if len(seen) == 0 {
		t.Fatal("no request reached the handler")
	}
	for _, r := range seen {
		if r.clientCN != "hampshire" {
			t.Errorf("%s %s arrived with client certificate CN %q, want hampshire", r.method, r.path, r.clientCN)
		}
	}
}

// TestPeerInsecureSkipVerify: tls.insecure_skip_verify connects to a peer
// with a self-signed certificate that nothing trusts. It switches off the
// peer's authentication entirely and is meant for tests and labs only,
// never for a peer reached over a real network. Without it the same peer
// is refused.
func TestPeerInsecureSkipVerify(t *testing.T) {
	hampshire, surrey := newCentre(t, "hampshire", backendtest.Embedded), newCentre(t, "surrey", backendtest.Embedded)
	self := testpki.SelfSigned(t, "self-signed surrey")
	srv, _ := serveTLS(t, surrey.handler, &tls.Config{Certificates: []tls.Certificate{self.TLS}})
	ins := hampshire.store(t, synth.StudySpec{Seed: 815, Series: 1, InstancesPerSeries: 2})
	c := dicomweb.NewClient(hampshire.blobs)

	strict := tlsPeer("surrey-strict", srv)
	if _, err := sendStudy(t, c, hampshire, strict, ins); err == nil || !strings.Contains(err.Error(), "unknown authority") {
		t.Fatalf("Send to a self-signed peer without insecure_skip_verify = %v, want an unknown authority error", err)
	}
	assertNothingStored(t, surrey, ins)

	lab := tlsPeer("surrey-lab", srv)
	lab.TLS.InsecureSkipVerify = true
	results, err := sendStudy(t, c, hampshire, lab, ins)
	if err != nil {
		t.Fatalf("Send with insecure_skip_verify: %v", err)
	}
	assertAllSent(t, results, ins)
	assertArrived(t, surrey, ins)
}

// TestPeerBasicAuth: the peer runs the gateway's own HTTP basic auth
// (bcrypt hash, store role) over TLS. The configured username and password
// arrive as basic credentials and the study is stored. With a wrong
// password the Send is refused (401, permanent) and neither password, nor
// the encoded Authorization value, appears in the error, in the sending
// transfer's last_error, audit events or log, or in the receiving
// gateway's log and audit.
func TestPeerBasicAuth(t *testing.T) {
	const (
		username = "hampshire-gw"
		password = "Corr3ct-H0rse-Battery-9371"
		wrong    = "Wr0ng-Zebra-Staple-5528"
	)
	secrets := []string{
		password, wrong,
		base64.StdEncoding.EncodeToString([]byte(username + ":" + password)),
		base64.StdEncoding.EncodeToString([]byte(username + ":" + wrong)),
	}
	pki := testpki.NewCA(t, "peer-auth test CA")
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	surreyAuth, err := dicomweb.NewAuthenticator(dicomweb.AuthConfig{Basic: []dicomweb.BasicConfig{
		{Name: "hampshire", Username: username, PasswordHash: string(hash), Roles: []gateway.Role{gateway.RoleStore, gateway.RoleRead}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	surreyLog, surreyAudit := &syncbuf.Buffer{}, &transferAudit{}
	hampshire := newCentre(t, "hampshire", backendtest.Embedded)
	surrey := newCentre(t, "surrey", backendtest.Embedded, func(w *testWiring) {
		w.Auth = surreyAuth
		w.Config.Logger = slog.New(slog.NewTextHandler(surreyLog, &slog.HandlerOptions{Level: slog.LevelDebug}))
		w.Auditor = surreyAudit
	})
	rec := &recorder{next: surrey.handler}
	srv, _ := serveTLS(t, rec, &tls.Config{Certificates: []tls.Certificate{pki.Server(t, "surrey").TLS}})

	peer := tlsPeer("surrey", srv)
	peer.TLS.CAFile = pki.File
	peer.Username, peer.Password = username, wrong
	ins := hampshire.store(t, synth.StudySpec{Seed: 816, Series: 1, InstancesPerSeries: 2})
	c := dicomweb.NewClient(hampshire.blobs)

	// Wrong password, straight through the Client.
	results, err := sendStudy(t, c, hampshire, peer, ins)
	if err == nil {
		t.Fatal("Send with a wrong password succeeded")
	}
	se := asSendError(t, err)
	if se.Status != http.StatusUnauthorized || se.Temporary || !strings.Contains(err.Error(), "refused this gateway's credentials") {
		t.Errorf("error %q status %d temporary %v, want a permanent 401 refusal of the credentials", err, se.Status, se.Temporary)
	}
	for _, form := range []string{err.Error(), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", se), fmt.Sprintf("%+v", peer), fmt.Sprintf("%#v", peer)} {
		assertNotLeaked(t, "the Send error or the peer printed", form, secrets...)
	}
	if len(results) != 0 {
		t.Errorf("results %+v after a refused request", results)
	}
	assertNothingStored(t, surrey, ins)

	// Wrong password, through a transfer: it fails at once (not retried)
	// and its last_error, audit and log hold no secret.
	hampshireLog := &syncbuf.Buffer{}
	hampshire.transfers.Logger = slog.New(slog.NewTextHandler(hampshireLog, &slog.HandlerOptions{Level: slog.LevelDebug}))
	hampshire.transfers.Peers = []gateway.Peer{peer}
	hampshire.start(t)
	created := hampshire.create(t, ins[0].StudyInstanceUID, "surrey", gateway.PriorityNormal)
	tr := hampshire.wait(t, created.ID, 30*time.Second)
	if tr.State != gateway.StateFailed || tr.Attempts != 1 || !strings.Contains(tr.LastError, "401") {
		t.Errorf("transfer with a wrong password: state %s attempts %d last_error %q, want failed after 1 attempt with the 401", tr.State, tr.Attempts, tr.LastError)
	}
	assertNotLeaked(t, "the transfer's last_error", tr.LastError, secrets...)
	assertNotLeaked(t, "the sending gateway's transfer log", hampshireLog.String(), secrets...)
	hampshire.audit.mu.Lock()
	assertNotLeaked(t, "the sending gateway's audit", fmt.Sprintf("%+v", hampshire.audit.events), secrets...)
	hampshire.audit.mu.Unlock()
	assertNothingStored(t, surrey, ins)

	// The right password.
	peer.Password = password
	results, err = sendStudy(t, c, hampshire, peer, ins)
	if err != nil {
		t.Fatalf("Send with the right password: %v", err)
	}
	assertAllSent(t, results, ins)
	assertArrived(t, surrey, ins)

	var wrongSeen, rightSeen int
	for _, r := range rec.seen() {
		if !r.basic || r.user != username || len(r.authorization) != 1 || strings.HasPrefix(r.authorization[0], "Bearer") {
			t.Errorf("%s %s: Authorization %q, want exactly one basic credential for %s", r.method, r.path, r.authorization, username)
			continue
		}
		switch r.pass {
		case wrong:
			wrongSeen++
		case password:
			rightSeen++
		default:
			t.Errorf("%s %s: password %q is not the configured one", r.method, r.path, r.pass)
		}
	}
	if wrongSeen < 2 || rightSeen < 1 {
		t.Errorf("peer saw %d requests with the wrong and %d with the right password, want at least 2 and 1", wrongSeen, rightSeen)
	}
	if len(surreyAudit.find(gateway.ActionAuthFailure)) == 0 {
		t.Error("the receiving gateway audited no authentication failure")
	}
	surreyAudit.mu.Lock()
	assertNotLeaked(t, "the receiving gateway's audit", fmt.Sprintf("%+v", surreyAudit.events), secrets...)
	surreyAudit.mu.Unlock()
	assertNotLeaked(t, "the receiving gateway's log", surreyLog.String(), secrets...)
}

// TestPeerBearerToken: a peer with a token is sent exactly
// "Authorization: Bearer <token>" on STOW-RS and on Verify's QIDO-RS and
// SHA-256 requests, and never basic credentials, even if username and
// password are (wrongly) configured as well. A wrong token is a permanent
// 401 whose error does not contain the token.
func TestPeerBearerToken(t *testing.T) {
	const token = "tok-5e1c7a9b-peer-auth-test-31f0"
	pki := testpki.NewCA(t, "peer-auth test CA")
	sum := sha256.Sum256([]byte(token))
	surreyAuth, err := dicomweb.NewAuthenticator(dicomweb.AuthConfig{Tokens: []dicomweb.TokenConfig{
		{Name: "hampshire", SHA256: hex.EncodeToString(sum[:]), Roles: []gateway.Role{gateway.RoleStore, gateway.RoleRead, gateway.RoleTransfer}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	hampshire := newCentre(t, "hampshire", backendtest.Embedded)
	surrey := newCentre(t, "surrey", backendtest.Embedded, func(w *testWiring) { w.Auth = surreyAuth })
	rec := &recorder{next: surrey.handler}
	srv, _ := serveTLS(t, rec, &tls.Config{Certificates: []tls.Certificate{pki.Server(t, "surrey").TLS}})
	ins := hampshire.store(t, synth.StudySpec{Seed: 817, Series: 2, InstancesPerSeries: 2})
	c := dicomweb.NewClient(hampshire.blobs)

	bad := tlsPeer("surrey", srv)
	bad.TLS.CAFile = pki.File
	bad.Token = "tok-not-the-right-one-8842"
	// One request at a time: the 401 comes before the body is read, so with
	// two in flight Send could return while the second is still on its way,
	// and nBad below must count every request with the wrong token.
	bad.MaxParallel = 1
	_, err = sendStudy(t, c, hampshire, bad, ins)
	if se := asSendError(t, err); se.Status != http.StatusUnauthorized || se.Temporary {
		t.Errorf("wrong token: %v (status %d temporary %v), want a permanent 401", err, se.Status, se.Temporary)
	}
	assertNotLeaked(t, "the Send error", err.Error(), string(bad.Token))
	assertNothingStored(t, surrey, ins)
	nBad := len(rec.seen())

	peer := tlsPeer("surrey", srv)
	peer.TLS.CAFile = pki.File
	peer.Gateway = true
	peer.Token = token
	// Invalid per Peer.Validate, but if it got this far the token wins.
	peer.Username, peer.Password = "hampshire-gw", "basic-must-not-be-sent-6203"
	results, err := sendStudy(t, c, hampshire, peer, ins)
	if err != nil {
		t.Fatalf("Send with the token: %v", err)
	}
	assertAllSent(t, results, ins)
	assertArrived(t, surrey, ins)
	recs, err := hampshire.index.ListInstances(t.Context(), ins[0].StudyInstanceUID, "")
	if err != nil {
		t.Fatal(err)
	}
	v, err := c.Verify(t.Context(), peer, ins[0].StudyInstanceUID, recs)
	if err != nil || !v.OK || !strings.Contains(v.Checked, "sha256") {
		t.Fatalf("Verify with the token = %+v, %v; want OK with the SHA-256 check", v, err)
	}

	seen := rec.seen()
	if len(seen) <= nBad {
		t.Fatal("no request with the right token reached the peer")
	}
	kinds := map[string]bool{}
	for i, r := range seen {
		want := "Bearer " + token
		if i < nBad {
			want = "Bearer " + string(bad.Token)
		}
		if len(r.authorization) != 1 || r.authorization[0] != want {
			t.Errorf("%s %s: Authorization %q, want exactly [%q]", r.method, r.path, r.authorization, want)
		}
		if r.basic {
			t.Errorf("%s %s carries basic credentials for %q alongside the token", r.method, r.path, r.user)
		}
		if i >= nBad {
			switch {
			case r.method == http.MethodPost:
				kinds["stow"] = true
			case strings.HasPrefix(r.path, "/dicomweb/"):
				kinds["qido"] = true
			case strings.HasPrefix(r.path, "/api/v1/"):
				kinds["sha256"] = true
			}
		}
	}
	if len(kinds) != 3 {
		t.Errorf("requests with the token seen: %v, want stow, qido and sha256", kinds)
	}
}
