package dicomweb

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dicom-gateway/gateway/client"
	"github.com/dicom-gateway/gateway/gateway"
)

// Headers that tie a STOW-RS request to the sender's transfer, so that the
// receiving gateway records an incoming transfer under the same ID.
const (
	HeaderTransferID        = client.HeaderTransferID
	HeaderSourceCentre      = client.HeaderSourceCentre
	HeaderTransferInstances = client.HeaderTransferInstances
)

// Client is the gateway.Sender: it stores instances at a peer with STOW-RS
// and checks them with QIDO-RS (and, for a peer that runs this gateway, the
// SHA-256 of what it stored). Instances are streamed from Blobs through an
// io.Pipe into a multipart/related body, so memory does not grow with the
// study; each instance's bytes are hashed on the way and a request is cut
// short if they do not match the index (a corrupt local copy is never sent
// as if it were good). Requests to one peer are bounded by its max_parallel
// across every transfer. Safe for concurrent use.
type Client struct {
	Blobs gateway.BlobStore
	// UserAgent is sent with every request (default "dicom-gateway").
	UserAgent string
	// MaxBatchInstances bounds the instances in one STOW-RS request
	// (default 1000).
	MaxBatchInstances int

	mu    sync.Mutex
	peers map[string]*peerClient
}

var _ gateway.Sender = (*Client)(nil)

// Default per-peer limits. Four requests in flight keep a 1 Gbit/s link with
// 20 ms RTT busy while each request waits for its answer (a round trip plus
// the receiver's last sync); a link with a larger bandwidth-delay product
// wants a higher max_parallel.
const (
	DefaultPeerMaxParallel     = 4
	DefaultPeerMaxRequestBytes = 64 << 20
)

// minRequestBytes is the smallest STOW-RS request a study is split into
// when it is cut to keep every parallel request busy (requestBytes).
const minRequestBytes = 8 << 20

// requestBytes is the size of the STOW-RS requests a study of total bytes is
// cut into: small enough that each of the parallel requests gets about
// three, so all connections stay busy to the end and a large instance sent
// alone does not leave the others idle, but not below minRequestBytes (each
// request costs a round trip) nor above the peer's maxBytes.
func requestBytes(total int64, parallel int, maxBytes int64) int64 {
	return min(maxBytes, max(minRequestBytes, total/int64(3*max(1, parallel))))
}

type peerClient struct {
	http *http.Client
	sem  chan struct{}
	// digestsChecked: the peer's last STOW-RS answer said it compares each
	// part's Content-Digest with the bytes it received
	// (client.HeaderDigestsChecked). Instances sent to it are then not
	// hashed here as well: a local copy that no longer matches its
	// recorded SHA-256 is refused there before it is stored, and
	// verification compares the SHA-256 the peer recorded with ours.
	digestsChecked atomic.Bool
}

// NewClient returns a Client that reads instances from blobs.
func NewClient(blobs gateway.BlobStore) *Client {
	return &Client{Blobs: blobs}
}

// peerClientFor returns the HTTP client and request semaphore for p, built
// on first use from its TLS settings.
func (c *Client) peerClientFor(p gateway.Peer) (*peerClient, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if pc, ok := c.peers[p.Name]; ok {
		return pc, nil
	}
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: p.TLS.InsecureSkipVerify}
	if p.TLS.CAFile != "" {
		pem, err := os.ReadFile(p.TLS.CAFile)
		if err != nil {
			return nil, fmt.Errorf("peer %s: tls.ca_file: %w", p.Name, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("peer %s: tls.ca_file %s holds no PEM certificate", p.Name, p.TLS.CAFile)
		}
		tlsConf.RootCAs = pool
	}
	if p.TLS.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(p.TLS.CertFile, p.TLS.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("peer %s: tls.cert_file/key_file: %w", p.Name, err)
		}
		tlsConf.Certificates = []tls.Certificate{cert}
	}
	parallel := p.MaxParallel
	if parallel <= 0 {
		parallel = DefaultPeerMaxParallel
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsConf
	tr.MaxIdleConnsPerHost = parallel + 2
	tr.ResponseHeaderTimeout = 10 * time.Minute
	tr.WriteBufferSize, tr.ReadBufferSize = 256<<10, 64<<10
	sem := make(chan struct{}, parallel)
	pc := &peerClient{http: &http.Client{Transport: &boundedTransport{sem: sem, next: tr}}, sem: sem}
	if c.peers == nil {
		c.peers = map[string]*peerClient{}
	}
	c.peers[p.Name] = pc
	return pc, nil
}

