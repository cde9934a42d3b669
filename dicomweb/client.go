package dicomweb

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dicom-gateway/gateway/gateway"
)

// Headers that tie a STOW-RS request to the sender's transfer, so that the
// receiving gateway records an incoming transfer under the same ID.
const (
	HeaderTransferID        = "X-Transfer-ID"
	HeaderSourceCentre      = "X-Source-Centre"
	HeaderTransferInstances = "X-Transfer-Instances"
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
	pc := &peerClient{http: &http.Client{Transport: tr}, sem: make(chan struct{}, parallel)}
	if c.peers == nil {
		c.peers = map[string]*peerClient{}
	}
	c.peers[p.Name] = pc
	return pc, nil
}

func (c *Client) authorize(req *http.Request, p gateway.Peer) {
	switch {
	case p.Token != "":
		req.Header.Set("Authorization", "Bearer "+p.Token.Reveal())
	case p.Username != "":
		req.SetBasicAuth(p.Username, p.Password.Reveal())
	}
	ua := c.UserAgent
	if ua == "" {
		ua = "dicom-gateway"
	}
	req.Header.Set("User-Agent", ua)
}

// do sends req within p's request bound.
func (pc *peerClient) do(req *http.Request) (*http.Response, error) {
	select {
	case pc.sem <- struct{}{}:
	case <-req.Context().Done():
		return nil, req.Context().Err()
	}
	defer func() { <-pc.sem }()
	return pc.http.Do(req)
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

func (e *localError) Error() string { return e.err.Error() }
func (e *localError) Unwrap() error { return e.err }

func partHeader() textproto.MIMEHeader {
	h := textproto.MIMEHeader{}
	h.Set("Content-Type", "application/dicom")
	return h
}

// multipartLength is the exact length of the body writeParts produces, so
// the request carries a Content-Length (some STOW-RS servers refuse chunked
// bodies).
func multipartLength(boundary string, batch []*gateway.InstanceRecord) (int64, error) {
	var framing bytes.Buffer
	mw := multipart.NewWriter(&framing)
	if err := mw.SetBoundary(boundary); err != nil {
		return 0, err
	}
	var n int64
	for _, rec := range batch {
		if _, err := mw.CreatePart(partHeader()); err != nil {
			return 0, err
		}
		n += rec.Size
	}
	if err := mw.Close(); err != nil {
		return 0, err
	}
	return n + int64(framing.Len()), nil
}

// writeParts streams each instance of batch from blob storage into mw,
// checking its size and SHA-256 against the index as it goes. The next
// instances' blobs are opened while one is copied (openAhead), so an object
// store's per-request latency overlaps the network instead of adding up.
func (c *Client) writeParts(ctx context.Context, mw *multipart.Writer, batch []*gateway.InstanceRecord) error {
	parts := make([]part, len(batch))
	for i, rec := range batch {
		parts[i].open = func(ctx context.Context) (io.ReadCloser, error) { return c.Blobs.Get(ctx, rec.Key(), 0, -1) }
	}
	ahead := openAhead(ctx, parts, gateway.OverNetwork(c.Blobs))
	defer ahead.close()
	buf := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(buf)
	for i, rec := range batch {
		w, err := mw.CreatePart(partHeader())
		if err != nil {
			return err
		}
		rc, err := ahead.open(i)
		if err != nil {
			return &localError{fmt.Errorf("reading instance %s from local storage: %w", rec.SOPInstanceUID, err)}
		}
		sum := sha256.New()
		n, err := io.CopyBuffer(w, io.TeeReader(rc, sum), *buf)
		cerr := rc.Close()
		if err != nil {
			return err
		}
		if cerr != nil {
			return &localError{fmt.Errorf("reading instance %s from local storage: %w", rec.SOPInstanceUID, cerr)}
		}
		if n != rec.Size || (rec.SHA256 != "" && hex.EncodeToString(sum.Sum(nil)) != rec.SHA256) {
			return &localError{fmt.Errorf("local copy of instance %s is corrupt: its size or SHA-256 differs from the index; not sent", rec.SOPInstanceUID)}
		}
	}
	return mw.Close()
}

// stow sends one batch and returns the peer's answer per instance.
func (c *Client) stow(ctx context.Context, pc *peerClient, peer gateway.Peer, h gateway.SendHeader, batch []*gateway.InstanceRecord) ([]gateway.SendResult, error) {
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	length, err := multipartLength(mw.Boundary(), batch)
	if err != nil {
		return nil, &gateway.SendError{Peer: peer.Name, Err: err}
	}
	u := strings.TrimRight(peer.URL, "/") + "/studies/" + url.PathEscape(batch[0].StudyInstanceUID)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, pr)
	if err != nil {
		return nil, &gateway.SendError{Peer: peer.Name, Err: err}
	}
	req.ContentLength = length
	req.Header.Set("Content-Type", `multipart/related; type="application/dicom"; boundary=`+mw.Boundary())
	req.Header.Set("Accept", "application/dicom+json")
	req.Header.Set(HeaderTransferID, h.TransferID)
	req.Header.Set(HeaderSourceCentre, h.Source)
	if h.Total > 0 {
		req.Header.Set(HeaderTransferInstances, strconv.Itoa(h.Total))
	}
	c.authorize(req, peer)

	var writeErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		writeErr = c.writeParts(ctx, mw, batch)
		pw.CloseWithError(writeErr)
	}()
	resp, err := pc.do(req)
	pr.CloseWithError(errors.New("request finished")) // unblocks the writer if the request ended early
	<-done
	if le, ok := errors.AsType[*localError](writeErr); ok {
		if resp != nil {
			resp.Body.Close()
		}
		temporary := errors.Is(le, gateway.ErrUnavailable)
		return nil, &gateway.SendError{Peer: peer.Name, Temporary: temporary, Err: le}
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
		return nil, &gateway.SendError{Peer: peer.Name, Temporary: true, Err: fmt.Errorf("sending to %s: %w", redactURL(u), unwrapURLError(err))}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return nil, &gateway.SendError{Peer: peer.Name, Status: resp.StatusCode, Temporary: true, Err: fmt.Errorf("reading the STOW-RS answer: %w", err)}
	}
	switch resp.StatusCode {
	case http.StatusOK, http.StatusAccepted, http.StatusConflict:
		res, perr := parseStowResponse(body, batch, resp.StatusCode == http.StatusOK)
		if perr != nil {
			if resp.StatusCode == http.StatusConflict {
				return nil, &gateway.SendError{Peer: peer.Name, Status: resp.StatusCode, Err: fmt.Errorf("the request was refused: %s", snippet(body))}
			}
			return nil, &gateway.SendError{Peer: peer.Name, Status: resp.StatusCode, Temporary: true, Err: fmt.Errorf("unreadable STOW-RS answer: %w", perr)}
		}
		return res, nil
	}
	return nil, statusError(peer, resp, body, length)
}

