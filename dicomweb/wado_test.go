package dicomweb_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/dicomweb"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/backendtest"
	"github.com/dicom-gateway/gateway/internal/testcorpus"
)

// wadoGateway is a dicomweb.Server on real backends, served by httptest on
// loopback.
type wadoGateway struct {
	srv      *httptest.Server
	s        *dicomweb.Server
	ingester *gateway.Ingester
	blobs    gateway.BlobStore
	index    gateway.Index
	audit    auditQuerier
}

type auditQuerier interface {
	gateway.AuditLog
	Query(ctx context.Context, f gateway.AuditFilter) (*gateway.AuditPage, error)
}

// wadoBackends are the two backend families every WADO test runs on:
// embedded (files + bbolt) and production (MinIO + Redis, from make test).
var wadoBackends = []string{"embedded", "s3+redis"}

// newWADOGateway starts a gateway on the embedded backends; configure may
// adjust its wiring (wrap Blobs, set Auditor, CORS) before it is built.
func newWADOGateway(t testing.TB, configure func(s *testWiring)) *wadoGateway {
	return newWADOGatewayOn(t, "embedded", configure)
}

// newWADOGatewayOn starts a gateway on the named backend family.
func newWADOGatewayOn(t testing.TB, backend string, configure func(s *testWiring)) *wadoGateway {
	t.Helper()
	var (
		blobs gateway.BlobStore
		index gateway.Index
		audit auditQuerier
	)
	kind := backendtest.Embedded
	if backend == "s3+redis" {
		kind = backendtest.Production
	}
	b := backendtest.Open(t, kind, backendtest.Options{})
	blobs, index, audit = b.Blobs, b.Index, b.AuditLog
	w := testWiring{ServiceDeps: gateway.ServiceDeps{Name: "test", Blobs: blobs, Index: index, Auditor: audit, AuditLog: audit, Ingester: &gateway.Ingester{Blobs: blobs, Index: index}}}
	if configure != nil {
		configure(&w)
	}
	s := w.server()
	g := &wadoGateway{s: s, ingester: w.Ingester, blobs: w.Blobs, index: index, audit: audit}
	g.srv = httptest.NewServer(s.Handler())
	t.Cleanup(g.srv.Close)
	return g
}

// ingest stores one instance with the Ingester (what STOW-RS calls) and
// returns 200, or 409 when it refuses the instance.
func (g *wadoGateway) ingest(t testing.TB, data []byte) int {
	t.Helper()
	if _, err := g.ingester.Store(t.Context(), bytes.NewReader(data), gateway.StoreOptions{}); err != nil {
		return http.StatusConflict
	}
	return http.StatusOK
}

// get performs a GET with optional headers (name, value pairs). Without an
// Accept among them it sends "Accept: */*", as curl does: a retrieve with no
// Accept header at all is 406 (PS3.18 8.7.7), tested on its own.
func (g *wadoGateway) get(t testing.TB, path string, headers ...string) *http.Response {
	t.Helper()
	return g.do(t, http.MethodGet, path, headers...)
}

func (g *wadoGateway) do(t testing.TB, method, path string, headers ...string) *http.Response {
	t.Helper()
	url := path
	if !strings.HasPrefix(path, "http") {
		url = g.srv.URL + path
	}
	req, err := http.NewRequestWithContext(t.Context(), method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	if _, ok := req.Header["Accept"]; !ok && method == http.MethodGet {
		req.Header.Set("Accept", "*/*")
	}
	resp, err := http.DefaultTransport.RoundTrip(req) // no transparent gzip: tests see what was sent
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// readBody reads a response body, failing the test on a read error (a
// truncated stream).
func readBody(t testing.TB, resp *http.Response) []byte {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return b
}

// respPart is one part of a multipart/related response.
type respPart struct {
	contentType string
	location    string // Content-Location
	body        []byte
}

// readParts checks that resp is multipart/related with the given type
// parameter ("" = any) and returns its parts.
func readParts(t testing.TB, resp *http.Response, wantType string) []respPart {
	t.Helper()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, want 200: %s", resp.StatusCode, readBody(t, resp))
	}
	mt, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/related" {
		t.Fatalf("Content-Type %q: not multipart/related (%v)", resp.Header.Get("Content-Type"), err)
	}
	if got := params["type"]; wantType != "" && got != wantType {
		t.Errorf("multipart type=%q, want %q", got, wantType)
	}
	mr := multipart.NewReader(resp.Body, params["boundary"])
	var parts []respPart
	for {
		p, err := mr.NextRawPart()
		if err == io.EOF {
			return parts
		}
		if err != nil {
			t.Fatalf("part %d: %v", len(parts), err)
		}
		b, err := io.ReadAll(p)
		if err != nil {
			t.Fatalf("part %d: %v", len(parts), err)
		}
		parts = append(parts, respPart{contentType: p.Header.Get("Content-Type"), location: p.Header.Get("Content-Location"), body: b})
	}
}

