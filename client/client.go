// Package client speaks to a gateway, or any DICOMweb server, over HTTP:
// STOW-RS (streamed, never a whole study in memory), QIDO-RS, and the
// gateway's admin API (transfers, peers, study checksums, audit). It is the
// one client of the project: the transfer sender (dicomweb.Client), the
// gateway store/transfer commands, the demo, the soak, the benchmarks and
// the cluster tests all use it. It imports only the standard library and
// the domain package gateway, so every layer can import it.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/dicom-gateway/gateway/gateway"
)

// Client is one server's DICOMweb and admin API. The zero value is not
// usable: set DICOMweb and/or Admin (New derives both from a gateway's base
// URL). Fields are read on every request; safe for concurrent use once set.
type Client struct {
	// DICOMweb is the DICOMweb root, e.g. http://127.0.0.1:8080/dicomweb.
	DICOMweb string
	// Admin is the admin API root, e.g. http://127.0.0.1:8080/api/v1.
	Admin string
	// HTTP sends the requests (default http.DefaultClient). Bound the
	// requests in flight, or tune connections, through its Transport.
	HTTP *http.Client
	// Token is sent as a bearer token; else Username and Password, when
	// Username is set, as HTTP basic authentication.
	Token              string
	Username, Password string
	// UserAgent, when set, is sent with every request.
	UserAgent string
	// RetryStaleConnection has Store send a request again, once, on a new
	// connection, when its connection failed before 1 MiB of the body was
	// sent: a kept-alive connection the server closed just as the request
	// went out (Orthanc closes connections idle for 500 ms, and Go retries
	// only requests it can replay itself). Set it only when every
	// Instance's WriteTo can run twice; STOW-RS of the same bytes is
	// idempotent.
	RetryStaleConnection bool
}

// New returns a Client for the gateway at base (scheme://host:port): its
// DICOMweb root is base/dicomweb and its admin API base/api/v1.
func New(base string) *Client {
	base = strings.TrimRight(base, "/")
	return &Client{DICOMweb: base + "/dicomweb", Admin: base + "/api/v1"}
}

// Limits on the answers read into memory: a STOW-RS or QIDO-RS answer is a
// few hundred bytes per instance, an admin answer a page of transfers.
const (
	maxAnswerBytes = 64 << 20
	maxErrorBytes  = 1 << 20
)

// Error is an answer with a status the call did not expect. Its text is the
// server's message (the admin API's {"error": …}) or the start of the body,
// quoted «…» as the server's words (gateway.QuotePeer), which the gateway's
// log withholds when the server is a peer.
type Error struct {
	Method, URL string
	StatusCode  int
	// Header is the answer's header (Retry-After for a 503 or 429).
	Header http.Header
	// Body is the start of the answer (at most 1 MiB).
	Body []byte
	// Message is the admin API's "error" field, when the body has one.
	Message string
}

func (e *Error) Error() string {
	if e.Message != "" {
		return fmt.Sprintf("%s (HTTP %d)", gateway.QuotePeer(e.Message), e.StatusCode)
	}
	return fmt.Sprintf("HTTP %d: %s", e.StatusCode, Snippet(e.Body))
}

// Snippet is the start of an answer body (300 characters), trimmed, for an
// error message, marked as the peer's words (gateway.QuotePeer): it may
// hold patient data, which the application log withholds. An empty body is
// "no details given", this client's words, unquoted.
func Snippet(body []byte) string {
	s := strings.TrimSpace(string(body))
	if s == "" {
		return "no details given"
	}
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return gateway.QuotePeer(strings.ToValidUTF8(s, "?"))
}

func (c *Client) httpClient() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return http.DefaultClient
}

// newRequest builds a request with the client's credentials and agent.
func (c *Client) newRequest(ctx context.Context, method, u string, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	switch {
	case c.Token != "":
		req.Header.Set("Authorization", "Bearer "+c.Token)
	case c.Username != "":
		req.SetBasicAuth(c.Username, c.Password)
	}
	if c.UserAgent != "" {
		req.Header.Set("User-Agent", c.UserAgent)
	}
	return req, nil
}

// statusError reads what is left of a failed answer into an *Error.
func statusError(resp *http.Response) *Error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBytes))
	e := &Error{Method: resp.Request.Method, URL: resp.Request.URL.String(), StatusCode: resp.StatusCode, Header: resp.Header, Body: body}
	var msg struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(body, &msg) == nil {
		e.Message = msg.Error
	}
	return e
}

// get sends a GET and returns the body of a 2xx answer (nil for 204, and
// for 404 when notFoundEmpty). Any other status is an *Error.
func (c *Client) get(ctx context.Context, u, accept string, notFoundEmpty bool) ([]byte, error) {
	req, err := c.newRequest(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", accept)
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNoContent, resp.StatusCode == http.StatusNotFound && notFoundEmpty:
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBytes))
		return nil, nil
	case resp.StatusCode/100 != 2:
		return nil, statusError(resp)
	}
	return io.ReadAll(io.LimitReader(resp.Body, maxAnswerBytes))
}

// adminJSON sends an admin API request with in (when not nil) as its JSON
// body and decodes a 2xx answer into out (when not nil).
func (c *Client) adminJSON(ctx context.Context, method, path string, in, out any) error {
	if c.Admin == "" {
		return fmt.Errorf("client: no admin API URL for %s %s", method, path)
	}
	var body io.Reader
	if in != nil {
		data, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(data)
	}
	req, err := c.newRequest(ctx, method, strings.TrimRight(c.Admin, "/")+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return statusError(resp)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBytes))
	if err != nil {
		return err
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(data, out)
}

