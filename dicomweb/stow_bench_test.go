package dicomweb_test

import (
	"bytes"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/backendtest"
)

// BenchmarkStowManyParts measures one STOW-RS request of 256 instances on
// the embedded backends: the case where each part's sync and index write
// overlap the reading of the next parts (16 in flight).
func BenchmarkStowManyParts(b *testing.B) {
	const parts = 256
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	for i := range parts {
		w, err := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"application/dicom"}})
		if err != nil {
			b.Fatal(err)
		}
		w.Write(makeInstance(testStudy, testSeries, testSOP(i), 64, 64, byte(i)))
	}
	mw.Close()
	ct := `multipart/related; type="application/dicom"; boundary=` + mw.Boundary()
	for b.Loop() {
		b.StopTimer()
		be := backendtest.Open(b, backendtest.Embedded, backendtest.Options{})
		w := testWiring{ServiceDeps: gateway.ServiceDeps{Name: "bench", Blobs: be.Blobs, Index: be.Index, Auditor: be.AuditLog,
			Ingester: &gateway.Ingester{Blobs: be.Blobs, Index: be.Index, Auditor: be.AuditLog}}}
		srv := httptest.NewServer(w.server().Handler())
		b.StartTimer()
		resp, err := http.Post(srv.URL+"/dicomweb/studies", ct, bytes.NewReader(body.Bytes()))
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		b.StopTimer()
		if resp.StatusCode != http.StatusOK {
			b.Fatal(fmt.Errorf("STOW status %d", resp.StatusCode))
		}
		srv.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(parts*b.N)/b.Elapsed().Seconds(), "instances/s")
}

// BenchmarkStowRequests measures STOW-RS from 4 concurrent clients on the
// embedded backends, with one instance per request (the way most PACS
// send: each request pays its own durability barrier, shared only with the
// requests that coincide with it) and with 20, for small (about 50 KB) and
// CT-slice (512×512×16, 525 KB) instances. Every request stores new
// instances (a duplicate would take the idempotent path), so the bodies
// are made before the timer: b.N requests.
func BenchmarkStowRequests(b *testing.B) {
	stowRequestSizes(b, backendtest.Embedded)
	// One instance of a new study per request: every request creates its
	// study's directories (and syncs their parents).
	b.Run("small/new-study-per-request", func(b *testing.B) { benchStowRequests(b, backendtest.Embedded, 160, 160, 1, true) })
}

// BenchmarkStowProductionRequests is BenchmarkStowRequests on the
// production backends, Redis and MinIO started by scripts/testenv.sh: the
// gateway's own cost per instance shows in -benchmem's B/op and
// allocs/op, and in a CPU profile, beside MinIO's.
func BenchmarkStowProductionRequests(b *testing.B) { stowRequestSizes(b, backendtest.Production) }

// stowRequestSizes runs benchStowRequests on the backends of kind for
// small and CT-slice instances, 1 and 20 per request.
func stowRequestSizes(b *testing.B, kind string) {
	for _, size := range []struct {
		name       string
		rows, cols int
	}{{"small", 160, 160}, {"ct", 512, 512}} {
		for _, perRequest := range []int{1, 20} {
			b.Run(fmt.Sprintf("%s/per-request=%d", size.name, perRequest), func(b *testing.B) {
				benchStowRequests(b, kind, size.rows, size.cols, perRequest, false)
			})
		}
	}
}

func benchStowRequests(b *testing.B, kind string, rows, cols, perRequest int, studyPerRequest bool) {
	be := backendtest.Open(b, kind, backendtest.Options{})
	w := testWiring{ServiceDeps: gateway.ServiceDeps{Name: "bench", Blobs: be.Blobs, Index: be.Index, Auditor: be.AuditLog,
		Ingester: &gateway.Ingester{Blobs: be.Blobs, Index: be.Index, Auditor: be.AuditLog}}}
	srv := httptest.NewServer(w.server().Handler())
	b.Cleanup(srv.Close)
	bodies, types := make([][]byte, b.N), make([]string, b.N)
	var bytesPerRequest int
	for i := range bodies {
		parts := make([]stowPart, perRequest)
		for j := range parts {
			n := i*perRequest + j
			study, series := testStudy, testSeries
			if studyPerRequest {
				study, series = fmt.Sprintf("%s.%d", testStudy, i+1), fmt.Sprintf("%s.%d", testSeries, i+1)
			}
			parts[j] = dicomPart(makeInstance(study, series, testSOP(n), rows, cols, byte(n)))
		}
		body, boundary := multipartBody(b, parts...)
		bodies[i], types[i] = body.Bytes(), `multipart/related; type="application/dicom"; boundary=`+boundary
		bytesPerRequest = body.Len()
	}
	b.SetBytes(int64(bytesPerRequest))
	b.ResetTimer()
	stowConcurrently(b, srv.URL, 4, func(i int) (io.Reader, string) { return bytes.NewReader(bodies[i]), types[i] })
	b.StopTimer()
	b.ReportMetric(float64(b.N*perRequest)/b.Elapsed().Seconds(), "instances/s")
}

// stowConcurrently sends b.N STOW-RS requests to the DICOMweb server at
// url from clients concurrent clients; body gives request i's body and
// Content-Type. Any request not answered 200 fails the benchmark.
func stowConcurrently(b *testing.B, url string, clients int, body func(i int) (io.Reader, string)) {
	var next atomic.Int64
	var failed atomic.Value
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= b.N {
					return
				}
				r, contentType := body(i)
				resp, err := http.Post(url+"/dicomweb/studies", contentType, r)
				if err != nil {
					failed.Store(err)
					return
				}
				msg, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					failed.Store(fmt.Errorf("STOW status %d: %s", resp.StatusCode, msg))
					return
				}
			}
		})
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
}