// errorBody reads a JSON error body and fails if it has no message.
func errorBody(t testing.TB, resp *http.Response) string {
	t.Helper()
	var body struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal(readBody(t, resp), &body); err != nil || body.Error == "" {
		t.Errorf("status %d: error body without a message (%v)", resp.StatusCode, err)
	}
	return body.Error
}

// wadoCorpusInstance is a corpus file the gateway stored.
type wadoCorpusInstance struct {
	g      *wadoGateway
	name   string
	data   []byte
	header *dicomcodec.Header
	rec    *gateway.InstanceRecord
}

func (ci wadoCorpusInstance) path() string {
	return "/dicomweb/studies/" + ci.rec.StudyInstanceUID + "/series/" + ci.rec.SeriesInstanceUID + "/instances/" + ci.rec.SOPInstanceUID
}

// storeCorpusForWADO stores every corpus file the gateway accepts. Corpus
// files share SOP Instance UIDs (one image in several transfer syntaxes), so
// they are spread over as few gateways as possible, never two files with
// one UID on the same gateway; each instance comes with its gateway.
func storeCorpusForWADO(t *testing.T, backend string) []wadoCorpusInstance {
	t.Helper()
	var pending []string
	for _, f := range testcorpus.Files(t) {
		pending = append(pending, f.Path)
	}
	var out []wadoCorpusInstance
	for len(pending) > 0 {
		g := newWADOGatewayOn(t, backend, nil)
		used := map[string]bool{}
		var next []string
		for _, path := range pending {
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			h, err := dicomcodec.ParseHeader(bytes.NewReader(data), dicomcodec.HeaderLimits{})
			if err != nil || gateway.ValidateUID(h.SOPInstanceUID) != nil {
				continue // refused by any gateway: STOW tests cover why
			}
			if used[h.SOPInstanceUID] {
				next = append(next, path)
				continue
			}
			used[h.SOPInstanceUID] = true
			status := g.ingest(t, data)
			rec, err := g.index.GetInstance(t.Context(), h.SOPInstanceUID)
			if err != nil {
				if status == http.StatusOK {
					t.Errorf("%s: stored but not in the index: %v", filepath.Base(path), err)
				}
				continue
			}
			out = append(out, wadoCorpusInstance{g: g, name: filepath.Base(path), data: data, header: h, rec: rec})
		}
		pending = next
	}
	return out
}

// auditEvents returns the audit events recorded for study.
func (g *wadoGateway) auditEvents(t testing.TB, study, action string) []*gateway.AuditEvent {
	t.Helper()
	page, err := g.audit.Query(context.WithoutCancel(t.Context()), gateway.AuditFilter{StudyUID: study, Action: action, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	return page.Events
}

// midStreamFailingBlobs wraps a real BlobStore and makes every Get of
// failKey fail after 100 bytes (storage lost mid-stream). Retrieves open
// parts concurrently, so the fault is chosen by key, not by call order.
type midStreamFailingBlobs struct {
	gateway.BlobStore
	failKey        atomic.Value // string
	opened, closed atomic.Int64
}

func (f *midStreamFailingBlobs) Get(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	rc, err := f.BlobStore.Get(ctx, key, off, n)
	if err != nil {
		return nil, err
	}
	f.opened.Add(1)
	var r io.Reader = rc
	if k, _ := f.failKey.Load().(string); key == k {
		r = io.MultiReader(io.LimitReader(rc, 100), diskGoneReader{})
	}
	return struct {
		io.Reader
		io.Closer
	}{r, closeCounter{rc, &f.closed}}, nil
}

type closeCounter struct {
	io.Closer
	n *atomic.Int64
}

func (c closeCounter) Close() error {
	c.n.Add(1)
	return c.Closer.Close()
}

type diskGoneReader struct{}

func (diskGoneReader) Read([]byte) (int, error) {
	return 0, fmt.Errorf("disk gone: %w", gateway.ErrUnavailable)
}

// curlGet GETs url with "Accept: */*", as curl does (a retrieve with no
// Accept header is 406). c nil means http.DefaultClient.
func curlGet(c *http.Client, url string) (*http.Response, error) {
	if c == nil {
		c = http.DefaultClient
	}
	req, err := http.NewRequestWithContext(context.Background(), http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "*/*")
	return c.Do(req)
}
