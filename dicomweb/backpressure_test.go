package dicomweb_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/gateway"
)

// gatedBlobs is a blob store whose Put and Get wait at a gate while it is
// closed: storage slower than the clients.
type gatedBlobs struct {
	gateway.BlobStore
	closed atomic.Bool
	open   chan struct{}
	puts   atomic.Int32
	gets   atomic.Int32
}

func (g *gatedBlobs) wait(ctx context.Context) error {
	if !g.closed.Load() {
		return nil
	}
	select {
	case <-g.open:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (g *gatedBlobs) Put(ctx context.Context, key string, r io.Reader) (int64, error) {
	g.puts.Add(1)
	if err := g.wait(ctx); err != nil {
		return 0, err
	}
	return g.BlobStore.Put(ctx, key, r)
}

func (g *gatedBlobs) Get(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	g.gets.Add(1)
	if err := g.wait(ctx); err != nil {
		return nil, err
	}
	return g.BlobStore.Get(ctx, key, off, n)
}

// TestBackpressure: with at most 2 STOW-RS and 1 WADO-RS requests in
// flight, the next one is answered 503 with Retry-After at once, without
// its body being read (a client sending Expect: 100-continue sends none)
// and without touching storage; once a slot is free requests succeed again.
func TestBackpressure(t *testing.T) {
	var gated *gatedBlobs
	s := newStowServer(t, stowBackends[0], func(s *testWiring) {
		gated = &gatedBlobs{BlobStore: s.Blobs, open: make(chan struct{})}
		s.Blobs = gated
		s.Ingester.Blobs = gated
		s.MaxConcurrentStow = 2
		s.MaxConcurrentRetrieve = 1
	})
	const study, series = "1.2.826.0.1.3680043.10.1.7", "1.2.826.0.1.3680043.10.1.7.1"
	stored := makeInstance(study, series, testSOP(0), 8, 8, 1)
	if res := s.stow(t, "/dicomweb/studies", dicomPart(stored)); res.status != http.StatusOK {
		t.Fatalf("first STOW: %d %s", res.status, res.body)
	}

	gated.puts.Store(0)
	gated.gets.Store(0)
	gated.closed.Store(true)
	var openOnce sync.Once
	openGate := func() { openOnce.Do(func() { close(gated.open) }) }
	t.Cleanup(openGate) // also when the test fails: let the waiting requests end
	var wg sync.WaitGroup
	statuses := make(chan int, 3)
	for i := 1; i <= 2; i++ {
		wg.Go(func() {
			statuses <- s.stow(t, "/dicomweb/studies", dicomPart(makeInstance(study, series, testSOP(i), 8, 8, byte(i)))).status
		})
	}
	wg.Go(func() {
		resp, err := curlGet(nil, s.srv.URL+"/dicomweb/studies/"+study+"/series/"+series+"/instances/"+testSOP(0))
		if err != nil {
			t.Error(err)
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		statuses <- resp.StatusCode
	})
	deadline := time.Now().Add(10 * time.Second)
	for (gated.puts.Load() < 2 || gated.gets.Load() < 1) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if gated.puts.Load() != 2 || gated.gets.Load() != 1 {
		t.Fatalf("%d Puts and %d Gets waiting, want 2 and 1", gated.puts.Load(), gated.gets.Load())
	}

	// A third STOW-RS of 8 MiB with Expect: 100-continue: 503 at once, no body sent.
	big := makeInstance(study, series, testSOP(3), 2048, 2048, 3)
	body, boundary := multipartBody(t, dicomPart(big))
	counted := &countingReader{r: body}
	req, _ := http.NewRequest(http.MethodPost, s.srv.URL+"/dicomweb/studies", counted)
	req.ContentLength = int64(body.Len())
	req.Header.Set("Content-Type", `multipart/related; type="application/dicom"; boundary=`+boundary)
	req.Header.Set("Expect", "100-continue")
	client := &http.Client{Transport: &http.Transport{ExpectContinueTimeout: 5 * time.Second}, Timeout: 10 * time.Second}
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("third STOW: %d, Retry-After %q, want 503 with Retry-After: %s", resp.StatusCode, resp.Header.Get("Retry-After"), msg)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("503 took %v, want at once", d)
	}
	if n := counted.n.Load(); n > 0 {
		t.Errorf("client sent %d bytes of the refused body", n)
	}
	// Without Expect: the answer is the same; the body is not read (the
	// connection closes after the answer).
	body2, boundary2 := multipartBody(t, dicomPart(big))
	res := s.post(t, "/dicomweb/studies", `multipart/related; type="application/dicom"; boundary=`+boundary2, bytes.NewReader(body2.Bytes()))
	if res.status != http.StatusServiceUnavailable || !strings.Contains(string(res.body), "busy") {
		t.Errorf("fourth STOW: %d %s, want 503 busy", res.status, res.body)
	}
	// A second retrieve: 503.
	resp, err = curlGet(nil, s.srv.URL+"/dicomweb/studies/"+study+"/series/"+series+"/instances/"+testSOP(0))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("second retrieve: %d, want 503 with Retry-After", resp.StatusCode)
	}
	// Searches are not bounded.
	resp, err = http.Get(s.srv.URL + "/dicomweb/studies?StudyInstanceUID=" + study)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("QIDO while busy: %d, want 200", resp.StatusCode)
	}
	if p := gated.puts.Load(); p != 2 {
		t.Errorf("storage saw %d Puts, want 2: refused requests reached storage", p)
	}

	openGate()
	wg.Wait()
	close(statuses)
	for st := range statuses {
		if st != http.StatusOK {
			t.Errorf("request in flight ended %d, want 200", st)
		}
	}
	if res := s.stow(t, "/dicomweb/studies", dicomPart(big)); res.status != http.StatusOK {
		t.Errorf("STOW after the load: %d %s", res.status, res.body)
	}
}

type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}