// GetJSON GETs u, an absolute URL (a server's own REST API, such as
// Orthanc's), with the client's credentials and decodes a 2xx answer into
// out.
func (c *Client) GetJSON(ctx context.Context, u string, out any) error {
	body, err := c.get(ctx, u, "application/json", false)
	if err != nil {
		return err
	}
	return json.Unmarshal(body, out)
}

// CreateTransfer asks the gateway to send a study to a peer
// (POST /transfers).
func (c *Client) CreateTransfer(ctx context.Context, req gateway.CreateTransfer) (*gateway.Transfer, error) {
	var t gateway.Transfer
	if err := c.adminJSON(ctx, http.MethodPost, "/transfers", req, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// Transfer reads one transfer, with its per-instance progress.
func (c *Client) Transfer(ctx context.Context, id string) (*gateway.Transfer, error) {
	var t gateway.Transfer
	if err := c.adminJSON(ctx, http.MethodGet, "/transfers/"+url.PathEscape(id), nil, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// TransferQuery selects transfers; empty fields do not filter.
type TransferQuery struct {
	State       string
	StudyUID    string
	Destination string
	// Incoming lists the transfers received from peers instead of sent.
	Incoming bool
	// Limit bounds the answer (0: the server's default).
	Limit int
}

// ListTransfers lists transfers, newest first.
func (c *Client) ListTransfers(ctx context.Context, q TransferQuery) ([]*gateway.Transfer, error) {
	v := url.Values{}
	for k, s := range map[string]string{"state": q.State, "study_uid": q.StudyUID, "destination": q.Destination} {
		if s != "" {
			v.Set(k, s)
		}
	}
	if q.Incoming {
		v.Set("direction", gateway.DirectionIncoming)
	}
	if q.Limit > 0 {
		v.Set("limit", fmt.Sprint(q.Limit))
	}
	var ans struct {
		Transfers []*gateway.Transfer `json:"transfers"`
	}
	if err := c.adminJSON(ctx, http.MethodGet, "/transfers?"+v.Encode(), nil, &ans); err != nil {
		return nil, err
	}
	return ans.Transfers, nil
}

// CancelTransfer stops a transfer (role admin).
func (c *Client) CancelTransfer(ctx context.Context, id string) (*gateway.Transfer, error) {
	return c.transferAction(ctx, id, "cancel")
}

// RetryTransfer queues a failed or cancelled transfer again (role admin).
func (c *Client) RetryTransfer(ctx context.Context, id string) (*gateway.Transfer, error) {
	return c.transferAction(ctx, id, "retry")
}

func (c *Client) transferAction(ctx context.Context, id, action string) (*gateway.Transfer, error) {
	var t gateway.Transfer
	if err := c.adminJSON(ctx, http.MethodPost, "/transfers/"+url.PathEscape(id)+"/"+action, nil, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// WaitTransfer polls the transfer every interval until it is in a final
// state, done (may be nil) returns true for the state seen, or ctx ends (the
// error then wraps ctx's and the last state seen is returned with it).
func (c *Client) WaitTransfer(ctx context.Context, id string, interval time.Duration, done func(*gateway.Transfer) bool) (*gateway.Transfer, error) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var last *gateway.Transfer
	for {
		t, err := c.Transfer(ctx, id)
		if err == nil {
			last = t
			if t.State.Terminal() || (done != nil && done(t)) {
				return t, nil
			}
		}
		select {
		case <-ctx.Done():
			return last, fmt.Errorf("transfer %s not finished: %w (last error %v)", id, ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// Peer is a peer as the admin API shows it: its configuration, secrets
// left out and URLs redacted, and how this gateway authenticates to it
// (bearer, basic, mtls, none).
type Peer struct {
	gateway.Peer
	Auth string `json:"auth"`
}

// Peers lists the gateway's configured peers.
func (c *Client) Peers(ctx context.Context) ([]Peer, error) {
	var ans struct {
		Peers []Peer `json:"peers"`
	}
	if err := c.adminJSON(ctx, http.MethodGet, "/peers", nil, &ans); err != nil {
		return nil, err
	}
	return ans.Peers, nil
}

// StudySHA256 returns the SHA-256 of every instance of a study the gateway
// holds, by SOP Instance UID; recompute has the gateway read the bytes from
// its storage instead of its index. A study the gateway does not hold is an
// empty map.
func (c *Client) StudySHA256(ctx context.Context, studyUID string, recompute bool) (map[string]string, error) {
	if c.Admin == "" {
		return nil, fmt.Errorf("client: no admin API URL for the SHA-256 of study %s", studyUID)
	}
	u := strings.TrimRight(c.Admin, "/") + "/studies/" + url.PathEscape(studyUID) + "/sha256"
	if recompute {
		u += "?recompute=true"
	}
	body, err := c.get(ctx, u, "application/json", true)
	if err != nil {
		return nil, err
	}
	var ans struct {
		Instances map[string]string `json:"instances"`
	}
	if len(body) > 0 {
		if err := json.Unmarshal(body, &ans); err != nil {
			return nil, fmt.Errorf("unreadable SHA-256 answer: %w", err)
		}
	}
	if ans.Instances == nil {
		ans.Instances = map[string]string{}
	}
	return ans.Instances, nil
}

// AuditVerify has the gateway check its whole audit hash chain.
func (c *Client) AuditVerify(ctx context.Context) (*gateway.VerifyResult, error) {
	var res gateway.VerifyResult
	if err := c.adminJSON(ctx, http.MethodGet, "/audit/verify", nil, &res); err != nil {
		return nil, err
	}
	return &res, nil
}