// peerAPI is the shared client for peer, sending through pc (its TLS
// settings and request bound) with the peer's current credentials; admin is
// its admin API root, when the call needs it.
func (c *Client) peerAPI(pc *peerClient, p gateway.Peer, admin string) *client.Client {
	ua := c.UserAgent
	if ua == "" {
		ua = "dicom-gateway"
	}
	api := &client.Client{DICOMweb: p.URL, Admin: admin, HTTP: pc.http, UserAgent: ua}
	switch {
	case p.Token != "":
		api.Token = p.Token.Reveal()
	case p.Username != "":
		api.Username, api.Password = p.Username, p.Password.Reveal()
	}
	return api
}

// boundedTransport holds one of sem's slots from the moment a request is
// sent until its answer's header arrives, bounding the requests in flight
// to one peer across every transfer.
type boundedTransport struct {
	sem  chan struct{}
	next http.RoundTripper
}

func (t *boundedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	select {
	case t.sem <- struct{}{}:
	case <-req.Context().Done():
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, req.Context().Err()
	}
	defer func() { <-t.sem }()
	return t.next.RoundTrip(req)
}

// batches splits instances into STOW-RS requests of at most maxBytes (an
// instance larger than that goes alone) and maxCount instances.
func batches(instances []*gateway.InstanceRecord, maxBytes int64, maxCount int) [][]*gateway.InstanceRecord {
	var out [][]*gateway.InstanceRecord
	var cur []*gateway.InstanceRecord
	var size int64
	for _, rec := range instances {
		if len(cur) > 0 && (size+rec.Size > maxBytes || len(cur) >= maxCount) {
			out = append(out, cur)
			cur, size = nil, 0
		}
		cur = append(cur, rec)
		size += rec.Size
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

// Send implements gateway.Sender: STOW-RS requests of up to the peer's
// max_request_bytes (smaller for a study that would otherwise not fill
// max_parallel requests: requestBytes), up to max_parallel at once, each
// connection taking the next request as soon as its last one is answered.
// The first request that fails as a whole stops the others and is returned.
func (c *Client) Send(ctx context.Context, peer gateway.Peer, h gateway.SendHeader, instances []*gateway.InstanceRecord, report func([]gateway.SendResult)) error {
	pc, err := c.peerClientFor(peer)
	if err != nil {
		return &gateway.SendError{Peer: peer.Name, Err: err}
	}
	maxBytes := peer.MaxRequestBytes
	if maxBytes <= 0 {
		maxBytes = DefaultPeerMaxRequestBytes
	}
	maxCount := c.MaxBatchInstances
	if maxCount <= 0 {
		maxCount = 1000
	}
	parallel := cap(pc.sem)
	var total int64
	for _, rec := range instances {
		total += rec.Size
	}
	maxBytes = requestBytes(total, parallel, maxBytes)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	jobs := make(chan []*gateway.InstanceRecord)
	var (
		mu       sync.Mutex // serialises report and guards firstErr
		firstErr error
		wg       sync.WaitGroup
	)
	for range parallel {
		wg.Go(func() {
			for b := range jobs {
				res, err := c.stow(ctx, pc, peer, h, b)
				mu.Lock()
				if err != nil {
					if firstErr == nil {
						firstErr = err
						cancel(err)
					}
				} else if ctx.Err() == nil || len(res) > 0 {
					report(res)
				}
				mu.Unlock()
			}
		})
	}
feed:
	for _, b := range batches(instances, maxBytes, maxCount) {
		select {
		case jobs <- b:
		case <-ctx.Done():
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return context.Cause(ctx)
}

// localError is a failure on our side while streaming a batch: an instance
// missing or corrupt in our storage.
type localError struct{ err error }

// errLocalCorrupt marks a local instance whose bytes differ from its index
// entry: sending it again cannot help, so the transfer fails. Every other
// local error (a blob deleted since the study was read, too many open
// files, storage unreachable) is retried: the next attempt reads the
// study again.
var errLocalCorrupt = errors.New("local copy corrupt")

func (e *localError) Error() string { return e.err.Error() }
func (e *localError) Unwrap() error { return e.err }

// blobPart is one instance of a batch as a client.Instance: its bytes are
// read from blob storage while the request is sent (opened ahead by the
// batch's opener) and checked against the index's size and SHA-256.
type blobPart struct {
	rec   *gateway.InstanceRecord
	ahead *opener
	i     int
	// rewrite, when set, transforms the stored bytes on the way out
	// (identity coercion); rec then carries the rewritten size and SHA-256.
	rewrite func(*gateway.InstanceRecord, io.ReadCloser) io.ReadCloser
	// checkSum: compare the bytes sent with rec's SHA-256 here; false when
	// the peer does it (peerClient.digestsChecked).
	checkSum bool
}

func (p *blobPart) Size() int64 { return p.rec.Size }

// SHA256 is declared in the part's Content-Digest (client.Digested).
func (p *blobPart) SHA256() string { return p.rec.SHA256 }

func (p *blobPart) WriteTo(w io.Writer) (int64, error) {
	rc, err := p.ahead.open(p.i)
	if err != nil {
		return 0, &localError{fmt.Errorf("reading instance %s from local storage: %w", p.rec.SOPInstanceUID, err)}
	}
	if p.rewrite != nil {
		rc = p.rewrite(p.rec, rc)
	}
	buf := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(buf)
	var src io.Reader = rc
	var sum hash.Hash
	if p.checkSum && p.rec.SHA256 != "" {
		sum = sha256.New()
		src = io.TeeReader(rc, sum)
	}
	n, err := io.CopyBuffer(w, src, *buf)
	cerr := rc.Close()
	if err != nil {
		return n, err
	}
	if cerr != nil {
		return n, &localError{fmt.Errorf("reading instance %s from local storage: %w", p.rec.SOPInstanceUID, cerr)}
	}
	if n != p.rec.Size || (sum != nil && hex.EncodeToString(sum.Sum(nil)) != p.rec.SHA256) {
		return n, &localError{fmt.Errorf("local copy of instance %s is corrupt: its size or SHA-256 differs from the index; not sent: %w", p.rec.SOPInstanceUID, errLocalCorrupt)}
	}
	return n, nil
}

// blobParts makes batch the instances of one STOW-RS request. The next
// instances' blobs are opened while one is copied (openAhead), so an object
// store's per-request latency overlaps the network instead of adding up;
// the returned close releases what was opened but not sent.
func (c *Client) blobParts(ctx context.Context, batch []*gateway.InstanceRecord, h gateway.SendHeader, checkSum bool) ([]client.Instance, func()) {
	parts := make([]part, len(batch))
	for i, rec := range batch {
		parts[i].open = func(ctx context.Context) (io.ReadCloser, error) { return c.Blobs.Get(ctx, h.StoredKey(rec), 0, -1) }
	}
	ahead := openAhead(ctx, parts, gateway.OverNetwork(c.Blobs))
	out := make([]client.Instance, len(batch))
	for i, rec := range batch {
		out[i] = &blobPart{rec: rec, ahead: ahead, i: i, rewrite: h.Rewrite, checkSum: checkSum}
	}
	return out, ahead.close
}

// stow sends one batch and returns the peer's answer per instance.
func (c *Client) stow(ctx context.Context, pc *peerClient, peer gateway.Peer, h gateway.SendHeader, batch []*gateway.InstanceRecord) ([]gateway.SendResult, error) {
	header := http.Header{}
	header.Set(client.HeaderTransferID, h.TransferID)
	header.Set(client.HeaderSourceCentre, h.Source)
	if h.Total > 0 {
		header.Set(client.HeaderTransferInstances, strconv.Itoa(h.Total))
	}
	// Only a gateway peer's digest check is relied on: its SHA-256 is
	// also compared at verification, should it stop checking.
	hashHere := !(peer.Gateway && pc.digestsChecked.Load())
	parts, release := c.blobParts(ctx, batch, h, hashHere)
	resp, err := c.peerAPI(pc, peer, "").Store(ctx, batch[0].StudyInstanceUID, parts, header)
	release()
	if resp != nil {
		pc.digestsChecked.Store(strings.EqualFold(resp.Header.Get(client.HeaderDigestsChecked), client.DigestSHA256))
	}
	if le, ok := errors.AsType[*localError](err); ok {
		return nil, &gateway.SendError{Peer: peer.Name, Temporary: !errors.Is(le, errLocalCorrupt), Err: le}
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
		return nil, &gateway.SendError{Peer: peer.Name, Temporary: true, Err: fmt.Errorf("sending to %s: %w", redactURL(peer.URL), unwrapURLError(err))}
	}
	switch resp.StatusCode {
	case http.StatusOK, http.StatusAccepted, http.StatusConflict:
		res, perr := parseStowResponse(resp, batch)
		if perr != nil {
			if resp.StatusCode == http.StatusConflict {
				return nil, &gateway.SendError{Peer: peer.Name, Status: resp.StatusCode, Err: fmt.Errorf("the request was refused: %s", client.Snippet(resp.Body))}
			}
			return nil, &gateway.SendError{Peer: peer.Name, Status: resp.StatusCode, Temporary: true, Err: fmt.Errorf("unreadable STOW-RS answer: %w", perr)}
		}
		return res, nil
	}
	var length int64
	for _, rec := range batch {
		length += rec.Size
	}
	return nil, statusError(peer, resp.StatusCode, resp.Header, resp.Body, length)
}

// statusError turns a failed answer into a SendError an admin can act on.
func statusError(peer gateway.Peer, code int, header http.Header, body []byte, length int64) *gateway.SendError {
	e := &gateway.SendError{Peer: peer.Name, Status: code}
	switch {
	case code == http.StatusTooManyRequests || code == http.StatusRequestTimeout || code >= 500:
		e.Temporary = true
		e.RetryAfter = retryAfter(header.Get("Retry-After"), time.Now())
		e.Err = fmt.Errorf("the peer is busy or unavailable: %s", client.Snippet(body))
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		e.Err = fmt.Errorf("the peer refused this gateway's credentials; check the token or username/password configured for peer %s and its roles there", peer.Name)
	case code == http.StatusNotFound:
		e.Err = fmt.Errorf("no STOW-RS service at this address; check the url configured for peer %s", peer.Name)
	case code == http.StatusRequestEntityTooLarge:
		e.Err = fmt.Errorf("a request of %d bytes is too large for the peer; lower max_request_bytes for peer %s", length, peer.Name)
	default:
		e.Err = fmt.Errorf("the request was refused: %s", client.Snippet(body))
	}
	return e
}

// retryAfter parses a Retry-After header: seconds or an HTTP date.
func retryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil && s >= 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// unwrapURLError drops the url.Error around a transport error (its URL may
// carry credentials). net/http, net/textproto and HTTP/2 quote the peer's
// own bytes when its answer is malformed (`malformed HTTP status code
// "…"`, `malformed MIME header line: …`, `bad Content-Length "…"`, a
// GOAWAY's `debug="…"`): such text is marked as the peer's words
// (gateway.QuotePeer), which the log withholds. Connection and TLS errors
// quote nothing and stay readable in the log.
func unwrapURLError(err error) error {
	if ue, ok := errors.AsType[*url.Error](err); ok {
		err = ue.Err
	}
	if msg := err.Error(); strings.Contains(msg, "malformed") || strings.Contains(msg, `"`) {
		return peerWordsError{err}
	}
	return err
}

// peerWordsError is an error whose whole text may hold the peer's bytes.
type peerWordsError struct{ err error }

func (e peerWordsError) Error() string { return gateway.QuotePeer(e.err.Error()) }
func (e peerWordsError) Unwrap() error { return e.err }

func redactURL(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "the peer"
	}
	p.User = nil
	return p.Scheme + "://" + p.Host
}

// parseStowResponse reads the peer's STOW-RS answer: ReferencedSOPSequence
// items are stored, FailedSOPSequence items refused with a FailureReason.
// An instance of the batch the answer does not mention is reported as a
// retryable failure, except after a 200 with no sequences at all, which
// PS3.18 defines as "all stored".
func parseStowResponse(resp *client.StoreResponse, batch []*gateway.InstanceRecord) ([]gateway.SendResult, error) {
	ans, err := resp.Answer()
	if err != nil {
		return nil, err
	}
	byUID := map[string]gateway.SendResult{}
	for _, it := range ans.Stored {
		byUID[it.SOPInstanceUID] = gateway.SendResult{SOPInstanceUID: it.SOPInstanceUID, OK: true}
	}
	for _, it := range ans.Failed {
		reason := gateway.ReasonText(it.Reason)
		if it.Comment != "" {
			reason += " " + gateway.QuotePeer(it.Comment)
		}
		byUID[it.SOPInstanceUID] = gateway.SendResult{SOPInstanceUID: it.SOPInstanceUID, Reason: reason, ReasonCode: it.Reason, Retryable: gateway.ReasonRetryable(it.Reason)}
	}
	none := len(byUID) == 0
	allOK := resp.StatusCode == http.StatusOK
	out := make([]gateway.SendResult, 0, len(batch))
	for _, rec := range batch {
		r, ok := byUID[rec.SOPInstanceUID]
		switch {
		case ok:
		case none && allOK:
			r = gateway.SendResult{SOPInstanceUID: rec.SOPInstanceUID, OK: true}
		default:
			r = gateway.SendResult{SOPInstanceUID: rec.SOPInstanceUID, Reason: "not mentioned in the peer's answer", Retryable: true}
		}
		if r.OK {
			r.Bytes = rec.Size
		}
		out = append(out, r)
	}
	return out, nil
}

// Verify implements gateway.Sender: QIDO-RS lists the study's instances at
// the peer, page by page; for a gateway peer the SHA-256 of every stored
// instance is compared with ours: the one the peer recorded as the bytes
// streamed into its storage or, with peer.VerifyReread, one it computes
// again from its storage.
func (c *Client) Verify(ctx context.Context, peer gateway.Peer, studyUID string, instances []*gateway.InstanceRecord) (*gateway.Verification, error) {
	pc, err := c.peerClientFor(peer)
	if err != nil {
		return nil, &gateway.SendError{Peer: peer.Name, Err: err}
	}
	uids, err := c.peerAPI(pc, peer, "").StudyInstances(ctx, studyUID, qidoPage)
	if err != nil {
		return nil, queryError(ctx, peer, peer.URL, err)
	}
	listed := make(map[string]bool, len(uids))
	for _, uid := range uids {
		listed[uid] = true
	}
	v := &gateway.Verification{}
	for _, rec := range instances {
		if !listed[rec.SOPInstanceUID] {
			v.Missing = append(v.Missing, rec.SOPInstanceUID)
		}
	}
	v.Checked = fmt.Sprintf("qido: %d/%d instances listed", len(instances)-len(v.Missing), len(instances))
	if peer.Gateway {
		admin, err := AdminURL(peer)
		if err != nil {
			return nil, &gateway.SendError{Peer: peer.Name, Err: err}
		}
		sums, err := c.peerAPI(pc, peer, admin).StudySHA256(ctx, studyUID, peer.VerifyReread)
		if err != nil {
			return nil, queryError(ctx, peer, admin, err)
		}
		if len(sums) == 0 && len(v.Missing) < len(instances) {
			// QIDO-RS lists the study but the admin API knows none of it: the
			// admin URL leads elsewhere (a proxy forwarding /dicomweb only).
			// Nothing was compared, so nothing is verified.
			return nil, &gateway.SendError{Peer: peer.Name, Temporary: true, Err: fmt.Errorf(
				"its QIDO-RS lists %d instances of the study but its admin API (%s) gave no SHA-256 for any: check the peer's admin_url",
				len(instances)-len(v.Missing), admin)}
		}
		same := 0
		for _, rec := range instances {
			got, ok := sums[rec.SOPInstanceUID]
			switch {
			case !ok:
				// Listed but without a digest (deleted at the peer between
				// the two calls): not verified, so sent again.
				if listed[rec.SOPInstanceUID] {
					v.Missing = append(v.Missing, rec.SOPInstanceUID)
				}
			case got == rec.SHA256:
				same++
			default:
				v.Mismatched = append(v.Mismatched, rec.SOPInstanceUID)
			}
		}
		how := "recorded at ingest"
		if peer.VerifyReread {
			how = "re-read from storage"
		}
		v.Checked += fmt.Sprintf("; sha256: %d/%d identical (%s)", same, len(instances), how)
	}
	v.OK = len(v.Missing) == 0 && len(v.Mismatched) == 0
	return v, nil
}

// queryError turns a failed QIDO-RS or admin API call into a SendError.
func queryError(ctx context.Context, peer gateway.Peer, u string, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if se, ok := errors.AsType[*client.Error](err); ok {
		e := statusError(peer, se.StatusCode, se.Header, se.Body, 0)
		if se.StatusCode == http.StatusNotFound {
			e.Err = fmt.Errorf("not found at %s", redactURL(u))
		}
		return e
	}
	if _, ok := errors.AsType[*url.Error](err); ok {
		return &gateway.SendError{Peer: peer.Name, Temporary: true, Err: fmt.Errorf("querying %s: %w", redactURL(u), unwrapURLError(err))}
	}
	return &gateway.SendError{Peer: peer.Name, Temporary: true, Err: err}
}

// qidoPage is the page size asked for; a peer may answer with fewer.
const qidoPage = 1000

// AdminURL returns the peer's admin API root: AdminURL if configured, else
// URL with a trailing /dicomweb replaced by /api/v1.
func AdminURL(p gateway.Peer) (string, error) {
	if p.AdminURL != "" {
		return strings.TrimRight(p.AdminURL, "/"), nil
	}
	base := strings.TrimRight(p.URL, "/")
	if root, ok := strings.CutSuffix(base, "/dicomweb"); ok {
		return root + "/api/v1", nil
	}
	return "", fmt.Errorf("peer %s: cannot derive the admin API from url %s; set admin_url", p.Name, gateway.RedactURL(p.URL))
}

// studySHA256 is the answer of GET /api/v1/studies/{study}/sha256, which
// client.Client.StudySHA256 reads.
type studySHA256 struct {
	StudyUID  string            `json:"study_uid"`
	Source    string            `json:"source"`
	Instances map[string]string `json:"instances"`
}