// statusError turns a failed answer into a SendError an admin can act on.
func statusError(peer gateway.Peer, resp *http.Response, body []byte, length int64) *gateway.SendError {
	e := &gateway.SendError{Peer: peer.Name, Status: resp.StatusCode}
	code := resp.StatusCode
	switch {
	case code == http.StatusTooManyRequests || code == http.StatusRequestTimeout || code >= 500:
		e.Temporary = true
		e.RetryAfter = retryAfter(resp.Header.Get("Retry-After"), time.Now())
		e.Err = fmt.Errorf("the peer is busy or unavailable: %s", snippet(body))
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		e.Err = fmt.Errorf("the peer refused this gateway's credentials; check the token or username/password configured for peer %s and its roles there", peer.Name)
	case code == http.StatusNotFound:
		e.Err = fmt.Errorf("no STOW-RS service at this address; check the url configured for peer %s", peer.Name)
	case code == http.StatusRequestEntityTooLarge:
		e.Err = fmt.Errorf("a request of %d bytes is too large for the peer; lower max_request_bytes for peer %s", length, peer.Name)
	default:
		e.Err = fmt.Errorf("the request was refused: %s", snippet(body))
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

func snippet(body []byte) string {
	s := strings.TrimSpace(string(body))
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	if s == "" {
		return "no details given"
	}
	return strings.ToValidUTF8(s, "?")
}

func unwrapURLError(err error) error {
	if ue, ok := errors.AsType[*url.Error](err); ok {
		return ue.Err
	}
	return err
}

func redactURL(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "the peer"
	}
	p.User = nil
	return p.Scheme + "://" + p.Host
}

// jsonAttr is one attribute of a DICOM JSON object, values left raw.
type jsonAttr struct {
	VR    string            `json:"vr"`
	Value []json.RawMessage `json:"Value"`
}

type jsonObject map[string]jsonAttr

func (o jsonObject) str(tag string) string {
	a, ok := o[tag]
	if !ok || len(a.Value) == 0 {
		return ""
	}
	var s string
	_ = json.Unmarshal(a.Value[0], &s)
	return s
}

func (o jsonObject) items(tag string) []jsonObject {
	var out []jsonObject
	for _, raw := range o[tag].Value {
		var item jsonObject
		if json.Unmarshal(raw, &item) == nil {
			out = append(out, item)
		}
	}
	return out
}

// failureReasons names the STOW-RS FailureReason codes in words.
var failureReasons = map[uint16]string{
	gateway.ReasonProcessingFailure:         "processing failure",
	gateway.ReasonDuplicateRejected:         "a different instance with this SOP Instance UID is already stored",
	gateway.ReasonNoSuchSOPClass:            "SOP class not supported",
	gateway.ReasonOutOfResources:            "out of resources",
	gateway.ReasonDataSetSOPClassMismatch:   "data set does not match its SOP class",
	gateway.ReasonCannotUnderstand:          "cannot understand the data set",
	gateway.ReasonStudyUIDMismatch:          "Study Instance UID does not match the request",
	gateway.ReasonTransferSyntaxUnsupported: "transfer syntax not supported",
}

// ReasonText is the admin-readable form of a FailureReason code.
func ReasonText(code uint16) string {
	if s, ok := failureReasons[code]; ok {
		return fmt.Sprintf("%s (0x%04X)", s, code)
	}
	return fmt.Sprintf("refused with FailureReason 0x%04X", code)
}

// parseStowResponse reads the peer's STOW-RS answer: ReferencedSOPSequence
// items are stored, FailedSOPSequence items refused with a FailureReason.
// An instance of the batch the answer does not mention is reported as a
// retryable failure, except after a 200 with no sequences at all, which
// PS3.18 defines as "all stored".
func parseStowResponse(body []byte, batch []*gateway.InstanceRecord, allOK bool) ([]gateway.SendResult, error) {
	var obj jsonObject
	trimmed := bytes.TrimSpace(body)
	switch {
	case len(trimmed) == 0:
	case trimmed[0] == '[':
		var arr []jsonObject
		if err := json.Unmarshal(trimmed, &arr); err != nil {
			return nil, err
		}
		if len(arr) > 0 {
			obj = arr[0]
		}
	default:
		if err := json.Unmarshal(trimmed, &obj); err != nil {
			return nil, err
		}
	}
	byUID := map[string]gateway.SendResult{}
	for _, it := range obj.items("00081199") {
		uid := it.str("00081155")
		byUID[uid] = gateway.SendResult{SOPInstanceUID: uid, OK: true}
	}
	for _, it := range obj.items("00081198") {
		uid := it.str("00081155")
		var code uint16
		if a := it["00081197"]; len(a.Value) > 0 {
			var n float64
			if json.Unmarshal(a.Value[0], &n) == nil {
				code = uint16(n)
			}
		}
		byUID[uid] = gateway.SendResult{SOPInstanceUID: uid, Reason: ReasonText(code), ReasonCode: code, Retryable: code&0xFF00 == 0xA700}
	}
	none := len(byUID) == 0
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
// instance, recomputed there from its storage, is compared with ours.
func (c *Client) Verify(ctx context.Context, peer gateway.Peer, studyUID string, instances []*gateway.InstanceRecord) (*gateway.Verification, error) {
	pc, err := c.peerClientFor(peer)
	if err != nil {
		return nil, &gateway.SendError{Peer: peer.Name, Err: err}
	}
	listed, err := c.qidoInstances(ctx, pc, peer, studyUID)
	if err != nil {
		return nil, err
	}
	v := &gateway.Verification{}
	for _, rec := range instances {
		if !listed[rec.SOPInstanceUID] {
			v.Missing = append(v.Missing, rec.SOPInstanceUID)
		}
	}
	v.Checked = fmt.Sprintf("qido: %d/%d instances listed", len(instances)-len(v.Missing), len(instances))
	if peer.Gateway {
		sums, err := c.remoteSHA256(ctx, pc, peer, studyUID)
		if err != nil {
			return nil, err
		}
		same := 0
		for _, rec := range instances {
			got, ok := sums[rec.SOPInstanceUID]
			switch {
			case !ok:
			case got == rec.SHA256:
				same++
			default:
				v.Mismatched = append(v.Mismatched, rec.SOPInstanceUID)
			}
		}
		v.Checked += fmt.Sprintf("; sha256: %d/%d identical", same, len(instances))
	}
	v.OK = len(v.Missing) == 0 && len(v.Mismatched) == 0
	return v, nil
}

// get performs a GET within the peer's request bound and returns the body
// of a 2xx answer (nil for 204 and, when notFoundEmpty, 404).
func (c *Client) get(ctx context.Context, pc *peerClient, peer gateway.Peer, u, accept string, notFoundEmpty bool) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, &gateway.SendError{Peer: peer.Name, Err: err}
	}
	req.Header.Set("Accept", accept)
	c.authorize(req, peer)
	resp, err := pc.do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, &gateway.SendError{Peer: peer.Name, Temporary: true, Err: fmt.Errorf("querying %s: %w", redactURL(u), unwrapURLError(err))}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, &gateway.SendError{Peer: peer.Name, Status: resp.StatusCode, Temporary: true, Err: err}
	}
	switch {
	case resp.StatusCode == http.StatusNoContent, resp.StatusCode == http.StatusNotFound && notFoundEmpty:
		return nil, nil
	case resp.StatusCode/100 == 2:
		return body, nil
	}
	e := statusError(peer, resp, body, 0)
	if resp.StatusCode == http.StatusNotFound {
		e.Err = fmt.Errorf("not found at %s", redactURL(u))
	}
	return nil, e
}

