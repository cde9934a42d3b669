package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dicom-gateway/gateway/internal/synth"
)

// newClient is the one HTTP client of the bench. Compression is off so
// that every target sends identity bodies (Go would otherwise ask for gzip
// and decompress transparently, and the targets differ in what they
// compress).
func newClient(conns int) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DisableCompression = true
	tr.MaxIdleConns = conns * 4
	tr.MaxIdleConnsPerHost = conns * 2
	// Orthanc (CivetWeb) closes a connection idle for 500 ms; a POST sent on
	// one just as it closes fails, and Go retries only replayable requests.
	// Dropping idle connections first keeps the bench out of that race.
	tr.IdleConnTimeout = 250 * time.Millisecond
	return &http.Client{Transport: tr}
}

// httpError is a non-2xx answer, kept verbatim for the report.
type httpError struct {
	method, url string
	status      string
	body        string
}

func (e *httpError) Error() string {
	return fmt.Sprintf("%s %s: %s: %s", e.method, e.url, e.status, e.body)
}

func readErr(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 600))
	return &httpError{resp.Request.Method, resp.Request.URL.Path, resp.Status, strings.TrimSpace(string(b))}
}

// stowBody streams instances as one multipart/related request body, with
// the exact Content-Length computed up front (some servers refuse chunked
// uploads). Pixel data is generated while it is sent, never held whole.
type stowBody struct {
	boundary  string
	length    int64
	bytes     int64 // DICOM bytes only, without multipart framing
	instances []synth.Instance
}

func newStowBody(instances []synth.Instance) *stowBody {
	var b [12]byte
	_, _ = rand.Read(b[:])
	s := &stowBody{boundary: "bench-" + hex.EncodeToString(b[:]), instances: instances}
	for _, in := range instances {
		n := in.Size()
		s.bytes += n
		s.length += int64(len(s.partHeader())) + n + 2
	}
	s.length += int64(len(s.trailer()))
	return s
}

func (s *stowBody) partHeader() string {
	return "--" + s.boundary + "\r\nContent-Type: application/dicom\r\n\r\n"
}
func (s *stowBody) trailer() string { return "--" + s.boundary + "--\r\n" }

func (s *stowBody) contentType() string {
	return `multipart/related; type="application/dicom"; boundary=` + s.boundary
}

func (s *stowBody) writeTo(w io.Writer) error {
	for _, in := range s.instances {
		if _, err := io.WriteString(w, s.partHeader()); err != nil {
			return err
		}
		if _, err := in.WriteTo(w); err != nil {
			return err
		}
		if _, err := io.WriteString(w, "\r\n"); err != nil {
			return err
		}
	}
	_, err := io.WriteString(w, s.trailer())
	return err
}

// stow sends instances in one STOW-RS request to root/studies and checks
// that the answer is 200 with no FailedSOPSequence. A connection that fails
// before 1 MiB of the body is sent (a kept-alive connection the server had
// just closed) is retried once; STOW of the same bytes is idempotent.
func stow(ctx context.Context, c *http.Client, root string, instances []synth.Instance) error {
	sent, err := stowOnce(ctx, c, root, instances)
	var he *httpError
	if err != nil && !errors.As(err, &he) && sent < 1<<20 && ctx.Err() == nil {
		if tr, ok := c.Transport.(*http.Transport); ok {
			tr.CloseIdleConnections()
		}
		_, err = stowOnce(ctx, c, root, instances)
	}
	return err
}

type countingWriter struct {
	w io.Writer
	n atomic.Int64
}

func (cw *countingWriter) Write(p []byte) (int, error) {
	n, err := cw.w.Write(p)
	cw.n.Add(int64(n))
	return n, err
}

func stowOnce(ctx context.Context, c *http.Client, root string, instances []synth.Instance) (sent int64, err error) {
	body := newStowBody(instances)
	pr, pw := io.Pipe()
	cw := &countingWriter{w: pw}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		pw.CloseWithError(body.writeTo(cw))
	}()
	defer func() { sent = cw.n.Load() }() // runs after wg.Wait: the writer is done
	defer wg.Wait()
	defer pr.Close() // unblocks the writer if the request ends early

	req, err := http.NewRequestWithContext(ctx, http.MethodPost, root+"/studies", pr)
	if err != nil {
		return 0, err
	}
	req.ContentLength = body.length
	req.Header.Set("Content-Type", body.contentType())
	req.Header.Set("Accept", "application/dicom+json")
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, readErr(resp)
	}
	var out map[string]struct {
		Value []json.RawMessage `json:"Value"`
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return 0, err
	}
	if err := json.Unmarshal(data, &out); err != nil {
		return 0, fmt.Errorf("STOW response is not DICOM JSON: %v: %.200s", err, data)
	}
	if f := out["00081198"]; len(f.Value) > 0 {
		return 0, fmt.Errorf("STOW: %d of %d instances failed: %.300s", len(f.Value), len(instances), data)
	}
	if got := len(out["00081199"].Value); got != len(instances) {
		return 0, fmt.Errorf("STOW: %d instances referenced in the answer, want %d", got, len(instances))
	}
	return 0, nil
}

// stowAll sends instances in requests of batch instances each, conc at a
// time, and returns the wall time. The first error stops it.
func stowAll(parent context.Context, c *http.Client, root string, instances []synth.Instance, batch, conc int) (time.Duration, error) {
	batch, conc = max(batch, 1), max(conc, 1)
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	var (
		next     atomic.Int64
		firstErr error
		once     sync.Once
		wg       sync.WaitGroup
	)
	nBatches := (len(instances) + batch - 1) / batch
	start := time.Now()
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= nBatches || ctx.Err() != nil {
					return
				}
				part := instances[i*batch : min((i+1)*batch, len(instances))]
				rctx, rcancel := context.WithTimeout(ctx, 10*time.Minute)
				err := stow(rctx, c, root, part)
				rcancel()
				if err != nil {
					once.Do(func() { firstErr = err; cancel() })
					return
				}
			}
		}()
	}
	wg.Wait()
	if firstErr == nil {
		firstErr = parent.Err() // interrupted: workers stopped without an error of their own
	}
	return time.Since(start), firstErr
}

// get fetches url with accept, reads the whole body and returns its length
// and the time to the last byte. A 204 counts as an empty answer.
func get(ctx context.Context, c *http.Client, url, accept string, keep bool, header ...string) (n int64, body []byte, d time.Duration, err error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, 0, err
	}
	req.Header.Set("Accept", accept)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNoContent {
		return 0, nil, 0, readErr(resp)
	}
	if keep {
		body, err = io.ReadAll(resp.Body)
		n = int64(len(body))
	} else {
		n, err = io.Copy(io.Discard, resp.Body)
	}
	return n, body, time.Since(start), err
}

// jsonArrayLen counts the elements of a JSON array (an empty body is 0).
func jsonArrayLen(b []byte) (int, error) {
	if len(strings.TrimSpace(string(b))) == 0 {
		return 0, nil
	}
	var a []json.RawMessage
	if err := json.Unmarshal(b, &a); err != nil {
		return 0, fmt.Errorf("not a JSON array: %v: %.200s", err, b)
	}
	return len(a), nil
}

// percentile returns the p-th percentile (0..100) of ds, nearest rank.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(p/100*float64(len(s))+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}

var errSkipped = errors.New("skipped")
