package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/dicom-gateway/gateway/client"
	"github.com/dicom-gateway/gateway/internal/cluster"
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
	// No request of the bench may hang: ten minutes is far beyond the
	// slowest STOW-RS batch.
	return &http.Client{Transport: tr, Timeout: 10 * time.Minute}
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

// stowClient is the project's client for a target's DICOMweb root,
// sending through c. Requests that meet a connection the server had just
// closed are retried once (RetryStaleConnection): synthetic instances are
// generated again for the retry.
func stowClient(c *http.Client, root string) *client.Client {
	return &client.Client{DICOMweb: root, HTTP: c, RetryStaleConnection: true}
}

// checkStored fails unless the STOW-RS answer is 200 with no
// FailedSOPSequence and every instance of the request referenced.
func checkStored(resp *client.StoreResponse, err error, n int) error {
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("STOW: HTTP %d: %.600s", resp.StatusCode, client.Snippet(resp.Body))
	}
	ans, err := resp.Answer()
	if err != nil {
		return fmt.Errorf("STOW response is not DICOM JSON: %v: %.200s", err, resp.Body)
	}
	if len(ans.Failed) > 0 {
		return fmt.Errorf("STOW: %d of %d instances failed: %.300s", len(ans.Failed), n, resp.Body)
	}
	if len(ans.Stored) != n {
		return fmt.Errorf("STOW: %d instances referenced in the answer, want %d", len(ans.Stored), n)
	}
	return nil
}

// stow sends instances in one STOW-RS request to root/studies and checks
// the answer (checkStored).
func stow(ctx context.Context, c *http.Client, root string, instances []synth.Instance) error {
	resp, err := stowClient(c, root).Store(ctx, "", cluster.Instances(instances), nil)
	return checkStored(resp, err, len(instances))
}

// stowAll sends instances in requests of batch instances each, conc at a
// time, and returns the wall time. The first error stops it.
func stowAll(ctx context.Context, c *http.Client, root string, instances []synth.Instance, batch, conc int) (time.Duration, error) {
	start := time.Now()
	err := stowClient(c, root).StoreAll(ctx, cluster.Instances(instances), batch, conc,
		func(part []client.Instance, resp *client.StoreResponse, err error) error {
			return checkStored(resp, err, len(part))
		})
	return time.Since(start), err
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