// qidoPage is the page size asked for; a peer may answer with fewer.
const qidoPage = 1000

func (c *Client) qidoInstances(ctx context.Context, pc *peerClient, peer gateway.Peer, studyUID string) (map[string]bool, error) {
	listed := map[string]bool{}
	base := strings.TrimRight(peer.URL, "/") + "/studies/" + url.PathEscape(studyUID) + "/instances"
	for offset := 0; ; {
		u := fmt.Sprintf("%s?limit=%d&offset=%d&includefield=00080018", base, qidoPage, offset)
		body, err := c.get(ctx, pc, peer, u, "application/dicom+json", true)
		if err != nil {
			return nil, err
		}
		if len(bytes.TrimSpace(body)) == 0 {
			return listed, nil
		}
		var page []jsonObject
		if err := json.Unmarshal(body, &page); err != nil {
			return nil, &gateway.SendError{Peer: peer.Name, Temporary: true, Err: fmt.Errorf("unreadable QIDO-RS answer: %w", err)}
		}
		fresh := 0
		for _, o := range page {
			if uid := o.str("00080018"); uid != "" && !listed[uid] {
				listed[uid] = true
				fresh++
			}
		}
		if len(page) == 0 || fresh == 0 {
			return listed, nil
		}
		offset += len(page)
	}
}

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

// studySHA256 is the answer of GET /api/v1/studies/{study}/sha256.
type studySHA256 struct {
	StudyUID  string            `json:"study_uid"`
	Source    string            `json:"source"`
	Instances map[string]string `json:"instances"`
}

func (c *Client) remoteSHA256(ctx context.Context, pc *peerClient, peer gateway.Peer, studyUID string) (map[string]string, error) {
	admin, err := AdminURL(peer)
	if err != nil {
		return nil, &gateway.SendError{Peer: peer.Name, Err: err}
	}
	body, err := c.get(ctx, pc, peer, admin+"/studies/"+url.PathEscape(studyUID)+"/sha256?recompute=true", "application/json", true)
	if err != nil {
		return nil, err
	}
	var ans studySHA256
	if len(body) > 0 {
		if err := json.Unmarshal(body, &ans); err != nil {
			return nil, &gateway.SendError{Peer: peer.Name, Temporary: true, Err: fmt.Errorf("unreadable SHA-256 answer: %w", err)}
		}
	}
	return ans.Instances, nil
}
